"""Engine.segment_structures: several structures, one label map, overlaps to the higher logit.

The reference is written here with plain NumPy/PyTorch from transforms.py: each structure's
logits per slice (transforms.preprocess_slices -> model -> bilinear to 256, crop, bilinear to
the slice), the per-voxel argmax over the structures that cover the slice, background where the
best logit is <= 0; and each structure's own ``segment`` mask agrees with it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sam_unet import transforms
from sam_unet.models.build import build_model
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine
from sam_unet.runtime.plan import SliceGeometry
from sam_unet.runtime.prompts import StructurePrompt, slice_prompts

pytestmark = pytest.mark.usefixtures("single_thread")


class WholeModel:
    """A real torch backend seen through ``run`` only (no split): the whole-model path."""

    def __init__(self, inner):
        self.inner = inner
        self.runs = 0
        for k in ("name", "device", "precision", "max_batch", "input_dtype"):
            setattr(self, k, getattr(inner, k))

    def run(self, images, boxes):
        self.runs += 1
        return self.inner.run(images, boxes)


class SplitCounting(WholeModel):
    """The real backend's own split (``can_split``: encode / decode), counting what each part
    sees."""

    can_split = True

    def __init__(self, inner):
        super().__init__(inner)
        assert inner.can_split
        self.encoded = 0
        self.decoded = 0

    def encode(self, images):
        self.encoded += int(images.shape[0])
        return self.inner.encode(images)

    def decode(self, embeddings, features, boxes):
        self.decoded += int(boxes.shape[0])
        return self.inner.decode(embeddings, features, boxes)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.fixture(scope="module")
def backend(model):
    return make_backend("torch", model=model, device="cpu", precision="fp32", max_batch=4)


def _volume(shape=(24, 20, 7), seed=1):
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = rng.normal(100, 30, size=shape)
    vol += 300 * (((x - 0.3) ** 2 + y**2) < 0.2) + 150 * (((x + 0.4) ** 2 + (y - 0.3) ** 2) < 0.1)
    return vol.astype(np.int16)


STRUCTURES = (
    StructurePrompt("left", 3, boxes=(2, 2, 0, 14, 12, 4)),  # 3D box on slices 0..4
    StructurePrompt("right", 7, boxes={2: (8, 5, 22, 18), 3: (8, 5, 22, 18), 6: (9, 6, 20, 17)}),
    StructurePrompt("middle", 5, boxes=(5, 4, 2, 18, 15, 5)),  # overlaps both on slices 2..4
)


def reference_logits(model, vol, axis, structures):
    """{label: float32 (X, Y, Z) logits at slice resolution, -inf off the structure's slices}."""
    geo = SliceGeometry.of(vol.shape, axis)
    out = {}
    for s in structures:
        idx, boxes = slice_prompts(geo, s.boxes)
        full = np.full(vol.shape, -np.inf, np.float32)
        moved = np.moveaxis(full, geo.axis, 0)
        for k, box in zip(idx, boxes, strict=True):
            img, _ = transforms.preprocess_slices(vol, int(k), 1, axis=geo.axis)
            with torch.no_grad():
                lg = model(torch.from_numpy(img), torch.from_numpy(box[None]))
            up = F.interpolate(lg, size=(256, 256), mode="bilinear", align_corners=False)
            up = up[..., :geo.resized[0], :geo.resized[1]]
            moved[int(k)] = F.interpolate(up, size=(geo.height, geo.width), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
        out[s.label] = full
    return out


def reference_labels(logits):
    labels = np.array(list(logits))
    stack = np.stack([logits[k] for k in labels])
    best = stack.max(axis=0)
    winner = labels[stack.argmax(axis=0)].astype(np.uint8)
    return np.where(best > 0, winner, 0).astype(np.uint8), stack


def assert_labels_match(got, ref, stack, tol=1e-3):
    """Equal except where the decision is within ``tol``: best logit ~0 or a near tie."""
    srt = np.sort(np.where(np.isfinite(stack), stack, -1e9), axis=0)
    close = (np.abs(srt[-1]) < tol) | (srt[-1] - srt[-2] < tol)
    bad = (got != ref) & ~close
    assert not bad.any(), f"{int(bad.sum())} voxels differ beyond the tolerance"
    assert (got != ref).mean() < 1e-3


@pytest.fixture(scope="module")
def reference(model):
    vol = _volume()
    logits = reference_logits(model, vol, 2, STRUCTURES)
    labels, stack = reference_labels(logits)
    return vol, logits, labels, stack


def test_three_overlapping_structures_whole_model(backend, reference):
    vol, _, ref, stack = reference
    whole = WholeModel(backend)
    got = Engine(whole, batch_size=3).segment_structures(vol, STRUCTURES)
    assert got.dtype == np.uint8 and got.shape == vol.shape
    assert set(np.unique(got)) <= {0, 3, 5, 7} and {3, 5, 7} <= set(np.unique(got))
    assert_labels_match(got, ref, stack)
    assert not got[:, :, 1][got[:, :, 1] > 0].tolist().count(7)  # "right" not on slice 1


def test_split_encodes_each_slice_once(backend, reference):
    vol, _, ref, stack = reference
    split = SplitCounting(backend)
    eng = Engine(split, batch_size=4)
    got, scores = eng.segment_structures(vol, STRUCTURES, return_scores=True)
    assert_labels_match(got, ref, stack)
    # union of slices: 0..6 = 7 encoded once; decoded: 5 (left) + 3 (right) + 4 (middle)
    assert split.encoded == 7 and split.decoded == 12 and split.runs == 0
    assert eng.last_stats.slices == 7 and eng.last_stats.slabs == 2
    finite = np.isfinite(stack)
    best = np.where(finite.any(axis=0), np.where(finite, stack, -np.inf).max(axis=0), -np.inf)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, best, atol=1e-4)


def test_agrees_with_per_structure_segment(backend, reference):
    """Each structure's own ``segment`` mask covers exactly the voxels its logit puts > 0, and
    the label map is that structure wherever it alone is positive."""
    vol, logits, _, _ = reference
    eng = Engine(backend, batch_size=4)
    labels = eng.segment_structures(vol, STRUCTURES)
    others = {s.label: [t.label for t in STRUCTURES if t is not s] for s in STRUCTURES}
    for s in STRUCTURES:
        mask = eng.segment(vol, boxes=s.boxes)
        lg = logits[s.label]
        decided = np.abs(lg) >= 1e-3
        np.testing.assert_array_equal(mask[decided], (lg > 0)[decided])
        alone = (lg > 1e-3) & np.all([logits[o] < -1e-3 for o in others[s.label]], axis=0)
        assert (labels[alone] == s.label).all()
        assert alone.any()


def test_one_structure_equals_segment(backend):
    vol = _volume(shape=(16, 18, 4))
    eng = Engine(backend)
    got = eng.segment_structures(vol, [StructurePrompt("all", 1)])
    np.testing.assert_array_equal(got, eng.segment(vol))


def test_torch_volume_gives_torch_labels(backend):
    vol = _volume(shape=(16, 18, 3))
    eng = Engine(backend)
    got = eng.segment_structures(torch.from_numpy(vol), [StructurePrompt("a", 2),
                                                         StructurePrompt("b", 4, boxes={1: (
                                                             0, 0, 8, 8)})])
    assert isinstance(got, torch.Tensor) and got.dtype == torch.uint8
    assert set(torch.unique(got).tolist()) <= {0, 2, 4}


@pytest.mark.parametrize(
    "structures, message",
    [
        ([], "at least one"),
        ([StructurePrompt("a", 0)], "label must be an integer in 1..255"),
        ([StructurePrompt("a", 256)], "1..255"),
        ([StructurePrompt("a", 1), StructurePrompt("b", 1)], "share a label"),
        ([StructurePrompt("a", 1), StructurePrompt("a", 2)], "share a name"),
        ([StructurePrompt("a", 1, boxes={99: (0, 0, 1, 1)})], "slice 99"),
    ],
)
def test_bad_structures(backend, structures, message):
    with pytest.raises(ValueError, match=message):
        Engine(backend).segment_structures(np.zeros((8, 8, 4), np.int16), structures)
