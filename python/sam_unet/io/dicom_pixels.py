"""DICOM inputs, second pass: the pixel data of the chosen series' images, decoded (compressed
transfer syntaxes through pydicom's plugins), stacked in slice order, with each image's
RescaleSlope/RescaleIntercept applied (dtype rules in io/dicom.py's docstring).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam_unet.io.dicom_scan import (
    COMPRESSED_EXTRA,
    DicomError,
    ImageHeader,
    SeriesFiles,
    Source,
    import_pydicom,
)


def _decode(ds: Any, name: str) -> np.ndarray:
    """The stored pixel values of a full dataset, (frames, rows, columns) or (rows, columns)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(f"{name}: the image has no pixel data; export the series again")
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # noqa: BLE001 - pydicom's plugins raise many types
        reason = " ".join(str(exc).split())
        if tsuid is not None and tsuid.is_compressed:
            plugins = _decoder_plugins(tsuid)
            if not plugins:
                raise DicomError(
                    f"{name}: pixel data compressed as {tsuid.name}, and no installed decoder "
                    f"reads it; install the decoders: {COMPRESSED_EXTRA}") from exc
            raise DicomError(
                f"{name}: cannot decode pixel data compressed as {tsuid.name} with the "
                f"installed decoders ({', '.join(plugins)}: {reason}); install more decoders "
                f"({COMPRESSED_EXTRA}) or, if they are installed, the file is damaged: export "
                "it again") from exc
        raise DicomError(f"{name}: cannot read the pixel data ({type(exc).__name__}: {reason});"
                         " the file is truncated or damaged: copy or export it again") from exc


def _decoder_plugins(tsuid: Any) -> tuple[str, ...]:
    """Names of the installed pydicom plugins that decode ``tsuid`` (empty if none)."""
    try:
        from pydicom.pixels import get_decoder

        return tuple(get_decoder(tsuid).available_plugins)
    except Exception:  # noqa: BLE001 - no decoder class at all for this transfer syntax
        return ()


def _result_dtype(stored: np.dtype, images: list[ImageHeader], lo: float, hi: float) -> np.dtype:
    slopes = np.array([im.slope for im in images])
    inters = np.array([im.intercept for im in images])
    if stored.kind in "iu" and np.all(slopes == np.round(slopes)) and \
            np.all(inters == np.round(inters)):
        candidates = [(lo * s + b, hi * s + b) for s, b in zip(slopes, inters, strict=True)]
        vmin = min(min(a, b) for a, b in candidates)
        vmax = max(max(a, b) for a, b in candidates)
        for dt in (np.int16, np.int32):
            info = np.iinfo(dt)
            if info.min <= vmin and vmax <= info.max:
                return np.dtype(dt)
    return np.dtype(np.float32)


def read_pixels(src: Source, series: SeriesFiles, order: list[int]) -> np.ndarray:
    """The slices' modality values, stacked (n, rows, columns) in slice order."""
    pydicom = import_pydicom()
    images = [series.images[i] for i in order]
    by_instance: dict[int, list[int]] = {}
    for k, im in enumerate(images):
        by_instance.setdefault(im.instance, []).append(k)
    raw: np.ndarray | None = None
    for inst, ks in by_instance.items():
        name = series.names[inst]
        shown = src.display(name)
        try:
            with src.open(name) as fh:
                ds = pydicom.dcmread(fh)
        except Exception as exc:  # noqa: BLE001 - damaged after the header pass
            raise DicomError(f"{shown}: cannot read this DICOM file ({type(exc).__name__}: "
                             f"{exc}); copy or export it again") from exc
        if "ModalityLUTSequence" in ds:
            raise DicomError(f"{shown}: the image maps its values through a Modality LUT, which "
                             "is not supported; convert the series (e.g. dcm2niix) first")
        pixels = _decode(ds, shown)
        for k in ks:
            im = images[k]
            frame = pixels if im.frame is None else (pixels if pixels.ndim == 2
                                                     else pixels[im.frame])
            if frame.shape != im.shape:
                raise DicomError(f"{shown}: pixel data of shape {frame.shape} does not match "
                                 f"Rows x Columns {im.shape}; the file is damaged")
            if raw is None:  # native byte order: what every later step reads fastest
                raw = np.empty((len(images), *im.shape), dtype=frame.dtype.newbyteorder("="))
            elif frame.dtype != raw.dtype:
                raw = raw.astype(np.result_type(raw.dtype, frame.dtype))
            raw[k] = frame
    assert raw is not None
    if all(im.slope == 1 and im.intercept == 0 for im in images):
        return raw
    dtype = _result_dtype(raw.dtype, images, float(raw.min()), float(raw.max()))
    out = np.empty(raw.shape, dtype=dtype)
    compute = np.float64 if dtype.kind == "f" else np.int64
    for k, im in enumerate(images):
        if dtype.kind == "f":
            out[k] = raw[k].astype(compute) * im.slope + im.intercept
        else:
            out[k] = raw[k].astype(compute) * int(round(im.slope)) + int(round(im.intercept))
    return out
