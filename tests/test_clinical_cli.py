"""``sam-unet segment`` on DICOM inputs with named structures and every output beside the label
map (names, per-structure files, DICOM SEG, statistics, preview); the refusals as one line with
nothing written; and the same label map through the CLI, segment_file and segment_dicom."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import sam_unet
from dicom_helpers import mni_crop, reorient, save_nifti, write_series
from sam_unet.cli import main as cli

DEMO = Path(__file__).resolve().parents[1] / "python" / "sam_unet" / "assets" / "demo_tiny.pt"
PREFIX = "sam-unet segment: error: "


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli(["segment", *args, "--checkpoint", str(DEMO), "--device", "cpu", "--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_error(err: str, fragment: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
    assert fragment in lines[0], (fragment, lines[0])


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A CT series (LPS, shuffled files), its NIfTI, and a prompts file of three structures
    whose slices overlap, with a coarse label map for one of them."""
    root = tmp_path_factory.mktemp("cli")
    data, affine = reorient(*mni_crop(), ("L", "P", "S"))
    write_series(root / "ct", data, affine, modality="CT", intercept=-1024.0)
    save_nifti(root / "ct.nii.gz", data.astype(np.int16) - 1024, affine)
    coarse = np.zeros(data.shape, np.uint8)
    coarse[8:40, 8:50, 5:8] = 4
    nib.save(nib.Nifti1Image(coarse, affine), str(root / "coarse.nii.gz"))
    prompts = {"structures": [
        {"name": "upper left", "label": 1, "box": [2, 2, 0, 30, 60, 5]},
        {"name": "middle", "label": 2, "from_label_map": {"file": "coarse.nii.gz", "value": 4}},
        {"name": "lower", "label": 3, "slice_boxes": {str(k): [20, 2, 50, 60]
                                                      for k in range(7, 12)}}]}
    (root / "prompts.json").write_text(json.dumps(prompts))
    return root


@pytest.mark.slow
def test_dicom_series_with_structures_and_every_output(case, tmp_path, capsys, single_thread):
    import highdicom as hd

    before = _listing(case / "ct")
    out = tmp_path / "out"
    rc, stdout, err = _run(["-i", str(case / "ct"), "-o", str(out), "--prompts",
                            str(case / "prompts.json"), "--per-structure", "--seg",
                            "--statistics", "--preview"], capsys)
    assert rc == 0, err
    assert stdout.strip() == "segmented 1, skipped 0 (already done), failed 0"
    assert _listing(out) == ["ct_seg.dcm", "ct_seg.json", "ct_seg.nii.gz", "ct_seg_preview.png",
                             "ct_seg_statistics.json", "ct_seg_structures",
                             "ct_seg_structures/lower.nii.gz", "ct_seg_structures/middle.nii.gz",
                             "ct_seg_structures/upper_left.nii.gz"]
    assert _listing(case / "ct") == before  # nothing written into the input
    labels = np.asarray(nib.load(str(out / "ct_seg.nii.gz")).dataobj)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    # the same as the Python API on the series and the CLI on its NIfTI conversion
    api = sam_unet.segment_dicom(case / "ct", sam_unet.Engine.from_checkpoint(DEMO, device="cpu"),
                                 structures=case / "prompts.json")
    np.testing.assert_array_equal(np.asarray(api.dataobj), labels)
    rc, _, err = _run(["-i", str(case / "ct.nii.gz"), "-o", str(tmp_path / "nii"), "--prompts",
                       str(case / "prompts.json")], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(tmp_path / "nii" / "ct_seg.nii.gz")).dataobj), labels)

    names = json.loads((out / "ct_seg.json").read_text())
    assert names["labels"] == {"1": "upper left", "2": "middle", "3": "lower"}
    assert names["series"]["modality"] == "CT" and names["model"] == "demo_tiny.pt (tiny)"
    for value, name in ((1, "upper_left"), (2, "middle"), (3, "lower")):
        one = np.asarray(nib.load(str(out / "ct_seg_structures" / f"{name}.nii.gz")).dataobj)
        np.testing.assert_array_equal(one, (labels == value).astype(np.uint8))
    stats = json.loads((out / "ct_seg_statistics.json").read_text())
    assert stats["intensity"] == "HU"
    for value, name in ((1, "upper left"), (2, "middle"), (3, "lower")):
        assert stats["structures"][name]["voxels"] == int((labels == value).sum())
    seg = hd.seg.segread(out / "ct_seg.dcm")
    assert [seg.get_segment_description(n).segment_label for n in (1, 2, 3)] == [
        "upper left", "middle", "lower"]
    assert (out / "ct_seg_preview.png").stat().st_size > 10_000

    # --continue: everything there, nothing to do
    rc, stdout, _ = _run(["-i", str(case / "ct"), "-o", str(out), "--prompts",
                          str(case / "prompts.json"), "--per-structure", "--seg",
                          "--statistics", "--preview", "--continue"], capsys)
    assert rc == 0 and "skipped 1" in stdout


def test_refusals_are_one_line_and_write_nothing(case, tmp_path, capsys):
    cases = [
        (["-i", str(case / "ct.nii.gz"), "-o", str(tmp_path / "a"), "--seg"],
         "--seg writes a DICOM SEG, which references the source images of a DICOM series"),
        (["-i", str(case / "ct"), "-o", str(case / "ct")],
         "would be written inside this input folder (a DICOM series)"),
        (["-i", str(case / "ct"), "-o", str(tmp_path / "b"), "--prompts",
          str(case / "prompts.json"), "--box", "0", "0", "0", "3", "3", "3"],
         "--box and --prompts both give prompts"),
        (["-i", str(case / "ct"), "-o", str(tmp_path / "c"), "--prompts",
          str(case / "missing.json")], "no such prompts file"),
    ]
    before = _listing(case)
    for args, fragment in cases:
        rc, _, err = _run(args, capsys)
        assert rc == 1, args
        _one_error(err, fragment)
    assert _listing(case) == before
    assert not any(p.exists() and _listing(p) for p in tmp_path.iterdir())


def test_a_study_with_two_series_needs_series(case, tmp_path, capsys, single_thread):
    from sam_unet.io.dicom import list_dicom_series

    data, affine = mni_crop()
    study = tmp_path / "study"
    write_series(study / "s1", data, affine, series_number=2, description="T1")
    write_series(study / "s2", data[:, :, :3], affine, series_number=9, description="short")
    rc, _, err = _run(["-i", str(study), "-o", str(tmp_path / "out")], capsys)
    assert rc == 1
    _one_error(err, "holds 2 image series; choose one with --series UID")
    assert "'short', 3 images" in err
    uid = list_dicom_series(study)[1].uid
    rc, _, err = _run(["-i", str(study), "-o", str(tmp_path / "out"), "--series", uid], capsys)
    assert rc == 0, err
    path = tmp_path / "out" / "study_seg.nii.gz"
    out = nib.load(str(path))
    assert out.shape == (data.shape[0], data.shape[1], 3)
    # --continue checks the output against the chosen series, and skips it
    stamp = path.stat().st_mtime_ns
    rc, text, err = _run(["-i", str(study), "-o", str(tmp_path / "out"), "--series", uid,
                          "--continue"], capsys)
    assert rc == 0 and "segmented 0, skipped 1 (already done), failed 0" in text, (text, err)
    assert path.stat().st_mtime_ns == stamp


def test_a_failed_seg_leaves_none_of_the_files_outputs(case, tmp_path, capsys, single_thread):
    """Slices of one series carrying two StudyInstanceUIDs (as some converters write them):
    the series reads, the SEG cannot be built; the label map, statistics and per-structure
    files written before it are removed, so --continue never takes the file as done."""
    import pydicom

    src = tmp_path / "ct"
    write_series(src, *reorient(*mni_crop(), ("L", "P", "S")), modality="CT")
    for i, f in enumerate(sorted(src.iterdir())):
        if i % 2:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID = pydicom.uid.generate_uid()
            ds.save_as(f)
    out = tmp_path / "out"
    rc, stdout, err = _run(["-i", str(src), "-o", str(out), "--statistics", "--per-structure",
                            "--seg"], capsys)
    assert rc == 1 and "failed 1" in stdout
    _one_error(err, "cannot build the DICOM SEG")
    assert _listing(out) == []
