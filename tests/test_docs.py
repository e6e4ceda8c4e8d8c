"""The documentation cannot rot: every command in docs/guide.md runs, what the docs point to
exists, and ``--help`` tells the defaults.

- ``--help`` of every command shows each option's default ("(default: ...)") wherever the option
  has one, and the top-level help speaks to users (each command and an example).
- docs/guide.md: each fenced ``bash`` block runs in one shared temporary folder, in order, with
  ``sam-unet`` running this interpreter's sam_unet; each ``python`` block runs there with
  ``exec``. A failing block fails the test with the block's text and its output. ``bash gpu``
  blocks run only where CUDA and TensorRT are present; ``bash install`` blocks are not run
  (they install), but the extras they name must exist in pyproject.toml.
- Links in README.md and docs/*.md lead to files that exist, and no file of the project cites
  documents that are not in the repository.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sam_unet import cli

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guide.md"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _shows_default(action: argparse.Action) -> bool:
    """Whether an option has a default worth showing (not None, not a flag's own value)."""
    if not action.option_strings or action.default in (None, [], argparse.SUPPRESS):
        return False
    return not (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))


def test_every_option_with_a_default_shows_it():
    missing = []
    for name, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not _shows_default(action):
                continue
            text = formatter._expand_help(action)
            if "(default: " not in text:
                missing.append(f"sam-unet {name} {action.option_strings[-1]}: {text!r}")
            assert "(default: None)" not in text, (name, action.option_strings)
    assert not missing, "\n".join(missing)


def test_help_shows_defaults_in_the_rendered_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS passes over the training set (default: 15)" in text
    assert "examples:" in text and "sam-unet train --data" in text
    assert "--no-jitter no box jitter in training --augment" in text  # flags: no "(default"


def test_top_level_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        if name in _subparsers():
            assert re.search(rf"^\s+{re.escape(name)}\s", text, re.M), name
    assert "examples:" in text and "sam-unet demo" in text
    assert "sam-unet COMMAND --help" in text


# ------------------------------------------------------------------------------------------
# docs/guide.md runs
# ------------------------------------------------------------------------------------------
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)


def fenced_blocks(text: str) -> list[tuple[str, str, int]]:
    """(info string, body, first line number) of each fenced block of a Markdown text."""
    out = []
    for m in FENCE.finditer(text):
        indent = len(m.group("indent"))
        body = "\n".join(line[indent:] for line in m.group("body").splitlines())
        out.append((m.group("info").strip(), body + "\n", text.count("\n", 0, m.start()) + 1))
    return out


def _extras_named(command: str) -> set[str]:
    """Extras in pip arguments: '.[dicom]', "sam-unet[trt]" -> {"dicom", "trt"}."""
    names = set()
    for group in re.findall(r"(?:\.|sam-unet)\[([A-Za-z0-9_,-]+)\]", command):
        names.update(n.strip() for n in group.split(","))
    return names


def _pyproject_extras() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    with open(REPO / "pyproject.toml", "rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def _gpu_with_tensorrt() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def _environment(folder: Path) -> dict[str, str]:
    """PATH with a ``sam-unet`` that runs this interpreter's sam_unet, caches in ``folder``."""
    bin_dir = folder / ".bin"
    bin_dir.mkdir()
    # Scripts, not symlinks: a symlinked venv interpreter would not find its venv.
    for name, command in (("sam-unet", f'"{sys.executable}" -m sam_unet.cli'),
                          ("python", f'"{sys.executable}"')):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["SAM_UNET_ONNX_CACHE"] = str(folder / ".cache" / "onnx")
    env["SAM_UNET_ENGINE_CACHE"] = str(folder / ".cache" / "engines")
    env["MPLBACKEND"] = "Agg"
    return env


def _failure(kind: str, line: int, body: str, output: str) -> str:
    return (f"docs/guide.md line {line}: this {kind} block failed:\n{body}\n"
            f"--- output (last 4000 characters) ---\n{output[-4000:]}")


def test_guide_install_blocks_name_real_extras():
    blocks = [b for b in fenced_blocks(GUIDE.read_text()) if b[0] == "bash install"]
    assert blocks, "the guide has no install block"
    extras = _pyproject_extras()
    for _, body, line in blocks:
        assert "pip install" in body, line
        unknown = _extras_named(body) - extras
        assert not unknown, f"docs/guide.md line {line}: no such extra {sorted(unknown)}"


def test_readme_set_up_is_two_commands_with_real_extras():
    text = (REPO / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    blocks = [body for info, body, _ in fenced_blocks(section) if info == "bash"]
    assert len(blocks) == 2, blocks
    assert "sam-unet demo" in blocks[0] and "pytest" in blocks[1]
    assert all(len(b.strip().splitlines()) == 1 for b in blocks)
    assert _extras_named("".join(blocks)) <= _pyproject_extras()


def test_readme_use_block_runs(tmp_path, monkeypatch):
    """README's Python "Use" block, as written, with what it leaves to the reader supplied: a
    ``model.pt`` (the demo checkpoint), a ``ct.nii.gz`` and ``volume`` (a crop of the bundled
    MNI152 T1) and the 3D box corners."""
    import shutil

    import nibabel as nib
    import numpy as np

    import sam_unet
    from sam_unet.data import mni152

    text = (REPO / "README.md").read_text()
    section = text.split("## Use", 1)[1].split("\n## ", 1)[0]
    ((body, line),) = [(b, n) for info, b, n in fenced_blocks(section) if info == "python"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAM_UNET_ONNX_CACHE", str(tmp_path / ".cache"))
    shutil.copy(Path(sam_unet.__file__).parent / "assets" / "demo_tiny.pt", "model.pt")
    t1, _ = mni152.load_t1_and_wm_mask()
    volume = np.ascontiguousarray(np.asarray(t1.data)[40:120, 50:150, 80:88])
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.eye(4)), "ct.nii.gz")
    names = {"__name__": "__readme__", "volume": volume,
             **dict(zip(("x0", "y0", "z0", "x1", "y1", "z1"), (10, 20, 2, 60, 80, 5),
                       strict=True))}
    try:
        exec(compile(body, f"README.md:{line}", "exec"), names)
    except Exception as exc:  # noqa: BLE001 - reported with the block
        pytest.fail(f"README.md's Use block failed: {type(exc).__name__}: {exc}\n{body}")
    mask = names["mask"]
    assert mask.shape == volume.shape and mask.dtype == np.uint8
    assert not mask[:, :, :2].any() and not mask[:, :, 6:].any()  # the 3D box's slices only
    assert nib.load("mask.nii.gz").shape == volume.shape


@pytest.mark.slow
def test_guide_runs(tmp_path, monkeypatch):
    """Every bash and python block of the guide, in order, in one folder (about a minute on
    2 idle cores: the demo, a 4-step training run, exports and a few small segmentations)."""
    env = _environment(tmp_path)
    monkeypatch.chdir(tmp_path)
    for key in ("SAM_UNET_ONNX_CACHE", "SAM_UNET_ENGINE_CACHE", "MPLBACKEND"):
        monkeypatch.setenv(key, env[key])
    ran, skipped = [], []
    for info, body, line in fenced_blocks(GUIDE.read_text()):
        kind = info.split()[0] if info else ""
        if kind not in ("bash", "python") or info == "bash install":
            continue
        if info == "bash gpu" and not _gpu_with_tensorrt():
            skipped.append(line)
            continue
        t0 = time.perf_counter()
        if kind == "bash":
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", body], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                pytest.fail(_failure("bash", line, body, proc.stdout + proc.stderr))
        else:
            try:
                exec(compile(body, f"docs/guide.md:{line}", "exec"), {"__name__": "__guide__"})
            except Exception as exc:  # noqa: BLE001 - reported with the block
                pytest.fail(_failure("python", line, body, f"{type(exc).__name__}: {exc}"))
        ran.append((line, time.perf_counter() - t0))
    print("guide blocks run (line, seconds):", [(n, round(t, 1)) for n, t in ran],
          "skipped (no GPU with TensorRT):", skipped)
    assert len(ran) >= 10, ran  # the guide keeps its runnable examples
    # What the guide's steps promise, checked on the files they made.
    for path in ("demo/mni152_t1_wm_mask.nii.gz", "masks/brain_a_seg.nii.gz",
                 "masks/brain_b_seg.nii.gz", "ct_masks/ct_series_seg.dcm",
                 "boxed/brain_a_seg.nii.gz", "structures/brain_a_seg_statistics.json",
                 "followed/brain_a_seg.nii.gz", "runs/wm/best.pt",
                 "runs/wm/eval/evaluation.json", "wm.onnx", "wm_masks/t1_seg.nii.gz",
                 "forced/t1_seg.nii.gz", "brain_a_structures.nii.gz", "ct_small_seg.dcm"):
        assert (tmp_path / path).is_file(), path
    assert sorted(p.name for p in (tmp_path / "scans").iterdir()) == [
        "brain_a.nii.gz", "brain_b.nii.gz"]  # outputs never land beside the inputs


# ------------------------------------------------------------------------------------------
# links and references
# ------------------------------------------------------------------------------------------
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_links_lead_somewhere(doc):
    text = doc.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (doc.parent / path).exists(), f"{doc.name}: link to missing {path}"
        elif anchor:
            assert anchor in anchors, f"{doc.name}: no heading for #{anchor}"
    for path in re.findall(r"`((?:docs|python|tests|benchmarks|csrc|export)/[\w./-]+)`", text):
        assert (REPO / path).exists() or "*" in path, f"{doc.name}: names missing {path}"


def test_no_citations_of_documents_outside_the_repository():
    pattern = re.compile(r"\b(DESIGN(\.md| \d)|PERFORMANCE\.md)|\bissue #\d|\(#\d+\)")
    hits = []
    for folder in ("python", "tests", "docs", "benchmarks", "csrc", "export"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".md", ".h", ".cpp", ".cu", ".cuh", ".sh", ".txt"):
                continue
            if path == Path(__file__).resolve():
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    for number, line in enumerate((REPO / "README.md").read_text().splitlines(), 1):
        if pattern.search(line):
            hits.append(f"README.md:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
