"""DICOM inputs: the geometry of one series' images, checked: one size, orientation and pixel
spacing; ordered along the slice normal; no shared positions, no missing slices, regular
spacing, positions on one line. Gantry tilt is kept as the true slice step (a sheared affine).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from sam_unet.io.dicom_scan import DicomError, ImageHeader

# Positions in DICOM are decimal strings often rounded to 0.01 mm or so.
_POS_TOL_MM = 0.02
_REL_TOL = 0.01


@dataclass
class Geometry:
    """A checked series: its images' order along the normal, its voxel -> LPS affine, and the
    gantry tilt kept in the affine (degrees, 0 when none)."""

    order: list[int]  # indices into the series' images, in slice order
    affine_lps: np.ndarray
    tilt_degrees: float


def _same(values: list[np.ndarray], atol: float) -> bool:
    return all(np.allclose(v, values[0], atol=atol) for v in values[1:])


def series_geometry(where: str, images: list[ImageHeader]) -> Geometry:
    """Check one series' images and give their order and affine; DicomError (naming ``where``)
    for mixed sizes, orientations or spacings, shared positions, missing slices, irregular
    spacing and positions off one line."""
    shapes = Counter(im.shape for im in images)
    if len(shapes) > 1:
        sizes = ", ".join(f"{n} of {r}x{c}" for (r, c), n in shapes.most_common())
        raise DicomError(f"{where}: images of different sizes in one series ({sizes}); export "
                         "the series again or choose another one")
    orients = [im.orientation for im in images]
    if not _same(orients, 1e-4):
        kinds = Counter(tuple(np.round(o, 3)) for o in orients)
        raise DicomError(
            f"{where}: images with {len(kinds)} different orientations (ImageOrientationPatient) "
            "in one series (a localizer or a multi-planar series?); export each plane as its "
            "own series")
    spacings = [np.asarray(im.spacing) for im in images]
    if not _same(spacings, 1e-4):
        raise DicomError(f"{where}: images with different PixelSpacing in one series; export "
                         "the series again")
    row_cos, col_cos = orients[0][:3], orients[0][3:]
    if (abs(np.linalg.norm(row_cos) - 1) > 1e-2 or abs(np.linalg.norm(col_cos) - 1) > 1e-2
            or abs(row_cos @ col_cos) > 1e-2):
        raise DicomError(f"{where}: ImageOrientationPatient {orients[0].tolist()} is not two "
                         "orthogonal unit vectors; the header is damaged")
    row_cos, col_cos = row_cos / np.linalg.norm(row_cos), col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    positions = np.stack([im.position for im in images])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    depth, positions = depth[order], positions[order]
    n = len(images)
    dr, dc = float(spacings[0][0]), float(spacings[0][1])
    if dr <= 0 or dc <= 0:
        raise DicomError(f"{where}: PixelSpacing {[dr, dc]} must be positive; the header is "
                         "damaged")
    if n == 1:
        step = normal * (images[0].thickness or 1.0)
        tilt = 0.0
    else:
        gaps = np.diff(depth)
        dup = np.flatnonzero(gaps < 1e-3)
        if len(dup):
            raise DicomError(
                f"{where}: {len(dup) + 1} or more images share a slice position (e.g. "
                f"{depth[dup[0]]:.2f} mm along the normal): several echoes, phases or time points "
                "in one series; split them into separate series (one volume each)")
        typical = float(np.median(gaps))
        tol = _POS_TOL_MM + _REL_TOL * typical
        bad = np.flatnonzero(np.abs(gaps - typical) > tol)
        if len(bad):
            k = int(bad[0])
            ratio = gaps[k] / typical
            if all(abs(gaps[b] / typical - round(gaps[b] / typical)) * typical <= tol
                   and gaps[b] > typical for b in bad):
                missing = int(sum(round(gaps[b] / typical) - 1 for b in bad))
                raise DicomError(
                    f"{where}: {missing} slice(s) missing: the gap between slices {k} and "
                    f"{k + 1} (in position order) is {gaps[k]:.3f} mm, {ratio:.1f} times the "
                    f"spacing {typical:.3f} mm; copy or export the whole series again")
            raise DicomError(
                f"{where}: irregular slice spacing: gaps from {gaps.min():.3f} to "
                f"{gaps.max():.3f} mm (median {typical:.3f} mm); resample the series to a "
                "regular grid (e.g. convert it with dcm2niix) first")
        step = (positions[-1] - positions[0]) / (n - 1)
        residual = positions - (positions[0] + np.arange(n)[:, None] * step)
        if np.abs(residual).max() > tol:
            raise DicomError(
                f"{where}: slice positions do not lie on one line (off by up to "
                f"{np.abs(residual).max():.3f} mm); resample the series (e.g. dcm2niix) first")
        along = float(step @ normal)
        across = float(np.linalg.norm(step - along * normal))
        if across * (n - 1) > tol:  # gantry tilt: keep the true step (a sheared affine)
            tilt = float(np.degrees(np.arctan2(across, along)))
        else:  # rounding of the positions only: the step is along the normal
            step, tilt = normal * along, 0.0
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dc
    affine[:3, 1] = col_cos * dr
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    return Geometry([int(i) for i in order], affine, tilt)
