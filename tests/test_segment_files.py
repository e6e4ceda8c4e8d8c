"""segment_file / `sam-unet segment` on real NIfTI files: orientation, atomicity, CLI, torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sam_unet.checkpoints import load_model, save_checkpoint
from sam_unet.cli import main as cli
from sam_unet.data.mni152 import WM_LABEL_THRESHOLD
from sam_unet.data.mni152 import paths as mni_paths
from sam_unet.models.build import build_model
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine
from sam_unet.runtime.files import segment_file

DEMO_CKPT = Path(__file__).resolve().parents[1] / "python" / "sam_unet" / "assets" / "demo_tiny.pt"

# small volumes: one intra-op thread is fastest, and fair to the other processes on the machine
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(build_model("tiny"), path)
    return path


@pytest.fixture(scope="module")
def engine(small_ckpt):
    return Engine.from_checkpoint(small_ckpt, device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def mni_crop():
    """A cropped real MRI (the MNI152 T1) as (data, affine), RAS."""
    t1, _wm = mni_paths()
    img = nib.as_closest_canonical(nib.load(str(t1)))
    data = np.asarray(img.dataobj, dtype=np.float32)[40:120:2, 50:150:2, 60:72]
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * 2
    return data, affine


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _reorient(data: np.ndarray, affine: np.ndarray, perm, flips):
    """The same image in another voxel order: permute axes, then flip some."""
    out = np.transpose(data, perm)
    new_affine = affine[:, list(perm) + [3]].copy()
    for ax in flips:
        out = np.flip(out, axis=ax)
        n = out.shape[ax]
        new_affine[:3, 3] = new_affine[:3, 3] + new_affine[:3, ax] * (n - 1)
        new_affine[:3, ax] = -new_affine[:3, ax]
    return np.ascontiguousarray(out), new_affine


@pytest.mark.parametrize("perm, flips", [((0, 1, 2), ()), ((0, 1, 2), (0,)),
                                         ((1, 0, 2), (1,)), ((2, 0, 1), (0, 2)),
                                         ((0, 2, 1), (2,))])
def test_orientation_round_trip(tmp_path, engine, mni_crop, perm, flips):
    data, affine = mni_crop
    ras_in = _write(tmp_path / "ras.nii.gz", data, affine)
    ras_out = segment_file(ras_in, tmp_path / "ras_mask.nii.gz", engine)
    ras_mask = np.asarray(nib.load(str(ras_out)).dataobj)

    odata, oaffine = _reorient(data, affine, perm, flips)
    o_in = _write(tmp_path / "other.nii", odata, oaffine)
    o_out = segment_file(o_in, tmp_path / "other_mask.nii.gz", engine)
    img = nib.load(str(o_out))
    assert img.shape == odata.shape
    np.testing.assert_allclose(img.affine, oaffine, atol=1e-5)
    assert img.get_data_dtype() == np.uint8
    mask = np.asarray(img.dataobj)
    # the same anatomy gives the same mask once both are put in one voxel order
    expected, _ = _reorient(ras_mask, affine, perm, flips)
    np.testing.assert_array_equal(mask, expected)


def test_missing_and_corrupt_nifti(tmp_path, engine):
    with pytest.raises((FileNotFoundError, ValueError), match="missing.nii.gz"):
        segment_file(tmp_path / "missing.nii.gz", tmp_path / "out.nii.gz", engine)
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.nii.gz"):
        segment_file(bad, tmp_path / "out.nii.gz", engine)
    assert not (tmp_path / "out.nii.gz").exists()


def test_output_folder_not_writable(tmp_path, engine, mni_crop):
    data, affine = mni_crop
    src = _write(tmp_path / "in.nii.gz", data, affine)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        segment_file(src, tmp_path / "nope" / "out.nii.gz", engine)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: use a path under a file
            target = src / "out.nii.gz"
            with pytest.raises((FileNotFoundError, NotADirectoryError, PermissionError)):
                segment_file(src, target, engine)
        else:
            with pytest.raises(PermissionError, match="not writable"):
                segment_file(src, ro / "out.nii.gz", engine)
    finally:
        ro.chmod(0o700)


def test_crash_mid_write_leaves_nothing(tmp_path, engine, mni_crop, monkeypatch):
    data, affine = mni_crop
    src = _write(tmp_path / "in.nii.gz", data, affine)
    out = tmp_path / "out" / "mask.nii.gz"
    out.parent.mkdir()
    real_to_filename = nib.Nifti1Image.to_filename

    def crash(self, filename, *a, **k):
        Path(filename).write_bytes(b"partial")  # half-written bytes, then the process "dies"
        raise OSError("disk full (injected)")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", crash)
    monkeypatch.setattr(nib, "save", lambda img, filename, *a, **k: crash(img, filename))
    with pytest.raises((OSError, ValueError), match="injected"):
        segment_file(src, out, engine)
    assert list(out.parent.iterdir()) == []
    monkeypatch.setattr(nib.Nifti1Image, "to_filename", real_to_filename)


def test_checkpoint_mismatch_is_clear(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"not_a_key": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match="bad.pt|unexpected|missing|variant"):
        Engine.from_checkpoint(bad, device="cpu")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        Engine.from_checkpoint(tmp_path / "nothing.pt", device="cpu")


def test_cli_folder_continue(tmp_path, small_ckpt, mni_crop, capsys):
    data, affine = mni_crop
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        _write(src / f"v{i}.nii.gz", data[..., i:i + 4], affine)
    out = tmp_path / "out"
    assert cli(["segment", "-i", str(src), "-o", str(out), "--checkpoint", str(small_ckpt),
                "--device", "cpu", "--quiet"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["v0_seg.nii.gz", "v1_seg.nii.gz", "v2_seg.nii.gz"]
    stamp = (out / "v1_seg.nii.gz").stat().st_mtime_ns
    (out / "v2_seg.nii.gz").unlink()
    (out / "v0_seg.nii.gz").write_bytes((out / "v0_seg.nii.gz").read_bytes()[:200])  # damaged
    assert cli(["segment", "-i", str(src), "-o", str(out), "--checkpoint", str(small_ckpt),
                "--device", "cpu", "--quiet", "--continue"]) == 0
    assert "segmented 2, skipped 1 (already done), failed 0" in capsys.readouterr().out
    assert (out / "v2_seg.nii.gz").exists()
    assert nib.load(out / "v0_seg.nii.gz").shape == (40, 50, 4)  # redone, complete
    assert (out / "v1_seg.nii.gz").stat().st_mtime_ns == stamp


def test_cli_box_and_window(tmp_path, small_ckpt, mni_crop):
    data, affine = mni_crop
    src = _write(tmp_path / "in.nii.gz", data, affine)
    out = tmp_path / "m.nii.gz"
    assert cli(["segment", "-i", str(src), "-o", str(out), "--checkpoint", str(small_ckpt),
                "--device", "cpu", "--quiet", "--box", "2", "3", "4", "30", "40", "6",
                "--window", "0", "100"]) == 0
    m = np.asarray(nib.load(str(out)).dataobj)
    assert not m[:, :, :4].any() and not m[:, :, 7:].any()
    assert cli(["segment", "-i", str(src), "-o", str(tmp_path / "x.nii.gz"), "--checkpoint",
                str(small_ckpt), "--device", "cpu", "--quiet", "--box", "0", "0", "0", "999",
                "1", "1"]) == 1
    assert not (tmp_path / "x.nii.gz").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_segment(tmp_path, mni_crop, checkpoint):
    """`sam-unet segment` of a folder of 4 small NIfTIs under torchrun with 2 CPU ranks ->
    (completed process, output folder)."""
    data, affine = mni_crop
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        _write(src / f"vol{i}.nii.gz", data[..., i:i + 3], affine)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "sam_unet.cli", "segment", "-i", str(src), "-o", str(out),
           "--checkpoint", str(checkpoint), "--device", "cpu", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env), out


@pytest.mark.slow
def test_torchrun_shards_folder(tmp_path, small_ckpt, mni_crop):
    proc, out = _torchrun_segment(tmp_path, mni_crop, small_ckpt)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [f"vol{i}_seg.nii.gz" for i in range(4)]
    # each rank reports its share through the gloo group: 2 + 2
    assert "rank 0 segmented 2" in proc.stdout + proc.stderr
    assert "rank 1 segmented 2" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_torchrun_ranks_that_cannot_load_the_model_still_report(tmp_path, mni_crop):
    """A damaged checkpoint under torchrun: each rank says so in one line and still joins the
    summary exchange (a rank whose load fails alone must not leave the others waiting), rank 0
    prints the totals, the run ends non-zero with nothing written."""
    bad = tmp_path / "damaged.pt"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    proc, out = _torchrun_segment(tmp_path, mni_crop, bad)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count("sam-unet segment: error: ") == 2 and "cannot load the model" in text
    assert "segmented 0, skipped 0 (already done), failed 4" in proc.stdout, text[-3000:]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_CKPT.is_file(), reason="demo checkpoint not built yet")
def test_mni_torch_and_onnxruntime_agree(tmp_path):
    from sam_unet.export.onnx import export_onnx

    t1, wm = mni_paths()
    vol = np.asarray(nib.as_closest_canonical(nib.load(str(t1))).dataobj, dtype=np.float32)
    model = load_model(DEMO_CKPT)
    eng_torch = Engine(make_backend("torch", model=model, device="cpu", precision="fp32",
                                    max_batch=16))
    onnx_path = export_onnx(model, tmp_path / "demo.onnx")
    eng_ort = Engine.from_onnx(onnx_path, device="cpu", batch_size=16)
    assert "onnxruntime" in eng_ort.describe()
    a = eng_torch.segment(vol)
    b = eng_ort.segment(vol)
    assert a.shape == vol.shape
    # same function in fp32: only voxels whose logit is ~0 may flip
    mismatch = float(np.mean(a != b))
    print(f"\ntorch vs onnxruntime mask mismatch on MNI152: {mismatch:.2e} of voxels")
    assert mismatch < 1e-4
    wm_mask = np.asarray(nib.as_closest_canonical(nib.load(str(wm))).dataobj,
                         dtype=np.float32) > WM_LABEL_THRESHOLD
    dice = 2 * np.logical_and(a, wm_mask).sum() / (a.sum() + wm_mask.sum())
    print(f"white-matter 3D Dice (demo model, all slices): {dice:.4f}")
    assert dice >= 0.90


# ------------------------------------------------------------------------------------------
# prompts given with a file are in that file's voxel frame
# ------------------------------------------------------------------------------------------
def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    r = np.eye(4)
    r[:3, :3] = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
    return r


# name: (axis permutation, flipped axes, world rotation)
FILE_FRAMES = {"LPS": ((0, 1, 2), (0, 1), 0.0), "zxy": ((2, 0, 1), (), 0.0),
               "zxy-flipped-oblique": ((2, 0, 1), (1,), 0.25),
               "yxz-flipped": ((1, 0, 2), (0,), 0.0)}


def _canonical(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def _corners_to(m: np.ndarray, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    pts = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                    for z in (lo[2], hi[2])])
    out = np.rint((m @ pts.T).T[:, :3])
    return out.min(axis=0), out.max(axis=0)


@pytest.mark.parametrize("frame", list(FILE_FRAMES))
def test_file_frame_prompts_match_the_ras_file(tmp_path, engine, mni_crop, frame):
    """A prompt drawn on an LPS or permuted/oblique file gives, voxel for voxel, the mask of the
    same prompt drawn on the RAS file (compared through nibabel's closest-canonical images).

    The model has random weights on purpose: its masks depend on the box inside each slice
    (the demo model, trained with full-slice boxes, all but ignores it)."""
    perm, flips, angle = FILE_FRAMES[frame]
    data, affine = mni_crop
    affine = _rotation(angle) @ affine
    ras = _write(tmp_path / "ras.nii.gz", data, affine)
    odata, oaff = _reorient(data, affine, perm, flips)
    other = _write(tmp_path / "other.nii.gz", odata, oaff)
    to_ras = np.linalg.inv(affine) @ oaff  # other's voxels -> the RAS file's voxels
    shape = np.array(odata.shape)
    f_axis = int(np.argmax(np.abs(to_ras[2, :3])))  # the file axis that becomes axial
    rest = [a for a in range(3) if a != f_axis]

    lo = np.floor(shape * [0.15, 0.25, 0.2])
    hi = np.floor(shape * [0.8, 0.7, 0.75])
    rlo, rhi = _corners_to(to_ras, lo, hi)
    box_file, box_ras = (*lo, *hi), (*rlo, *rhi)
    slices_file, slices_ras = {}, {}
    for k in range(int(lo[f_axis]), int(lo[f_axis]) + 3):
        a = np.zeros(3)
        b = np.zeros(3)
        a[f_axis] = b[f_axis] = k
        a[rest[0]], a[rest[1]] = lo[rest[0]] + k % 2, lo[rest[1]]
        b[rest[0]], b[rest[1]] = hi[rest[0]], hi[rest[1]] - k % 3
        slices_file[k] = (a[rest[0]], a[rest[1]], b[rest[0]], b[rest[1]])
        ra, rb = _corners_to(to_ras, a, b)
        slices_ras[int(ra[2])] = (ra[0], ra[1], rb[0], rb[1])
    coarse = np.zeros(odata.shape, np.uint8)
    coarse[tuple(slice(int(x), int(y) + 1) for x, y in zip(lo, hi, strict=True))] = 1
    coarse &= (odata > np.percentile(odata, 60)).astype(np.uint8)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(oaff),
                                           nib.orientations.io_orientation(affine))
    coarse_ras = nib.orientations.apply_orientation(coarse, ornt)

    for kind, file_prompt, ras_prompt in [("box", box_file, box_ras),
                                          ("slices", slices_file, slices_ras),
                                          ("mask", coarse, coarse_ras)]:
        o = segment_file(other, tmp_path / f"o_{kind}.nii.gz", engine, boxes=file_prompt)
        r = segment_file(ras, tmp_path / f"r_{kind}.nii.gz", engine, boxes=ras_prompt)
        got, want = _canonical(o), _canonical(r)
        assert 0 < want.sum() < want.size / 2, kind  # a real, prompt-limited mask
        np.testing.assert_array_equal(got, want, err_msg=f"{frame} {kind}")
        assert nib.load(str(o)).shape == odata.shape
    # the file's own axes matter: the same numbers read as RAS voxels give another mask
    if frame == "LPS":
        wrong = segment_file(ras, tmp_path / "wrong.nii.gz", engine, boxes=box_file)
        assert not np.array_equal(_canonical(wrong), _canonical(tmp_path / "r_box.nii.gz"))
