"""The GPU placements' schedule, checked on the CPU: the real placement code and the real loop
run on a simulated device (tests/simulated_device.py) with a CPU backend.

For the double-buffered placement of a host volume: no buffer is written before the event of
its last reader (no race), uploads and downloads have their own streams and an upload never
waits for the previous slab's download, compute waits for its upload, a download waits for its
compute, the upload of slab i+1 can overlap the model on slab i; and the mask equals the CPU
engine's. Planted faults (a dropped event wait, the download on the upload stream) must fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_unet.models.build import build_model
from sam_unet.runtime.backends import make_backend
from sam_unet.runtime.engine import Engine, _images_dtype
from sam_unet.runtime.pipeline import (
    FiniteGuard,
    SegmentStats,
    StructuresStep,
    WholeModelStep,
    run_plan,
)
from sam_unet.runtime.placement_device import DevicePlacement
from sam_unet.runtime.placement_pinned import PinnedPlacement
from sam_unet.runtime.placements import Feed
from sam_unet.runtime.plan import Plan, SliceGeometry, merge_prompts
from sam_unet.runtime.prompts import slice_prompts
from simulated_device import ScheduleError, SimDevice

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def backend():
    torch.manual_seed(0)
    return make_backend("torch", model=build_model("tiny").eval(), device="cpu",
                        precision="fp32", max_batch=4)


@pytest.fixture(scope="module")
def engine(backend):
    return Engine(backend)


def _volume(shape=(21, 17, 9), dtype=np.int16, seed=3):
    rng = np.random.default_rng(seed)
    x, y, _ = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return (rng.normal(80, 30, shape) + 250 * ((x**2 + y**2) < 0.3)).astype(dtype)


def simulate(backend, placement_cls, sim, vol, *, boxes=None, batch=4, axis=2):
    """The engine's run (plan -> the one loop) with ``placement_cls`` on the simulated device."""
    geo = SliceGeometry.of(vol.shape, axis)
    idx, model_boxes = slice_prompts(geo, boxes)
    plan = Plan(geo, idx, model_boxes[None])
    feed = Feed(geo, "slice-minmax", None, _images_dtype(backend))
    stats, guard = SegmentStats(), FiniteGuard()
    outputs = run_plan(plan, placement_cls(sim, vol, feed), WholeModelStep(backend, plan, guard,
                                                                          stats),
                       guard, batch, stats)
    return outputs["mask"], stats


def check_double_buffered_schedule(sim: SimDevice, n_slabs: int) -> None:
    """The ordering rules of PinnedPlacement on a recorded schedule."""
    uploads, downloads = sim.named("upload"), sim.named("download")
    pre, model, post = sim.named("preprocess"), sim.named("model"), sim.named("postprocess")
    assert len(uploads) == len(downloads) == len(pre) == len(model) == len(post) == n_slabs
    up_streams = {op.timeline for op in uploads}
    down_streams = {op.timeline for op in downloads}
    assert len(up_streams) == 1 and len(down_streams) == 1, (up_streams, down_streams)
    assert up_streams.isdisjoint(down_streams), (
        f"uploads and downloads share stream {up_streams & down_streams}: an upload would queue "
        "behind a download"
    )
    assert up_streams.isdisjoint({"compute"}) and down_streams.isdisjoint({"compute"})
    hb = sim.happens_before
    for i in range(n_slabs):
        assert hb(uploads[i], pre[i]), f"preprocess of slab {i} does not wait for its upload"
        assert hb(post[i], downloads[i]), f"download of slab {i} does not wait for its compute"
        if i + 1 < n_slabs:
            assert not hb(downloads[i], uploads[i + 1]), (
                f"the upload of slab {i + 1} waits for the download of slab {i}"
            )
            assert not hb(model[i], uploads[i + 1]), (
                f"the upload of slab {i + 1} cannot overlap the model on slab {i}"
            )
            assert not hb(downloads[i], model[i + 1]), (
                f"the model on slab {i + 1} waits for the download of slab {i}"
            )


@pytest.mark.parametrize("batch", [4, 3, 9])
def test_double_buffered_schedule(backend, engine, batch):
    vol = _volume()
    sim = SimDevice()
    got, stats = simulate(backend, PinnedPlacement, sim, vol, batch=batch)
    n_slabs = -(-vol.shape[2] // batch)
    check_double_buffered_schedule(sim, n_slabs)
    assert stats.slabs == n_slabs and tuple(stats.stages)[:2] == ("gather", "upload")
    np.testing.assert_array_equal(got, engine.segment(vol, batch_size=batch))


def test_double_buffered_converted_and_strided(backend, engine):
    """A big-endian, negatively strided host volume with a sparse prompt (runs with gaps)."""
    vol = _volume(shape=(16, 13, 11)).astype(">i2")[::-1, :, ::-1]
    boxes = np.full((11, 4), np.nan)
    boxes[[0, 1, 2, 5, 6, 9, 10]] = (1, 2, 14, 11)
    sim = SimDevice()
    got, stats = simulate(backend, PinnedPlacement, sim, vol, boxes=boxes, batch=3, axis=-1)
    check_double_buffered_schedule(sim, 3)
    np.testing.assert_array_equal(got, engine.segment(vol, boxes=boxes, batch_size=3))
    assert not got[:, :, [3, 4, 7, 8]].any()


def test_double_buffered_bfloat16_torch_volume(backend, engine):
    """A torch bfloat16 host volume: pinned buffers cannot hold it as NumPy, so slabs are
    converted to float32 on the host; masks equal the CPU engine's."""
    import torch

    vol = torch.from_numpy(_volume(shape=(12, 10, 7)).astype(np.float32)).to(torch.bfloat16)
    sim = SimDevice()
    got, _ = simulate(backend, PinnedPlacement, sim, vol, batch=3)
    check_double_buffered_schedule(sim, 3)
    np.testing.assert_array_equal(np.asarray(got), engine.segment(vol, batch_size=3).numpy())


@pytest.mark.parametrize("axis", [0, 1])
def test_double_buffered_other_axes(backend, engine, axis):
    vol = np.asfortranarray(_volume(shape=(7, 9, 12)))
    sim = SimDevice()
    got, _ = simulate(backend, PinnedPlacement, sim, vol, batch=3, axis=axis)
    np.testing.assert_array_equal(got, engine.segment(vol, axis=axis, batch_size=3))


def test_structures_through_double_buffers(backend, engine):
    """Labels and scores: two output channels, each downloaded per slab."""
    from sam_unet.runtime.prompts import StructurePrompt

    vol = _volume(shape=(18, 16, 7))
    structures = [StructurePrompt("a", 2, boxes=(1, 1, 0, 12, 10, 4)),
                  StructurePrompt("b", 9, boxes=(5, 4, 3, 17, 15, 6))]
    geo = SliceGeometry.of(vol.shape, 2)
    plan = merge_prompts(geo, [slice_prompts(geo, s.boxes) for s in structures], (2, 9))
    feed = Feed(geo, "slice-minmax", None, torch.float32, scores=True)
    sim, stats, guard = SimDevice(), SegmentStats(), FiniteGuard()
    out = run_plan(plan, PinnedPlacement(sim, vol, feed),
                   StructuresStep(backend, plan, guard, stats, scores=True), guard, 3, stats)
    assert len(sim.named("download")) == 2 * 3  # mask and scores per slab
    labels, scores = engine.segment_structures(vol, structures, batch_size=3, return_scores=True)
    np.testing.assert_array_equal(out["mask"], labels)
    np.testing.assert_array_equal(out["scores"], scores)


LAYOUTS = {  # volume layout -> (the volume from a C-order array, slab memory order)
    "C order, sliced along the contiguous Z": (lambda a: a, (1, 2, 0)),
    "Fortran order": (np.asfortranarray, (0, 2, 1)),
    "slice-major": (lambda a: np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 2, 0)), 0, 2),
                    (0, 1, 2)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_slabs_and_masks_follow_the_volume_memory_order(backend, engine, layout):
    """The pinned slabs are laid out like the volume's slices (so the host gather and scatter are
    row copies, not transposes) and the mask like the volume; the kernels read and write the
    slabs through their strides; the mask equals the CPU engine's (a partial last slab)."""
    make, order = LAYOUTS[layout]
    vol = make(_volume(shape=(19, 14, 10)))
    geo = SliceGeometry.of(vol.shape, 2)
    idx, boxes = slice_prompts(geo, None)
    plan = Plan(geo, idx, boxes[None])
    feed = Feed(geo, "slice-minmax", None, torch.float32)
    placement = PinnedPlacement(SimDevice(), vol, feed)
    stats, guard = SegmentStats(), FiniteGuard()
    out = run_plan(plan, placement, WholeModelStep(backend, plan, guard, stats), guard, 4, stats)
    assert placement.order == order
    view = placement._view(placement.pinned_in[0].host, 4)
    assert view.shape == (4, 19, 14) and np.shares_memory(view, placement.pinned_in[0].host)
    strides = [view.strides[a] for a in order]
    assert strides == sorted(strides, reverse=True)
    cpu = engine.segment(vol, batch_size=4)  # the CPU engine's mask follows the volume too
    for mask in (out["mask"], cpu):
        by_stride = np.argsort([-s for s in mask.strides], kind="stable")
        assert (np.argsort([-s for s in vol.strides], kind="stable") == by_stride).all()
        assert mask.__array_interface__["data"][0] % 4096 == 0  # page-aligned: streaming stores
    np.testing.assert_array_equal(out["mask"], cpu)


@pytest.mark.parametrize("dtype", [np.int16, np.int64])
def test_device_resident_placement(backend, engine, dtype):
    """The device-resident placement (volume and mask on the device, ops in place on the
    compute stream; int64 converted per slab) with the simulated device's CPU buffers."""
    vol = _volume(shape=(15, 12, 7), dtype=dtype)
    sim = SimDevice()
    got, stats = simulate(backend, DevicePlacement, sim, torch.from_numpy(np.asfortranarray(vol)),
                          batch=3)
    assert {op.timeline for op in sim.ops} == {"compute"}
    np.testing.assert_array_equal(got.numpy(), engine.segment(vol, batch_size=3))
    assert stats.stages["upload"] == stats.stages["download"] == 0.0


# -- the checker catches planted faults ---------------------------------------------------------
def test_catches_a_dropped_upload_wait(backend):
    """Compute no longer waits for the upload: preprocess reads device_in while the upload may
    still be writing it."""
    with pytest.raises(ScheduleError, match=r"race on device_in\[0\]: #\d+ preprocess on "
                                            r"compute reads it while #\d+ upload on upload"):
        simulate(backend, PinnedPlacement, SimDevice(drop_waits=("uploaded",)), _volume())


def test_catches_a_dropped_compute_wait(backend):
    """The download no longer waits for compute: it reads device_mask before postprocess."""
    with pytest.raises(ScheduleError, match=r"race on device_mask\[0\]: #\d+ download on "
                                            r"download reads it while #\d+ postprocess"):
        simulate(backend, PinnedPlacement, SimDevice(drop_waits=("computed",)), _volume())


def test_catches_a_dropped_reuse_wait(backend):
    """The upload of slab i+2 no longer waits for slab i's preprocess to have read
    device_in[s]: a buffer reused before its event."""
    with pytest.raises(ScheduleError, match=r"race on device_in\[0\]: #\d+ upload on upload "
                                            r"writes it while #\d+ preprocess on compute reads"):
        simulate(backend, PinnedPlacement, SimDevice(drop_waits=("preprocessed",)), _volume(),
                 batch=2)


def test_catches_download_on_the_upload_stream(backend):
    sim = SimDevice(merge_streams={"download": "upload"})
    simulate(backend, PinnedPlacement, sim, _volume())  # no race: just serialised
    with pytest.raises(AssertionError, match="share stream"):
        check_double_buffered_schedule(sim, 3)
