"""Scoring saliency maps: deletion/insertion curves (Petsiuk et al. 2018), the pointing game
(Zhang et al. 2016) and map-vs-object IoU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from whybox.saliency._common import _logits, gaussian_blur

__all__ = ["Curve", "deletion_curve", "insertion_curve", "pointing_game", "max_point", "box_distance", "iou_top_area",
           "mask_iou"]


@dataclass
class Curve:
    """fractions [S+1] of pixels removed/inserted, probs [N, S+1] of the target class, auc [N]
    (trapezoid over the fraction axis, so in [0, 1])."""

    fractions: torch.Tensor
    probs: torch.Tensor
    auc: torch.Tensor


def _check(images: torch.Tensor, heatmap: torch.Tensor, targets: torch.Tensor) -> None:
    if images.ndim != 4 or heatmap.ndim != 3 or images.shape[0] != heatmap.shape[0] or images.shape[2:] != heatmap.shape[1:]:
        raise ValueError(f"need images [N, C, H, W] and heat maps [N, H, W] of the same N, H, W; got "
                         f"{tuple(images.shape)} and {tuple(heatmap.shape)}")
    if targets.shape != (images.shape[0],):
        raise ValueError(f"need one target per image, got targets of shape {tuple(targets.shape)}")


def _order(heatmap: torch.Tensor, seed: int) -> torch.Tensor:
    """[N, H·W] pixel indices, most salient first; ties broken at random (seeded)."""
    n = heatmap.shape[0]
    flat = heatmap.reshape(n, -1).double()
    g = torch.Generator().manual_seed(seed)
    jitter = torch.rand(flat.shape, generator=g, dtype=torch.float64)
    # Lexicographic: heat first, random tie-break second.
    order = torch.argsort(jitter, dim=1)
    return order.gather(1, torch.argsort(flat.gather(1, order), dim=1, descending=True, stable=True))


def _curve(model, images, heatmap, targets, start, end, steps, seed, batch) -> Curve:
    _check(images, heatmap, targets)
    n, c, h, w = images.shape
    order = _order(heatmap, seed)
    fracs = torch.linspace(0, 1, steps + 1)
    counts = (fracs * h * w).round().long()
    probs = torch.empty(n, steps + 1)
    with torch.no_grad():
        for i in range(n):
            rank = torch.empty(h * w, dtype=torch.long)
            rank[order[i]] = torch.arange(h * w)
            # take[k, u] = 1 if pixel u is among the first counts[k] pixels: switch it from start to end.
            take = (rank[None, :] < counts[:, None]).reshape(steps + 1, 1, h, w).to(images.dtype)
            xs = start[i][None] * (1 - take) + end[i][None] * take
            out = []
            for s in range(0, steps + 1, batch):
                out.append(torch.softmax(_logits(model, xs[s:s + batch]), 1)[:, targets[i]])
            probs[i] = torch.cat(out)
    auc = torch.from_numpy(np.trapezoid(probs.numpy(), fracs.numpy(), axis=1)).float()
    return Curve(fracs, probs, auc)


def _baseline(images: torch.Tensor, kind: str, blur_sigma: float | None) -> torch.Tensor:
    if kind == "zero":
        return torch.zeros_like(images)
    if kind == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images)
    if kind == "blur":
        return gaussian_blur(images, blur_sigma if blur_sigma is not None else max(1.0, min(images.shape[-2:]) / 8))
    raise ValueError(f"baseline must be 'zero', 'mean' or 'blur', got {kind!r}")


def deletion_curve(model: nn.Module, images: torch.Tensor, heatmap: torch.Tensor, targets: torch.Tensor,
                   steps: int = 32, baseline: Literal["zero", "mean", "blur"] = "zero",
                   blur_sigma: float | None = None, seed: int = 0, batch: int = 256) -> Curve:
    """Delete pixels most-salient-first (replaced by ``baseline``, Petsiuk's default: zero) and track
    p_c. Lower AUC = the map found what the prediction depends on."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    return _curve(model, images, heatmap, targets, images, _baseline(images, baseline, blur_sigma), steps, seed, batch)


def insertion_curve(model: nn.Module, images: torch.Tensor, heatmap: torch.Tensor, targets: torch.Tensor,
                    steps: int = 32, baseline: Literal["zero", "mean", "blur"] = "blur",
                    blur_sigma: float | None = None, seed: int = 0, batch: int = 256) -> Curve:
    """Start from ``baseline`` (Petsiuk's default: a blurred copy, σ = H/8 here) and insert pixels
    most-salient-first. Higher AUC = better."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    return _curve(model, images, heatmap, targets, _baseline(images, baseline, blur_sigma), images, steps, seed, batch)


def max_point(heat: torch.Tensor) -> tuple[int, int]:
    """The maximum's position (row, col) in a heat map [H, W]. Ties (a plateau, e.g. a mask clamped at 0) go to the tied pixel whose
    neighbourhood is strongest (heat smoothed with σ = 1 px), i.e. the centre of the main blob."""
    top = heat >= heat.max() - 1e-6 * max(1.0, float(heat.abs().max()))
    if int(top.sum()) > 1:
        smooth = gaussian_blur(heat[None, None].double(), 1.0)[0, 0]
        smooth = torch.where(top, smooth, torch.full_like(smooth, -torch.inf))
        idx = int(smooth.argmax())
    else:
        idx = int(torch.nonzero(top.reshape(-1))[0])
    return idx // heat.shape[1], idx % heat.shape[1]


def pointing_game(heatmap: torch.Tensor, boxes: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """[N] bool: does the map's maximum fall inside the object box (row0, col0, row1, col1; half-open),
    grown by ``tolerance`` pixels? Ties go to the centre of the strongest blob (see ``max_point``)."""
    if heatmap.ndim != 3 or boxes.shape != (heatmap.shape[0], 4):
        raise ValueError(f"need heat maps [N, H, W] and boxes [N, 4], got {tuple(heatmap.shape)} and {tuple(boxes.shape)}")
    hits = []
    for hm, b in zip(heatmap, boxes):
        r, c = max_point(hm)
        r0, c0, r1, c1 = (float(v) for v in b)
        hits.append(r0 - tolerance <= r < r1 + tolerance and c0 - tolerance <= c < c1 + tolerance)
    return torch.tensor(hits)


def box_distance(point: tuple[int, int], box) -> int:
    """How many pixels a (row, col) lies outside a box (row0, col0, row1, col1; half-open): 0 inside,
    else the larger of the row and column gaps (``pointing_game`` with ``tolerance`` ≥ this is a hit)."""
    r, c = point
    r0, c0, r1, c1 = (int(v) for v in box)
    return max(r0 - r, 0, r - (r1 - 1), c0 - c, c - (c1 - 1))


def mask_iou(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """[N] IoU of two boolean masks [N, H, W]."""
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {tuple(pred.shape)} vs {tuple(truth.shape)}")
    pred, truth = pred.bool(), truth.bool()
    inter = (pred & truth).sum(dim=(1, 2)).float()
    union = (pred | truth).sum(dim=(1, 2)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_top_area(heatmap: torch.Tensor, truth: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """[N] IoU between each map's top-k pixels (k = the object's own area) and the object mask —
    a threshold-free comparison that treats every method alike."""
    if heatmap.shape != truth.shape:
        raise ValueError(f"heat maps and object masks differ in shape: {tuple(heatmap.shape)} vs {tuple(truth.shape)}")
    n = heatmap.shape[0]
    order = _order(heatmap, seed)
    k = truth.reshape(n, -1).sum(1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand(n, -1).contiguous())
    pred = (rank < k[:, None]).reshape(heatmap.shape)
    return mask_iou(pred, truth)
