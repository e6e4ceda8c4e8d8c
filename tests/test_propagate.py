"""engine.propagate / session.propagate: one box on one slice -> the structure in 3D
(demo model, bundled MNI152 T1 and its white-matter map)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sam_unet
from counting_backend import CountingBackend
from sam_unet.data import mni152
from sam_unet.runtime.engine import Engine

DEMO = Path(sam_unet.__file__).parent / "assets" / "demo_tiny.pt"
K = 100  # an axial slice through the white matter
TOP = 132  # the cropped volume: axial slices 132.. (the white matter ends near slice 151)
SEED = 140


@pytest.fixture(scope="module")
def mni():
    t1, wm = mni152.load_t1_and_wm_mask()
    return np.asarray(t1.data), wm


def _engine(split: bool = True) -> Engine:
    eng = Engine.from_checkpoint(DEMO, device="cpu", backend="torch")
    eng.backend = CountingBackend(eng.backend, split=split)
    return eng


def _box(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): x over the slice's first axis, y over its second."""
    xs, ys = np.flatnonzero(mask2d.any(1)), np.flatnonzero(mask2d.any(0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.mark.slow
def test_one_box_propagates_through_the_white_matter(mni):
    vol, wm = mni
    eng = _engine()
    full = eng.segment(vol)  # the full-slice-box result (no prompts)
    eng.backend.calls.clear()
    mask = eng.propagate(vol, K, _box(wm[:, :, K]))
    report = eng.last_propagation
    d_full, d_ref = _dice(mask, full), _dice(mask, wm)
    print(f"propagation from axial slice {K}: slices {report.extent}, stopped {report.stopped}; "
          f"Dice vs the full-slice-box result {d_full:.4f}, vs the white-matter reference "
          f"{d_ref:.4f}; full-slice result vs reference {_dice(full, wm):.4f}")
    assert d_full >= 0.85 and d_ref >= 0.85
    assert mask.shape == vol.shape and mask.dtype == np.uint8
    # only the slices of the structure were computed, the encoder ahead in batches
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    assert report.slices == list(range(z[0], z[-1] + 1))
    assert eng.backend.slices("decode") == len(report.slices) + 2  # + the two stopping slices
    assert eng.backend.slices("encode") <= eng.backend.slices("decode") + 2 * 7
    assert max(n for k, n in eng.backend.calls if k == "encode") == 8


@pytest.fixture(scope="module")
def walked(mni):
    """One propagation through the top of the white matter (cropped volume), counted."""
    vol, wm = mni
    top = vol[:, :, TOP:]
    eng = _engine()
    seed, box = SEED - TOP, _box(wm[:, :, SEED])
    mask = eng.propagate(top, seed, box, lookahead=4)
    return top, seed, box, mask, eng.last_propagation, list(eng.backend.calls)


def test_walk_stops_where_the_structure_ends(walked):
    top, seed, box, mask, r, calls = walked
    last = r.slices[-1]
    assert r.slices == list(range(0, last + 1)) and seed < last < 25
    assert r.stopped["backward"] == "reached the volume's edge after slice 0"
    assert r.stopped["forward"].startswith(f"slice {last + 1}: mask of ")
    assert mask[:, :, last + 1:].max() == 0 and mask[:, :, last].sum() >= 16
    assert np.flatnonzero(mask.any(axis=(0, 1))).tolist() == r.slices
    # nothing past the structure but the encoder's look-ahead: calls of at most 4 slices
    encodes = [n for k, n in calls if k == "encode"]
    decodes = [n for k, n in calls if k == "decode"]
    assert max(encodes) == 4
    # lockstep: the seed alone, then one call per step for both directions while both walk
    # (backward reaches slice 0 after `seed` steps), then forward alone
    both = seed
    assert decodes == [1] + [2] * both + [1] * (len(decodes) - 1 - both)
    assert sum(decodes) == len(r.slices) + 1  # the forward stop slice is decoded, not kept
    assert r.encoded == sum(encodes) and r.unused == sum(encodes) - sum(decodes) <= 3
    assert r.decoder_calls == len(decodes) and r.encoder_calls == len(encodes)


def test_directions_and_min_area(walked):
    top, seed, box, both, _, _ = walked
    eng = _engine()
    fwd = eng.propagate(top, seed, box, direction="forward")
    assert eng.last_propagation.slices[0] == seed and "backward" not in \
        eng.last_propagation.stopped
    bwd = eng.propagate(top, seed, box, direction="backward")
    assert eng.last_propagation.slices[-1] == seed and "forward" not in \
        eng.last_propagation.stopped
    assert np.array_equal(both, np.maximum(fwd, bwd))
    assert fwd[:, :, :seed].max() == 0 and bwd[:, :, seed + 1:].max() == 0
    # a minimum area above the seed's mask: the seed slice is kept, the walk does not start
    only = eng.propagate(top, seed, box, min_area=100_000)
    assert only[:, :, seed].sum() > 0 and only.sum() == only[:, :, seed].sum()
    assert "the seed slice's mask is" in eng.last_propagation.stopped["forward"]


def test_grow_box_and_mask_extent():
    from sam_unet.runtime.propagate import grow_box, mask_extent

    assert grow_box(np.array([5, 0, 20, 30]), 3, (22, 40)).tolist() == [2, 0, 21, 33]
    m = np.zeros((10, 12), np.uint8)
    m[2:4, 3:5] = 1
    m[7, 10] = 1  # a second component counts: the box spans all foreground
    area, box = mask_extent(m)
    assert area == 5 and box.tolist() == [2, 3, 7, 10]
    assert mask_extent(np.zeros((3, 3))) == (0, None)


def test_mask_prompt_is_its_box(mni):
    vol, wm = mni
    top = vol[:, :, TOP:]
    eng = _engine()
    seed = 146 - TOP
    from_mask = eng.propagate(top, seed, wm[:, :, 146], direction="forward")
    from_box = eng.propagate(top, seed, _box(wm[:, :, 146]), direction="forward")
    assert np.array_equal(from_mask, from_box) and from_mask.any()


def test_session_propagation_reuses_cached_embeddings(walked):
    top, seed, box, ref, _, _ = walked
    eng = _engine()
    session = eng.session(top)
    first = session.propagate(seed, box, lookahead=4)
    encoded = eng.backend.slices("encode")
    again = session.propagate(seed, box, lookahead=4)
    assert np.array_equal(first, again) and np.array_equal(first, ref)
    assert eng.backend.slices("encode") == encoded and session.last_propagation.encoded == 0
    # a longer look-ahead may encode a few slices past where the first walk's look-ahead
    # stopped (at most one look-ahead's worth), none of the walked ones
    hits = session.stats.cache_hits
    wider = session.propagate(seed, box, lookahead=8)
    r = session.last_propagation
    assert np.array_equal(wider, ref) and r.encoded <= 8
    assert session.stats.cache_hits - hits >= len(r.slices)
    # an interactive box on a walked slice: decoder only
    encoded = eng.backend.slices("encode")
    session.predict(seed + 2, box)
    assert eng.backend.slices("encode") == encoded


def test_backend_without_split_gives_the_same_structure(mni):
    vol, wm = mni
    top = vol[:, :, TOP:]
    seed, box = 146 - TOP, _box(wm[:, :, 146])
    split = _engine().propagate(top, seed, box, direction="forward")
    eng = _engine(split=False)
    whole = eng.propagate(top, seed, box, direction="forward")
    assert np.array_equal(split, whole) and whole.any()
    r = eng.last_propagation
    assert eng.backend.count("run") == r.decoder_calls == len(r.slices) + 1
    assert all(n == 1 for _, n in eng.backend.calls)


def test_torch_volume_gives_a_torch_mask(mni):
    vol, wm = mni
    top = torch.from_numpy(vol[:, :, TOP:].astype(np.float32))
    eng = _engine()
    seed, box = 146 - TOP, _box(wm[:, :, 146])
    mask = eng.propagate(top, seed, box, direction="forward")
    assert isinstance(mask, torch.Tensor) and mask.dtype == torch.uint8
    ref = eng.propagate(vol[:, :, TOP:], seed, box, direction="forward")
    assert np.array_equal(mask.numpy(), ref) and ref.any()


@pytest.fixture(scope="module")
def upside_down(tmp_path_factory, mni):
    """The top of the template stored with its slice axis reversed (file slice f is canonical
    slice n - 1 - f), as a NIfTI file."""
    import nibabel as nib

    vol, _ = mni
    affine = nib.load(str(mni152.paths()[0])).affine
    top = vol[:, :, TOP:]
    n = top.shape[2]
    shift = np.eye(4)
    shift[2, 3] = TOP  # the crop's voxel (i, j, 0) is the template's (i, j, TOP)
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    flip[2, 3] = n - 1
    src = tmp_path_factory.mktemp("upside") / "upside_down.nii.gz"
    nib.save(nib.Nifti1Image(top[:, :, ::-1].copy(), affine @ shift @ flip), str(src))
    return src, top, n


def test_prompts_file_propagate_kind_in_the_file_frame(tmp_path, mni, upside_down):
    """A prompts-file structure with a "propagate" prompt, on a file stored upside down: the
    seed and its direction are read in the file's own frame, and the label map equals the
    engine's propagation on the canonical volume."""
    import nibabel as nib

    from sam_unet.runtime.files import segment_file

    _, wm = mni
    src, top, n = upside_down
    seed_c = 146 - TOP
    seed_f = n - 1 - seed_c
    box = _box(wm[:, :, 146])
    prompts = {"structures": [{"name": "white matter", "label": 5, "propagate": {
        "slice": seed_f, "box": list(box), "direction": "backward", "min_area": 20}}]}
    eng = _engine()
    out = segment_file(src, tmp_path / "out.nii.gz", eng, structures=prompts)
    labels = np.asarray(nib.load(str(out)).dataobj)
    # file "backward" (decreasing file index) is canonical "forward"
    ref = eng.propagate(top, seed_c, box, direction="forward", min_area=20)
    assert eng.last_propagation.slices[0] == seed_c and ref.any()
    assert set(np.unique(labels).tolist()) == {0, 5}
    assert np.array_equal(labels[:, :, ::-1] == 5, ref > 0)
    bad = {"structures": [{"name": "wm", "label": 1, "propagate": {"slice": 3, "box": [1, 2]}}]}
    with pytest.raises(ValueError, match="the propagate box"):
        segment_file(src, tmp_path / "bad.nii.gz", eng, structures=bad)
    bad["structures"][0]["propagate"] = {"slice": 3, "box": [1, 2, 3, 4], "direction": "up"}
    with pytest.raises(ValueError, match="propagate direction must be one of"):
        segment_file(src, tmp_path / "bad.nii.gz", eng, structures=bad)
    assert not (tmp_path / "bad.nii.gz").exists()


def test_cli_seed_box(tmp_path, mni, upside_down, capsys):
    import nibabel as nib

    from sam_unet.cli import main as cli

    _, wm = mni
    src, top, n = upside_down
    seed_c = 146 - TOP
    box = _box(wm[:, :, 146])
    out = tmp_path / "wm.nii.gz"
    args = ["segment", "-i", str(src), "-o", str(out), "--checkpoint", str(DEMO), "--device",
            "cpu", "--quiet", "--seed-box", str(n - 1 - seed_c), *map(str, box)]
    assert cli(args) == 0
    mask = np.asarray(nib.load(str(out)).dataobj)
    ref = _engine().propagate(top, seed_c, box)
    assert np.array_equal(mask[:, :, ::-1], ref) and ref.any()
    assert cli([*args[:-6], "--box", "0", "0", "0", "5", "5", "5", *args[-6:]]) == 2
    assert "--seed-box cannot be combined with --box" in capsys.readouterr().err
    assert cli([*args[:-5], "-1", *args[-4:]]) == 2
    assert "the slice Z must be an index >= 0" in capsys.readouterr().err


def test_errors_name_the_problem(mni):
    vol, wm = mni
    top = vol[:, :, TOP:]
    eng = _engine()
    box = _box(wm[:, :, 140])
    cases = [
        (dict(direction="up"), "direction must be one of"),
        (dict(margin=-1), "margin must be a number of voxels >= 0"),
        (dict(min_area=0), "min_area must be an integer"),
        (dict(lookahead=0), "lookahead must be an integer >= 1"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            eng.propagate(top, 12, box, **options)
    with pytest.raises(ValueError, match="slice 57 is outside the volume"):
        eng.propagate(top, 57, box)
    with pytest.raises(ValueError, match="lies outside the slice"):
        eng.propagate(top, 12, (0, 0, 197, 10))
    with pytest.raises(ValueError, match="mask prompt for slice 12 is empty"):
        eng.propagate(top, 12, np.zeros((197, 233), np.uint8))
    with pytest.raises(ValueError, match=r"mask prompt has shape \(10, 10\)"):
        eng.propagate(top, 12, np.ones((10, 10), np.uint8))
    assert eng.backend.calls == []  # nothing ran


def test_cost_benchmark_runs_on_random_weights(mni):
    """The propagation cost benchmark's random-weights mode (not timed here): the walk goes
    through the whole crop and the given-box pass segments exactly the walked slices."""
    from sam_unet.bench.propagation import run_cost_bench
    from sam_unet.models.build import build_model
    from sam_unet.runtime.backends import make_backend

    torch.manual_seed(0)
    eng = Engine(make_backend("torch", model=build_model("tiny").eval(), device="cpu",
                              precision="fp32", max_batch=4), batch_size=4)
    crop = np.ascontiguousarray(mni[0][40:120, 50:150, 95:101])
    row = run_cost_bench(eng, crop, 2, (10, 10, 60, 80), runs=1)
    r = eng.last_propagation
    assert row["slices"] == len(r.slices) and set(r.boxes) == set(r.slices)
    assert row["ratio"] > 0 and len(row["pair_ratios"]) == 1
    assert eng.last_stats.slices == len(r.slices)  # the given-box pass: the walked slices only
