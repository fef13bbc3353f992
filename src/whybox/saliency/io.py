"""Reading a user's image, and writing explanation PNGs (models are read by ``whybox.io.load_model``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from whybox.saliency._common import SaliencyResult, display_image, overlay
from whybox.saliency.metrics import max_point

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["load_image", "result_figures", "save_result"]


def load_image(path: os.PathLike | str, channels: int = 3, size: tuple[int, int] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """Read an image file as a [1, C, H, W] float32 tensor in [0, 1], then (x − mean) / std per channel.
    ``channels``: 1 (grayscale) or 3 (RGB); ``size``: optional (H, W) resize."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an image file")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None:
                im = im.resize((int(size[1]), int(size[0])), Image.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except UnidentifiedImageError as err:
        raise ValueError(f"{path} is not an image file that Pillow can read (PNG, JPEG, BMP, ...)") from err
    x = torch.from_numpy(a.copy())
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) not in (1, channels):
            raise ValueError(f"--{name} needs 1 or {channels} values, got {len(v)}")
    if mean is not None:
        x = x - torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    if std is not None:
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        if (s <= 0).any():
            raise ValueError("std values must be positive")
        x = x / s
    return x


def _pct(p: torch.Tensor) -> str:
    return f"{100 * float(p):.1f} %"


def result_figures(result: SaliencyResult, i: int = 0, box: Sequence[int] | None = None,
                   size: tuple[float, float] = (4.8, 4.0)) -> dict[str, Figure]:
    """One matplotlib ``Figure`` per panel of image ``i``: original, heatmap, overlay, and for
    meaningful perturbation also mask and perturbed. Each has a title; the maps (heat map, overlay,
    mask) have a colour bar; ``box`` (row0, col0, row1, col1; half-open), when given, is drawn on
    every panel, and the heat map's maximum (the pointing-game point) is marked on the maps.
    Built with ``matplotlib.figure.Figure``: no pyplot, no global backend."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not 0 <= i < len(result):
        raise ValueError(f"i must index an image of the result (0..{len(result) - 1}), got {i}")
    c = int(result.targets[i])
    heat = result.heatmap[i].detach().float().cpu()
    lo, hi = float(heat.min()), float(heat.max())
    hi = max(hi, lo + 1e-12)
    peak = max_point(heat)
    figures: dict[str, Figure] = {}

    def panel(name: str, image: np.ndarray, title: str, cmap: str | None = None, vmin=None, vmax=None,
              bar: str | None = None, mark: bool = False) -> None:
        fig = Figure(figsize=size, dpi=100, layout="constrained")
        ax = fig.add_subplot()
        shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if box is not None:
            r0, c0, r1, c1 = (float(v) for v in box)
            ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="white",
                                   linewidth=1.5, linestyle="--", label="object box"))
        if mark:
            ax.plot([peak[1]], [peak[0]], marker="+", color="white", markersize=12, markeredgewidth=2,
                    label="maximum")
        if bar is not None:
            mappable = shown if cmap is not None else ScalarMappable(Normalize(lo, hi), colormaps["jet"])
            fig.colorbar(mappable, ax=ax, shrink=0.85, label=bar)
        figures[name] = fig

    method = result.method
    boxed = " (dashed: object box)" if box is not None else ""
    panel("original", display_image(result.images[i]),
          f"input: class {c}, p = {_pct(result.prob_before[i])}{boxed}")
    panel("heatmap", heat.numpy(), f"heat map ({method}), class {c}; +: maximum", cmap="jet", vmin=lo, vmax=hi,
          bar="importance for the class", mark=True)
    panel("overlay", np.clip(overlay(result.images[i], result.heatmap[i]), 0, 1),
          f"heat map over the input ({method}); +: maximum", bar="importance for the class", mark=True)
    mask = getattr(result, "mask", None)
    if mask is not None:
        panel("mask", mask[i].detach().float().cpu().numpy(), f"mask m (1 = keep, 0 = {result.perturbation})",
              cmap="gray", vmin=0.0, vmax=1.0, bar="m", mark=True)
        # the perturbed image on the original's display scale
        x, pert = result.images[i].detach().float(), result.perturbed[i].detach().float()
        x_lo, x_hi = float(x.min()), float(x.max())
        shown = ((pert - x_lo) / (x_hi - x_lo if x_hi > x_lo else 1.0)).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        if shown.shape[2] == 1:
            shown = np.repeat(shown, 3, axis=2)
        panel("perturbed", shown[..., :3], f"perturbed: p(class {c}) {_pct(result.prob_before[i])} → "
              f"{_pct(result.prob_after[i])}")
    return figures


def save_result(result: SaliencyResult, out_dir: os.PathLike | str, i: int = 0, prefix: str = "",
                box: Sequence[int] | None = None, size: tuple[float, float] = (4.8, 4.0)) -> dict[str, Path]:
    """Write the panels of :func:`result_figures` as PNGs of ``size`` inches at 100 dpi
    (480 × 400 px by default): original, heatmap, overlay, and for meaningful perturbation also
    mask and perturbed. Returns {panel: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name, fig in result_figures(result, i, box, size).items():
        files[name] = out / f"{prefix}{name}.png"
        fig.savefig(files[name], dpi=100)
    return files
