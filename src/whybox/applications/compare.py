"""Understanding model behaviour (Koh & Liang 2017, §5.1, Fig 4): two models get the same test point
right, but lean on different training points.

For each model (any ``Attributor``) and test point, the training points' scores (higher = more
helpful; for influence functions −I_up,loss/n, the predicted rise of the test loss if the point were
removed) are set against their squared input distance ‖x − x_test‖². An RBF-kernel model acts like a
soft nearest-neighbour rule, so the *size* of its influence falls off with distance; a model on
learned features does not. The fall-off is measured by the Spearman (rank) and Pearson correlations
between |score| and ‖x − x_test‖² (strongly negative = influence is local in input space).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import stats

from whybox.attribution import Attributor


@dataclass
class PointComparison:
    """All models' scores for one test point, with how they relate to input distance."""

    test_index: int
    label: int
    distances: np.ndarray  # [n] squared distance of every training input to the test input
    scores: dict[str, np.ndarray]  # model -> [n] scores (higher = more helpful)
    spearman: dict[str, float]  # model -> Spearman(|score|, distance²)
    pearson: dict[str, float]  # model -> Pearson(|score|, distance²)
    top_helpful: dict[str, list[int]]  # model -> training indices, most helpful first
    helpful_same_label: dict[str, float]  # fraction of the top-10 helpful points sharing the test label


@dataclass
class Comparison:
    """Per test point comparisons and their summary over test points."""

    points: list[PointComparison]
    names: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per model: mean and std over test points of both correlations and of the same-label share."""
        out = {}
        for name in self.names:
            sp = np.array([p.spearman[name] for p in self.points])
            pe = np.array([p.pearson[name] for p in self.points])
            same = np.array([p.helpful_same_label[name] for p in self.points])
            out[name] = {"spearman_mean": float(sp.mean()), "spearman_std": float(sp.std()),
                         "pearson_mean": float(pe.mean()), "pearson_std": float(pe.std()),
                         "top10_helpful_same_label": float(same.mean()), "test_points": len(sp)}
        return out


def _flat(X) -> np.ndarray:
    a = X.detach().cpu().numpy() if torch.is_tensor(X) else np.asarray(X)
    return a.reshape(len(a), -1).astype(np.float64)


def compare_models(
    attributors: Mapping[str, Attributor],
    X_train,
    y_train,
    X_test,
    y_test,
    test_indices: Sequence[int],
    top: int = 10,
) -> Comparison:
    """Score every training point for each test point with each attributor and relate the scores to
    the squared distance ‖x − x_test‖² between inputs (``X_train``/``X_test`` as the models see them,
    or any other representation of the same rows to measure distance in).

    Args:
        attributors: name -> fitted ``Attributor`` (``scores(X, y) -> [m, n]``, higher = more helpful).
            Each is queried with its own model's view of the test rows, so pass the rows the
            attributor expects as ``X_test`` (all models here take the same inputs).
        test_indices: rows of ``(X_test, y_test)`` to explain.
        top: how many most-helpful training points to keep per model and test point.
    """
    if not attributors:
        raise ValueError("give at least one attributor to compare")
    bad = [k for k, a in attributors.items() if not isinstance(a, Attributor)]
    if bad:
        raise TypeError(f"{bad} do not follow the Attributor protocol (scores, self_scores)")
    Xtr, Xte = _flat(X_train), _flat(X_test)
    ytr, yte = np.asarray(y_train).reshape(-1), np.asarray(y_test).reshape(-1)
    if Xtr.shape[1] != Xte.shape[1] or len(Xtr) != len(ytr) or len(Xte) != len(yte):
        raise ValueError(f"shapes do not match: X_train {Xtr.shape}, y_train {ytr.shape}, X_test {Xte.shape}, y_test {yte.shape}")
    idx = [int(i) for i in test_indices]
    if not idx or min(idx) < 0 or max(idx) >= len(Xte):
        raise ValueError(f"test_indices must be in [0, {len(Xte)}), got {idx[:5]}")
    Xq = X_test[idx] if torch.is_tensor(X_test) else torch.as_tensor(np.asarray(X_test)[idx])
    yq = y_test[idx] if torch.is_tensor(y_test) else torch.as_tensor(yte[idx])
    all_scores = {k: torch.as_tensor(a.scores(Xq, yq)).detach().cpu().numpy() for k, a in attributors.items()}
    for k, s in all_scores.items():
        if s.shape != (len(idx), len(Xtr)):
            raise ValueError(f"attributor {k!r} returned scores of shape {s.shape}, expected {(len(idx), len(Xtr))}")
    points = []
    for row, t in enumerate(idx):
        d2 = ((Xtr - Xte[t]) ** 2).sum(1)
        sc = {k: s[row] for k, s in all_scores.items()}
        order = {k: np.argsort(-v) for k, v in sc.items()}
        points.append(PointComparison(
            test_index=t, label=int(yte[t]), distances=d2, scores=sc,
            spearman={k: float(stats.spearmanr(np.abs(v), d2)[0]) for k, v in sc.items()},
            pearson={k: float(stats.pearsonr(np.abs(v), d2)[0]) for k, v in sc.items()},
            top_helpful={k: o[:top].tolist() for k, o in order.items()},
            helpful_same_label={k: float((ytr[o[:10]] == yte[t]).mean()) for k, o in order.items()},
        ))
    return Comparison(points=points, names=list(attributors))


def plot_comparison(
    point: PointComparison,
    y_train,
    train_images: np.ndarray,
    test_image: np.ndarray,
    path,
    image_shape: Sequence[int] = (8, 8),
    class_names: Optional[Sequence[str]] = None,
) -> None:
    """PNG in the layout of the paper's Fig 4: per model, the score vs squared-distance scatter
    (same label as the test point green, other label red) and its two most helpful training images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = tuple(image_shape)[-2:]
    ytr = np.asarray(y_train).reshape(-1)
    name_of = (lambda c: class_names[c]) if class_names else str  # noqa: E731
    names = list(point.scores)
    fig = plt.figure(figsize=(10, 2.9 * len(names)))
    grid = fig.add_gridspec(len(names), 5, width_ratios=[3, 0.1, 1, 1, 1])
    same = ytr == point.label
    for r, name in enumerate(names):
        ax = fig.add_subplot(grid[r, 0])
        s = point.scores[name]
        ax.scatter(point.distances[~same], s[~same], s=8, c="tab:red", alpha=0.6,
                   label=f"label {name_of(1 - point.label) if len(set(ytr)) == 2 else 'other'}")
        ax.scatter(point.distances[same], s[same], s=8, c="tab:green", alpha=0.6, label=f"label {name_of(point.label)}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("‖x − x_test‖²")
        ax.set_ylabel("score (−I_up,loss/n; > 0 helpful)")
        ax.set_title(f"{name}: Spearman(|score|, dist²) = {point.spearman[name]:+.2f}, "
                     f"Pearson = {point.pearson[name]:+.2f}", fontsize=8)
        ax.legend(fontsize=7)
        panels = [(test_image, f"test #{point.test_index} ({name_of(point.label)})")]
        panels += [(train_images[i], f"helpful #{j + 1}: train {i} ({name_of(int(ytr[i]))})")
                   for j, i in enumerate(point.top_helpful[name][:2])]
        for c, (img, title) in enumerate(panels):
            a = fig.add_subplot(grid[r, 2 + c])
            a.imshow(np.asarray(img).reshape(shape), cmap="gray_r")
            a.set_title(title, fontsize=7)
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
