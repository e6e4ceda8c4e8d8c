"""Draw the figures of docs/guide.md from the bundled MNI152 T1 and demo model.

    python docs/make_figures.py            # writes docs/figures/box_conventions.png

The box figure shows, on real slices: which array axis is x and which is y on an axial slice,
what a 3D box covers, and that a box is a prompt (the mask is not cut to it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SLICE = 90                      # the axial slice shown (MNI152 is (X, Y, Z) = (197, 233, 189))
BOX_2D = (40, 40, 98, 190)      # (x0, y0, x1, y1) on that slice
BOX_3D = (40, 40, 70, 98, 190, 110)   # (x0, y0, z0, x1, y1, z1)


def _rectangle(ax, x0, y0, x1, y1, color, **kw):
    """An inclusive voxel box drawn around its voxels' edges."""
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                           edgecolor=color, linewidth=2, **kw))


def _axes_labels(ax, horizontal: str, vertical: str) -> None:
    ax.set_xlabel(horizontal, fontsize=10)
    ax.set_ylabel(vertical, fontsize=10)
    ax.tick_params(labelsize=8)


def box_conventions(out: Path) -> dict:
    """The three-panel box figure; returns the numbers it quotes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib

    import sam_unet
    from sam_unet.data.mni152 import paths

    t1_path, _ = paths()
    vol = np.asarray(nib.as_closest_canonical(nib.load(t1_path)).dataobj)
    demo = Path(sam_unet.__file__).resolve().parent / "assets" / "demo_tiny.pt"
    engine = sam_unet.Engine.from_checkpoint(demo, device="cpu")
    slab = np.ascontiguousarray(vol[:, :, SLICE:SLICE + 1])
    mask = engine.segment(slab, boxes={0: BOX_2D})[:, :, 0]
    x0, y0, x1, y1 = BOX_2D
    inside = int(mask[x0:x1 + 1, y0:y1 + 1].sum())
    total = int(mask.sum())

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    # imshow(a.T, origin="lower"): array axis 0 runs to the right, axis 1 upwards.
    image = vol[:, :, SLICE].T

    ax = axes[0]
    ax.imshow(image, cmap="gray", origin="lower", interpolation="nearest")
    _rectangle(ax, x0, y0, x1, y1, "#ffd400")
    ax.annotate(f"(x0, y0) = ({x0}, {y0})", (x0, y0), (x0 + 8, y0 - 22), color="#ffd400",
                fontsize=9, arrowprops={"arrowstyle": "->", "color": "#ffd400"})
    ax.annotate(f"(x1, y1) = ({x1}, {y1})", (x1, y1), (x1 + 8, y1 + 14), color="#ffd400",
                fontsize=9, arrowprops={"arrowstyle": "->", "color": "#ffd400"})
    ax.set_title(f"2D box (x0, y0, x1, y1) on axial slice vol[:, :, {SLICE}]", fontsize=11)
    _axes_labels(ax, "x = array axis 0 (first remaining axis)",
                 "y = array axis 1 (second remaining axis)")

    ax = axes[1]
    bx0, by0, bz0, bx1, by1, bz1 = BOX_3D
    y_mid = (by0 + by1) // 2
    ax.imshow(vol[:, y_mid, :].T, cmap="gray", origin="lower", interpolation="nearest")
    for lo, hi in ((-0.5, bz0 - 0.5), (bz1 + 0.5, vol.shape[2] - 0.5)):
        ax.axhspan(lo, hi, color="#3a7bd5", alpha=0.35, linewidth=0)
    _rectangle(ax, bx0, bz0, bx1, bz1, "#ffd400")
    ax.text(4, vol.shape[2] - 8, "slices outside z0..z1: not computed, mask 0",
            color="white", fontsize=9, va="top")
    ax.text(bx0, bz0 - 3, f"z0 = {bz0}", color="#ffd400", fontsize=9, va="top",
            bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
    ax.text(bx0, bz1 + 3, f"z1 = {bz1}", color="#ffd400", fontsize=9, va="bottom",
            bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0})
    ax.set_title(f"3D box (x0, y0, z0, x1, y1, z1), seen at y = {y_mid}", fontsize=11)
    _axes_labels(ax, "x = array axis 0", "z = array axis 2 (the slicing axis)")

    ax = axes[2]
    ax.imshow(image, cmap="gray", origin="lower", interpolation="nearest")
    overlay = np.ma.masked_where(mask.T == 0, mask.T)
    ax.imshow(overlay, cmap=matplotlib.colors.ListedColormap(["#ff2a2a"]), alpha=0.55,
              origin="lower", interpolation="nearest", vmin=0, vmax=1)
    _rectangle(ax, x0, y0, x1, y1, "#ffd400")
    ax.set_title("a box is a prompt, not a crop", fontsize=11)
    ax.text(0.5, -0.13, f"{total - inside} of {total} mask pixels lie outside the box: the "
            "whole slice\ngoes through the model, the box only says which structure",
            transform=ax.transAxes, ha="center", va="top", fontsize=9)
    _axes_labels(ax, "x = array axis 0", "y = array axis 1")

    fig.suptitle("Box prompts name array axes: x, y, z = axes 0, 1, 2 of the volume; "
                 "corners inclusive", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return {"mask_pixels": total, "outside_box": total - inside}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", default=str(HERE / "figures"), help="output folder")
    args = parser.parse_args(argv)
    numbers = box_conventions(Path(args.out) / "box_conventions.png")
    print(f"wrote {Path(args.out) / 'box_conventions.png'}: {numbers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
