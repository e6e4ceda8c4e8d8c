"""engine.session(volume): cached image embeddings, so a second box on a slice runs only the
decoder, with the same mask as a fresh full pass (demo model, bundled MNI152 T1)."""

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


@pytest.fixture(scope="module")
def mni():
    t1, wm = mni152.load_t1_and_wm_mask()
    return np.asarray(t1.data), wm


def _engine(**kw) -> Engine:
    eng = Engine.from_checkpoint(DEMO, device="cpu", backend="torch", **kw)
    eng.backend = CountingBackend(eng.backend)
    return eng


def _box(mask2d: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): x over the slice's first axis, y over its second."""
    xs, ys = np.flatnonzero(mask2d.any(1)), np.flatnonzero(mask2d.any(0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


@pytest.mark.slow
def test_second_predict_on_a_slice_runs_only_the_decoder(mni):
    vol, wm = mni
    eng = _engine()
    session = eng.session(vol)
    tight = _box(wm[:, :, K])
    left = (tight[0], tight[1], 98, tight[3])  # the left half of the brain (x over axis 0)
    first = session.predict(K, tight)
    assert eng.backend.count("encode") == 1 and eng.backend.count("decode") == 1
    second = session.predict(K, left)
    again = session.predict(K, tight)
    assert eng.backend.count("encode") == 1  # never again for this slice
    assert eng.backend.count("decode") == 3 and eng.backend.count("run") == 0
    assert session.stats.cache_hits == 2 and session.stats.encoded_slices == 1
    assert np.array_equal(first, again)
    assert first.shape == (197, 233) and first.dtype == np.uint8
    # same masks as a fresh full pass of the whole model with the same per-slice box
    fresh = Engine.from_checkpoint(DEMO, device="cpu", backend="torch")
    for box, got in ((tight, first), (left, second)):
        ref = fresh.segment(vol, boxes={K: box})
        assert np.array_equal(ref[:, :, K], got)
        assert ref[:, :, :K].max() == 0 and ref[:, :, K + 1:].max() == 0
    # the box is in the volume's frame (x over axis 0): the model frame names the image column
    # (axis 1) first; the slice (197, 233) is resized to (216, 256)
    sx, sy = 216 / 197, 256 / 233
    assert np.allclose(session.model_box(np.array(left, float)),
                       [left[1] * sy, left[0] * sx, left[3] * sy, left[2] * sx], atol=1e-4)
    dice = 2 * (first & wm[:, :, K]).sum() / (first.sum() + wm[:, :, K].sum())
    assert dice > 0.85, dice


def test_full_slice_prompt_matches_segment(mni):
    vol, _ = mni
    eng = _engine()
    session = eng.session(vol)
    got = session.predict(K)  # None: the full-slice box the demo model was trained with
    # slice-minmax normalisation is per slice: slice 1 of this sub-volume is slice K
    ref = Engine.from_checkpoint(DEMO, device="cpu", backend="torch").segment(
        vol[:, :, K - 1:K + 2])
    assert np.array_equal(ref[:, :, 1], got)


@pytest.mark.slow
def test_cache_is_bounded_least_recently_used_out(mni):
    vol, wm = mni
    eng = _engine()
    per_slice = (64 * 16 * 16 + 8 * 64 * 64) * 4  # tiny: embedding + features, float32
    session = eng.session(vol, cache_bytes=2 * per_slice)
    box = _box(wm[:, :, K])
    for k in (K, K + 1, K + 2):  # K is evicted by K + 2
        session.predict(k, box)
    assert session.cache.keys() == [K + 1, K + 2] and session.cache.bytes == 2 * per_slice
    assert session.stats.evictions == 1
    session.predict(K + 2, box)
    assert eng.backend.count("encode") == 3
    session.predict(K, box)  # evicted: encoded again (and K + 1 goes out)
    assert eng.backend.count("encode") == 4 and session.cache.keys() == [K + 2, K]
    nothing = eng.session(vol, cache_bytes=0)
    nothing.predict(K, box)
    nothing.predict(K, box)
    assert len(nothing.cache) == 0 and eng.backend.count("encode") == 6


def test_backend_that_cannot_split_runs_whole_passes(mni):
    vol, wm = mni
    eng = Engine.from_checkpoint(DEMO, device="cpu", backend="torch")
    split_mask = eng.session(vol).predict(K, _box(wm[:, :, K]))
    eng.backend = CountingBackend(eng.backend, split=False)
    session = eng.session(vol)
    assert not session.can_split and "no split" in session.describe()
    a = session.predict(K, _box(wm[:, :, K]))
    b = session.predict(K, _box(wm[:, :, K]))
    assert eng.backend.count("run") == 2 and session.stats.full_runs == 2
    assert np.array_equal(a, b) and np.array_equal(a, split_mask)


def test_torch_volume_gives_torch_masks(mni):
    vol, wm = mni
    eng = _engine()
    t = torch.from_numpy(vol[:, :, K - 2:K + 3].astype(np.int16))  # another dtype, same values
    got = eng.session(t).predict(2, _box(wm[:, :, K]))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8
    ref = eng.session(vol).predict(K, _box(wm[:, :, K]))
    assert np.array_equal(got.numpy(), ref)


def test_other_axis_and_errors(mni):
    vol, _ = mni
    eng = _engine()
    with pytest.warns(UserWarning, match="axis=0 differs from the model's axis=-1"):
        session = eng.session(vol, axis=0)  # sagittal slices: (Y, Z) = (233, 189)
    assert session.slice_shape == (233, 189)
    assert session.predict(98, (40, 30, 190, 150)).shape == (233, 189)
    with pytest.raises(ValueError, match=r"slice 197 is outside the volume: axis 0 has 197"):
        session.predict(197, (0, 0, 10, 10))
    with pytest.raises(ValueError, match=r"lies outside the slice \(x in \[0, 232\]"):
        session.predict(10, (0, 0, 233, 10))
    with pytest.raises(ValueError, match="4 numbers"):
        session.predict(10, (0, 0, 10))
    with pytest.raises(ValueError, match="x1 < x0"):
        session.predict(10, (10, 0, 5, 10))
    with pytest.raises(ValueError, match="slice index must be an integer"):
        session.predict(1.5, (0, 0, 10, 10))
    with pytest.raises(ValueError, match="cache_bytes"):
        eng.session(vol, cache_bytes=-1)
