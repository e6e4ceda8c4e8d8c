"""A real 2-process torchrun (gloo, CPU) training run: both ranks end with identical weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import nibabel as nib
import numpy as np
import torch

from sam_unet import cli
from sam_unet.data import mni152


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path):
    t1, wm = mni152.paths()
    for src, name in ((t1, "t1"), (wm, "wm")):
        img = nib.load(src)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, 84:92], img.affine),
                 tmp_path / f"{name}.nii.gz")
    data = tmp_path / "data"
    assert cli.main(["prepare", "--image", str(tmp_path / "t1.nii.gz"), "--label",
                     str(tmp_path / "wm.nii.gz"), "--label-threshold", "127.5",
                     "--test-slices", "every:4", "-o", str(data), "--quiet"]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "sam_unet.cli", "train", "--data", str(data), "-o", str(run),
           "--variant", "tiny", "--device", "cpu", "--threads", "1", "--batch-size", "1",
           "--masks-per-image", "2", "--max-steps", "2", "--val-max-images", "1",
           "--augment", "hflip,intensity", "--no-tensorboard", "--quiet",
           "--write-state-hash"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    h0 = (run / "state_rank0.sha256").read_text().strip()
    h1 = (run / "state_rank1.sha256").read_text().strip()
    assert len(h0) == 64 and h0 == h1
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    ts = ckpt["train_state"]
    assert ts["world_size"] == 2 and ts["step"] == 2 and len(ts["rng"]) == 2
    # the checkpoint holds the plain (unwrapped) model in the published layout
    assert not any(k.startswith(("module.", "model.")) for k in ckpt["model"])
