"""Fork safety of the native ops: a child forked (multiprocessing's default start method on
Linux) after the parent ran the ops on its OpenMP thread pool must run them too, serially,
with the parent's results, and never hang (GNU libgomp's pool does not survive fork)."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sam_unet import ops
from sam_unet._native import native

TIMEOUT_S = 60


def _run_ops(vol: np.ndarray, logits: np.ndarray) -> dict:
    """preprocess, postprocess and a gather/scatter round trip of the whole volume."""
    n = vol.shape[2]
    images = np.empty((n, 3, 256, 256), np.float32)
    sizes = ops.preprocess(vol, images, z0=0, n=n)
    mask = np.zeros(vol.shape, np.uint8)
    ops.postprocess(logits, mask, z0=0, n=n, resized_hw=sizes[0])
    slab = np.empty((n, vol.shape[0], vol.shape[1]), vol.dtype)
    ops.gather_slices(vol, slab, z0=0, n=n)
    back = np.zeros(vol.shape, vol.dtype, order="F")
    ops.scatter_slices(slab, back, z0=0, n=n)
    return {"images": images, "mask": mask, "round_trip": bool((back == vol).all()),
            "threads": native().threads_info()}  # fmt: skip


def _send_result(conn, fn, args) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", repr(exc)))


def in_forked_child(fn, *args):
    """fn(*args) in a process forked from this one (not a daemon, so it may fork again); fails
    the test if it does not answer within TIMEOUT_S (the child is then killed)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_result, args=(send, fn, args))
    proc.start()
    try:
        if not recv.poll(TIMEOUT_S):
            pytest.fail(f"forked child did not answer within {TIMEOUT_S} s (hung in native ops?)")
        status, value = recv.recv()
    finally:
        proc.kill()
        proc.join()
    assert status == "ok", value
    return value


def _grandchild_too(vol: np.ndarray, logits: np.ndarray) -> dict:
    """Run the ops, then fork again (a worker of a worker) and run them there."""
    mine = _run_ops(vol, logits)
    return {"mine": mine, "theirs": in_forked_child(_run_ops, vol, logits)}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vol = rng.integers(-1000, 3000, (256, 192, 12)).astype(np.int16)  # several MB: threads run
    logits = rng.normal(0, 3, (12, 1, 64, 64)).astype(np.float32)
    return vol, logits


def test_forked_child_runs_the_ops_serially(data) -> None:
    vol, logits = data
    parent = _run_ops(vol, logits)  # the parent's thread pool is started here (if not before)
    assert parent["round_trip"] and not parent["threads"]["serial_after_fork"]
    child = in_forked_child(_grandchild_too, vol, logits)
    for got in (child["mine"], child["theirs"]):
        assert got["threads"]["serial_after_fork"]
        np.testing.assert_array_equal(got["images"], parent["images"])
        np.testing.assert_array_equal(got["mask"], parent["mask"])
        assert got["round_trip"]
    # the parent keeps its threads
    assert not native().threads_info()["serial_after_fork"]


def test_fork_before_any_parallel_region_keeps_threads(tmp_path) -> None:
    """A child forked before the parent ever entered a parallel region (e.g. a DataLoader worker
    started early) keeps the thread pool: a fresh interpreter shows it."""
    script = textwrap.dedent(
        f"""
        import multiprocessing, numpy as np
        from sam_unet import ops
        from sam_unet._native import native

        def child(_):
            vol = np.ones((256, 256, 8), np.int16)
            ops.gather_slices(vol, np.empty((8, 256, 256), np.int16), z0=0, n=8)
            return native().threads_info()["serial_after_fork"]

        if __name__ == "__main__":
            with multiprocessing.get_context("fork").Pool(1) as pool:
                print(pool.apply_async(child, (0,)).get(timeout={TIMEOUT_S}))
        """
    )
    path = tmp_path / "fork_first.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                          timeout=TIMEOUT_S + 30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
