"""Reliability of ``segment_file`` and ``sam-unet segment`` on the files users bring.

Each case asserts its exact outcome: the error text (one line, naming the input and the fix),
the exit code, the input's bytes (hash before and after), what is left in the folders (no
partial output, no temporary file) and the output geometry (shape, affine, sform/qform codes)
read with nibabel and, independently, SimpleITK where it reads the file. Most CLI runs are
in-process (``cli.main``) for speed; a few are real subprocesses. Inputs are small crops
(48 x 56 x 12) of the bundled MNI152 T1; the model is the bundled demo checkpoint (``tiny``).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sam_unet.cli import main as cli
from sam_unet.data.mni152 import paths as mni_paths
from sam_unet.runtime.engine import Engine
from sam_unet.runtime.files import segment_file
from sam_unet.runtime.outputs import OutputError

sitk = pytest.importorskip("SimpleITK")

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "python" / "sam_unet" / "assets" / "demo_tiny.pt"
PREFIX = "sam-unet segment: error: "

pytestmark = pytest.mark.skipif(not DEMO.is_file(), reason="demo checkpoint not built yet")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def crop() -> tuple[np.ndarray, np.ndarray]:
    """(int16 (48, 56, 12) RAS data, its affine): a crop of the MNI152 T1 through white matter."""
    t1, _ = mni_paths()
    img = nib.as_closest_canonical(nib.load(str(t1)))
    start = np.array([60, 80, 70])
    data = np.asarray(img.dataobj)[60:108, 80:136, 70:82].astype(np.int16)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
    return data, affine


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_checkpoint(DEMO, device="cpu", batch_size=12)


@pytest.fixture(scope="module")
def reference(engine, crop) -> np.ndarray:
    """The demo model's mask of the RAS crop (canonical order)."""
    return engine.segment(crop[0])


def _save(path: Path, data: np.ndarray, affine: np.ndarray, *, header=None, klass=None) -> Path:
    klass = klass or nib.Nifti1Image
    nib.save(klass(data, affine, header=header), str(path))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = cli(["segment", *args, "--device", "cpu", "--quiet"])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _subprocess(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "sam_unet.cli", "segment", *args, "--device",
                           "cpu", "--quiet"], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _one_error(err: str, *fragments: str) -> str:
    """The stderr is exactly one error line holding every fragment, and no traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX) and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _count(line: str, path: str) -> int:
    """How often ``path`` is printed in ``line`` (as a whole name, not a prefix of another)."""
    return len(re.findall(re.escape(path) + r"(?![\w.])", line))


def _canonical(path: Path) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def _assert_same_geometry(src: Path, out: Path, *, by_sitk: bool = True) -> None:
    a, b = nib.load(str(src)), nib.load(str(out))
    assert b.shape == a.shape
    assert b.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(b.affine, a.affine)
    for key in ("sform_code", "qform_code"):
        assert int(b.header[key]) == int(a.header[key]), key
    np.testing.assert_array_equal(b.header.get_sform(), a.header.get_sform())
    np.testing.assert_array_equal(b.header.get_qform(), a.header.get_qform())
    if by_sitk:
        sa, sb = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
        assert sa.GetSize() == sb.GetSize()
        np.testing.assert_allclose(sa.GetOrigin(), sb.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(sa.GetSpacing(), sb.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(sa.GetDirection(), sb.GetDirection(), atol=1e-6)


# ------------------------------------------------------------------------------------------
# inputs are never outputs
# ------------------------------------------------------------------------------------------
def test_outputs_that_resolve_to_inputs_are_refused_before_the_model_loads(tmp_path, crop,
                                                                           capsys):
    data, affine = crop
    src = tmp_path / "in"
    src.mkdir()
    a = _save(src / "a.nii.gz", data, affine)
    _save(src / "b.nii", data, affine)
    (tmp_path / "sym.nii.gz").symlink_to(a)
    os.link(a, tmp_path / "hard.nii.gz")
    (tmp_path / "in_link").symlink_to(src, target_is_directory=True)
    bad_model = tmp_path / "garbage.pt"
    bad_model.write_bytes(b"not a checkpoint")  # loading it would fail: the refusal comes first
    before = {p: _digest(p) for p in (src / "a.nii.gz", src / "b.nii")}
    listing = _listing(tmp_path), _listing(src)
    cases = [
        (str(a), str(a), "is the input itself"),
        (str(a), str(tmp_path / "in" / ".." / "in" / "a.nii.gz"), "is the input itself"),
        (str(a), str(tmp_path / "sym.nii.gz"), "is a symlink to the input itself"),
        (str(a), str(tmp_path / "hard.nii.gz"), "is a hard link to the input itself"),
        (str(src), str(src), "is the input folder"),
        (str(src), str(src) + "/", "is the input folder"),
        (str(src), str(tmp_path / "in_link"), "is the input folder"),
        (str(tmp_path / "in_link"), str(src), "is the input folder"),
    ]
    for inp, out, fragment in cases:
        for resume in ([], ["--continue"]):
            rc, stdout, err = _run(["-i", inp, "-o", out, "--checkpoint", str(bad_model),
                                    *resume], capsys)
            assert rc == 1, (inp, out)
            line = _one_error(err, fragment, "give another -o")
            assert line.startswith(f"{PREFIX}{inp}: ") and _count(line, inp) == 1, line
            assert stdout == ""
    assert {p: _digest(p) for p in before} == before
    assert (_listing(tmp_path), _listing(src)) == listing


def test_segment_file_refuses_its_input(tmp_path, crop, engine):
    a = _save(tmp_path / "a.nii", *crop)
    digest = _digest(a)
    (tmp_path / "link.nii").symlink_to(a)
    for out in (a, tmp_path / "link.nii"):
        with pytest.raises(OutputError, match=r"a\.nii: the output .* the input itself"):
            segment_file(a, out, engine)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"notes\.txt is an existing file that is not a NIfTI"):
        segment_file(a, tmp_path / "notes.txt", engine)
    assert _digest(a) == digest and _listing(tmp_path) == ["a.nii", "link.nii", "notes.txt"]


def test_output_names_and_kinds(tmp_path, crop, reference, capsys):
    data, affine = crop
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "a.nii", data, affine)
    _save(src / "b.nii.gz", data, affine)
    rc, out, err = _run(["-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint",
                         str(DEMO)], capsys)
    assert rc == 0 and err == ""
    assert out.strip() == "segmented 2, skipped 0 (already done), failed 0"
    assert _listing(tmp_path / "out") == ["a_seg.nii", "b_seg.nii.gz"]
    with open(tmp_path / "out" / "a_seg.nii", "rb") as fh:
        assert fh.read(2) != b"\x1f\x8b"  # .nii stays uncompressed
    for name in ("a_seg.nii", "b_seg.nii.gz"):
        np.testing.assert_array_equal(_canonical(tmp_path / "out" / name), reference)
    # one input: -o a new folder is created; -o a NIfTI name is the file itself
    rc, out, err = _run(["-i", str(src / "b.nii.gz"), "-o", str(tmp_path / "new" / "dir"),
                         "--checkpoint", str(DEMO)], capsys)
    assert rc == 0 and _listing(tmp_path / "new" / "dir") == ["b_seg.nii.gz"]
    rc, out, err = _run(["-i", str(src / "b.nii.gz"), "-o", str(tmp_path / "mask.nii"),
                         "--checkpoint", str(DEMO)], capsys)
    assert rc == 0 and (tmp_path / "mask.nii").is_file()
    assert _listing(src) == ["a.nii", "b.nii.gz"]


@pytest.mark.slow
def test_continue_skips_only_complete_outputs(tmp_path, crop, capsys):
    data, affine = crop
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a", "b", "c", "d"):
        _save(src / f"{name}.nii.gz", data, affine)
    args = ["-i", str(src), "-o", str(dst), "--checkpoint", str(DEMO), "--continue"]
    assert _run(args, capsys)[0] == 0
    good = (dst / "a_seg.nii.gz").read_bytes()
    stamp = (dst / "a_seg.nii.gz").stat().st_mtime_ns
    (dst / "b_seg.nii.gz").write_bytes(good[: len(good) // 2])  # truncated
    _save(dst / "c_seg.nii.gz", np.zeros((48, 56, 11), np.uint8), affine)  # wrong shape
    (dst / "d_seg.nii.gz").unlink()
    rc, out, err = _run(args, capsys)
    assert rc == 0
    assert out.strip() == "segmented 3, skipped 1 (already done), failed 0"
    assert err.count("segmenting it again") == 2
    assert (dst / "a_seg.nii.gz").stat().st_mtime_ns == stamp
    for name in ("b", "c", "d"):
        assert (dst / f"{name}_seg.nii.gz").read_bytes() == good
    rc, out, _ = _run(args, capsys)
    assert out.strip() == "segmented 0, skipped 4 (already done), failed 0"


def test_stale_temp_files_are_swept_and_never_inputs(tmp_path, crop, capsys):
    from sam_unet.atomic import host_tag

    data, affine = crop
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    _save(src / "a.nii.gz", data, affine)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a writer that is gone, as after a SIGKILL
    stale = f".a_seg.nii.gz.samtmp-{proc.pid}-{host_tag()}.x1y2z3w4.tmp.nii.gz"
    (dst / stale).write_bytes(b"\x1f\x8b half a file")
    (src / stale).write_bytes(b"\x1f\x8b half a file")  # an old output folder used as input
    past = (dst / stale).stat().st_mtime - 10
    os.utime(dst / stale, (past, past))
    rc, out, err = _run(["-i", str(src), "-o", str(dst), "--checkpoint", str(DEMO)], capsys)
    assert rc == 0 and err == ""
    assert out.strip() == "segmented 1, skipped 0 (already done), failed 0"
    assert _listing(dst) == ["a_seg.nii.gz"]
    assert stale in _listing(src)  # input folders are never swept


# ------------------------------------------------------------------------------------------
# any real voxel type, either byte order, NIfTI-1 and -2; geometry kept exactly
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_voxel_type_gives_the_same_mask(tmp_path, crop, engine, capsys):
    data, affine = crop
    values = data // 2  # 0..127: fits every type below
    ref = engine.segment(values.astype(np.int16))
    src = tmp_path / "in"
    src.mkdir()
    variants = {
        "int8.nii": ("<", np.int8, nib.Nifti1Header),
        "uint32.nii.gz": ("<", np.uint32, nib.Nifti1Header),
        "int64.nii": ("<", np.int64, nib.Nifti1Header),
        "uint64.nii.gz": ("<", np.uint64, nib.Nifti1Header),
        "big_int16_nifti2.nii": (">", np.int16, nib.Nifti2Header),
        "big_int32_nifti1.nii.gz": (">", np.int32, nib.Nifti1Header),
        "big_float64_nifti2.nii.gz": (">", np.float64, nib.Nifti2Header),
        "float32.nii": ("<", np.float32, nib.Nifti1Header),
    }
    for name, (endian, dtype, header_class) in variants.items():
        header = header_class(endianness=endian)
        header.set_data_dtype(np.dtype(dtype).newbyteorder(endian))
        klass = nib.Nifti2Image if header_class is nib.Nifti2Header else nib.Nifti1Image
        _save(src / name, values.astype(dtype), affine, header=header, klass=klass)
    digests = {p: _digest(p) for p in src.iterdir()}
    rc, out, err = _run(["-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint",
                         str(DEMO)], capsys)
    assert (rc, err) == (0, ""), err
    assert out.strip() == f"segmented {len(variants)}, skipped 0 (already done), failed 0"
    for name in variants:
        stem = name.split(".")[0]
        ext = ".nii.gz" if name.endswith(".gz") else ".nii"
        res = tmp_path / "out" / f"{stem}_seg{ext}"
        got = nib.load(str(res))
        assert isinstance(got, nib.Nifti2Image if "nifti2" in name else nib.Nifti1Image)
        _assert_same_geometry(src / name, res, by_sitk="nifti2" not in name)
        np.testing.assert_array_equal(np.asarray(got.dataobj), ref, err_msg=name)
    assert {p: _digest(p) for p in src.iterdir()} == digests


def test_scaled_int16_keeps_precision(tmp_path, crop, engine):
    data, affine = crop
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(0.25, -3.0)
    nib.save(img, tmp_path / "scaled.nii.gz")
    out = segment_file(tmp_path / "scaled.nii.gz", tmp_path / "out", engine)
    ref = engine.segment(data.astype(np.float64) * 0.25 - 3.0)
    np.testing.assert_array_equal(_canonical(out), ref)
    assert out.name == "scaled_seg.nii.gz"


def test_geometry_of_unusual_files_is_kept(tmp_path, crop, engine, reference):
    data, affine = crop
    # an LPS, oblique file written by SimpleITK
    arr = np.ascontiguousarray(data[::-1, ::-1, :].transpose(2, 1, 0))  # SimpleITK (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    c, s = np.cos(0.1), np.sin(0.1)
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    img.SetOrigin((10.0, 20.0, -5.0))
    by_sitk = tmp_path / "by_sitk.nii.gz"
    sitk.WriteImage(img, str(by_sitk))
    out = segment_file(by_sitk, tmp_path / "by_sitk_seg.nii.gz", engine)
    _assert_same_geometry(by_sitk, out)
    assert nib.aff2axcodes(nib.load(str(out)).affine) == ("L", "P", "S")
    np.testing.assert_array_equal(_canonical(out), reference)  # same anatomy, same mask

    # a sheared sform with qform_code 0: no qform invented
    sheared = affine.copy()
    sheared[0, 1] = 0.2
    sh = nib.Nifti1Image(data, None)
    sh.set_sform(sheared, code=2)
    sh.set_qform(None, code=0)
    nib.save(sh, tmp_path / "sheared.nii.gz")
    out = segment_file(tmp_path / "sheared.nii.gz", tmp_path / "sheared_seg.nii.gz", engine)
    _assert_same_geometry(tmp_path / "sheared.nii.gz", out, by_sitk=False)  # ITK refuses shear
    assert (int(nib.load(str(out)).header["qform_code"]),
            int(nib.load(str(out)).header["sform_code"])) == (0, 2)

    # a 4D file with one volume comes back 4D; a big-endian NIfTI-2 comes back NIfTI-2
    _save(tmp_path / "t.nii.gz", data[..., None], affine)
    out = segment_file(tmp_path / "t.nii.gz", tmp_path / "t_seg.nii.gz", engine)
    _assert_same_geometry(tmp_path / "t.nii.gz", out)
    assert nib.load(str(out)).shape == (48, 56, 12, 1)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj)[..., 0], reference)
    header = nib.Nifti2Header(endianness=">")
    header.set_data_dtype(">i2")
    lps, lps_affine = data[::-1, ::-1], affine @ np.array(
        [[-1, 0, 0, 47], [0, -1, 0, 55], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    _save(tmp_path / "be2.nii", lps, lps_affine, header=header, klass=nib.Nifti2Image)
    out = segment_file(tmp_path / "be2.nii", tmp_path / "be2_seg.nii", engine)
    assert isinstance(nib.load(str(out)), nib.Nifti2Image)
    _assert_same_geometry(tmp_path / "be2.nii", out, by_sitk=False)  # ITK reads no NIfTI-2
    np.testing.assert_array_equal(_canonical(out), reference)


def test_cli_box_is_in_the_file_frame(tmp_path, crop, capsys):
    """--box drawn on an LPS file equals the mapped box drawn on the RAS file (a random-weight
    model: its masks depend on the box inside the slice)."""
    from sam_unet.checkpoints import save_checkpoint
    from sam_unet.models.build import build_model

    torch.manual_seed(1)
    model = tmp_path / "random_tiny.pt"
    save_checkpoint(build_model("tiny"), model)
    data, affine = crop
    flip = np.array([[-1, 0, 0, 47], [0, -1, 0, 55], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    ras = _save(tmp_path / "ras.nii.gz", data, affine)
    lps = _save(tmp_path / "lps.nii.gz", np.ascontiguousarray(data[::-1, ::-1]), affine @ flip)
    box_lps = ["3", "5", "2", "30", "40", "8"]
    box_ras = ["17", "15", "2", "44", "50", "8"]  # x -> 47 - x, y -> 55 - y
    for src, box in ((lps, box_lps), (ras, box_ras)):
        rc, _, err = _run(["-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint",
                           str(model), "--box", *box], capsys)
        assert (rc, err) == (0, "")
    a = _canonical(tmp_path / "out" / "lps_seg.nii.gz")
    b = _canonical(tmp_path / "out" / "ras_seg.nii.gz")
    assert 0 < b.sum() and not b[:, :, :2].any() and not b[:, :, 9:].any()
    np.testing.assert_array_equal(a, b)
    rc, _, err = _run(["-i", str(lps), "-o", str(tmp_path / "o2"), "--checkpoint", str(model),
                       "--box", "0", "0", "0", "48", "10", "10"], capsys)
    assert rc == 1
    _one_error(err, f"{lps}: 3D box", "outside the file's voxel grid (48, 56, 12)",
               "give voxel indices within 0..[47, 55, 11]")
    assert not (tmp_path / "o2" / "lps_seg.nii.gz").exists()


# ------------------------------------------------------------------------------------------
# every user error: one line, the input named once, the fix, nothing half-written
# ------------------------------------------------------------------------------------------
def _bad_files(folder: Path, data: np.ndarray, affine: np.ndarray) -> dict[str, str]:
    """Files a user may bring that cannot be segmented -> the expected message fragment."""
    nib.save(nib.Nifti1Image(data.astype(np.complex64), affine), folder / "complex.nii")
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, affine), folder / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([data] * 3, -1), affine), folder / "series.nii.gz")
    nan = data.astype(np.float32)
    nan[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), folder / "nan.nii")
    good = folder / "truncated.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), good)
    good.write_bytes(good.read_bytes()[:-400])
    (folder / "text.nii").write_text("not an image\n")
    (folder / "misnamed.nii").write_bytes((folder / "series.nii.gz").read_bytes())
    return {
        "complex.nii": "complex-valued data (complex64) is not an intensity image; save its "
                       "magnitude",
        "rgb.nii.gz": "RGB color data (3 channels per voxel); convert it to one gray channel",
        "series.nii.gz": "expected a 3D volume, got shape (48, 56, 12, 3) (3 volumes); segment "
                         "one 3D volume at a time",
        "nan.nii": "NaN or Inf",
        "truncated.nii.gz": "cannot read the image data (EOFError",
        "text.nii": "cannot read the NIfTI header",
        "misnamed.nii": "gzip-compressed although named .nii; rename it to misnamed.nii.gz",
    }


def test_folder_with_bad_files(tmp_path, crop, reference, capsys):
    data, affine = crop
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    expected = _bad_files(src, data, affine)
    _save(src / "good1.nii.gz", data, affine)
    _save(src / "good2.nii", data, affine)
    digests = {p.name: _digest(p) for p in src.iterdir()}
    rc, out, err = _run(["-i", str(src), "-o", str(dst), "--checkpoint", str(DEMO)], capsys)
    assert rc == 1
    assert out.strip() == f"segmented 2, skipped 0 (already done), failed {len(expected)}"
    lines = err.splitlines()
    assert len(lines) == len(expected) and "Traceback" not in err
    for name, fragment in expected.items():
        line = next(ln for ln in lines if ln.startswith(f"{PREFIX}{src / name}: "))
        assert fragment in line and _count(line, str(src / name)) == 1, line
        assert "; " in line  # the fix
    assert _listing(dst) == ["good1_seg.nii.gz", "good2_seg.nii"]
    np.testing.assert_array_equal(_canonical(dst / "good1_seg.nii.gz"), reference)
    assert {p.name: _digest(p) for p in src.iterdir()} == digests


def test_model_file_errors_are_one_line(tmp_path, crop, capsys):
    src = _save(tmp_path / "a.nii.gz", *crop)
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage protobuf")
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 not a zip")
    cases = [
        (["--onnx", str(tmp_path / "bad.onnx")], str(tmp_path / "bad.onnx"),
         "cannot load the model"),
        (["--checkpoint", str(tmp_path / "bad.pt")], str(tmp_path / "bad.pt"),
         "cannot load the model"),
        (["--checkpoint", str(tmp_path / "none.pt")], str(tmp_path / "none.pt"),
         "no such model file; check the path"),
    ]
    for model_args, subject, fragment in cases:
        rc, out, err = _run(["-i", str(src), "-o", str(tmp_path / "out"), *model_args], capsys)
        assert rc == 1
        _one_error(err, f"{PREFIX}{subject}: {fragment}", "; ")
        assert not (tmp_path / "out" / "a_seg.nii.gz").exists()
    assert _listing(tmp_path) == ["a.nii.gz", "bad.onnx", "bad.pt"]  # not even "out/"


def test_input_errors_are_one_line(tmp_path, crop, capsys):
    data, affine = crop
    a = _save(tmp_path / "a.nii.gz", data, affine)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    cases = [
        (["-i", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o")],
         f"{tmp_path / 'missing.nii.gz'}: no such file or folder; check the path"),
        (["-i", str(tmp_path / "empty"), "-o", str(tmp_path / "o")],
         f"{tmp_path / 'empty'}: no .nii or .nii.gz files in this folder; give"),
        (["-i", str(tmp_path), "-o", str(tmp_path / "x.nii.gz")],
         "names a NIfTI file, but a folder of 1 inputs needs an output folder"),
        (["-i", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "o")],
         f"{tmp_path / 'notes.txt'}: not a supported input"),
        (["-i", str(a), "-o", str(tmp_path / "o"), "--batch-size", "0"],
         "--batch-size 0: must be >= 1"),
        (["-i", str(a), "-o", str(tmp_path / "notes.txt")],
         f"{a}: -o {tmp_path / 'notes.txt'} is an existing file that is not a NIfTI name"),
        (["-i", str(a), "-o", str(tmp_path / "o"), "--normalize", "window"],
         "--normalize window: needs a window and the model file records none; give --window"),
    ]
    for args, fragment in cases:
        rc, out, err = _run([*args, "--checkpoint", str(DEMO)], capsys)
        assert rc in (1, 2), args
        _one_error(err, fragment)
    assert sorted(_listing(tmp_path)) == sorted(["a.nii.gz", "empty", "notes.txt"] + (
        ["o"] if (tmp_path / "o").exists() else []))
    assert not (tmp_path / "o").exists() or _listing(tmp_path / "o") == []


@pytest.mark.slow
def test_real_subprocess_errors_and_debug(tmp_path, crop):
    """As a user runs it: a folder with one bad file, a bad ONNX file, --debug."""
    data, affine = crop
    src = tmp_path / "in"
    src.mkdir()
    _save(src / "ok.nii.gz", data, affine)
    nib.save(nib.Nifti1Image(data.astype(np.complex64), affine), src / "bad.nii")
    proc = _subprocess(["-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint",
                        str(DEMO)])
    assert proc.returncode == 1
    assert proc.stdout.strip() == "segmented 1, skipped 0 (already done), failed 1"
    _one_error(proc.stderr, f"{src / 'bad.nii'}: complex-valued data")
    assert _listing(tmp_path / "out") == ["ok_seg.nii.gz"]

    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    proc = _subprocess(["-i", str(src / "ok.nii.gz"), "-o", str(tmp_path / "o2"), "--onnx",
                        str(tmp_path / "bad.onnx")])
    assert proc.returncode == 1
    _one_error(proc.stderr, f"{tmp_path / 'bad.onnx'}: cannot load the model")
    proc = _subprocess(["-i", str(src / "bad.nii"), "-o", str(tmp_path / "o3"), "--checkpoint",
                        str(DEMO), "--debug"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "complex-valued data" in proc.stderr
    assert not (tmp_path / "o3").exists() or _listing(tmp_path / "o3") == []


def test_help_shows_defaults_and_frames(capsys):
    with pytest.raises(SystemExit):
        cli(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "FILE's own voxel frame" in text
    assert "<name>_seg.nii.gz" in text and "An output never replaces an input" in text
    import argparse

    from sam_unet.commands.segment import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    helps = {a.dest: a.help or "" for a in parser._actions}
    for dest in ("window", "normalize", "axis", "batch_size", "device", "precision", "backend",
                 "box", "variant"):
        assert "(default:" in helps[dest], dest
