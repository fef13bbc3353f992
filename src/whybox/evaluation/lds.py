"""Linear datamodeling score (LDS; Park et al. 2023, "TRAK"): how well an attributor's scores,
summed over a training subset, rank the test loss of models retrained on random subsets.

For M random subsets S_j (each keeps a fraction ``alpha`` of the training points), the model is
retrained without the complement (``zoo.retrain``: weights 0, normaliser n and weight decay kept —
the same removal whybox's influence linearises). With whybox's sign (positive = supports), the
first-order prediction of the test-loss change from removing the complement is Σ_{i∉S_j} τ_i, so

    LDS(z) = Spearman_j( Σ_{i∉S_j} τ_i(z),  L(z; θ_{S_j}) ),    reported as the mean over test points.

Retraining is the expensive part; ``subset_ground_truth`` caches it on disk, keyed by everything it
depends on, so a table regenerates in seconds once the retraining has been done.

A network trained for a few epochs of Adam or SGD is not at a minimum, and "retrain without the
complement" then means repeating *that* training on the subset: pass the recipe as ``train``
(``mask -> θ``, e.g. the same seed, optimiser and epochs on the kept rows) and name it in ``recipe``
so the cache never mixes two recipes. Without ``train`` the model is refitted from θ̂ by L-BFGS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from whybox.attribution import Attributor
from whybox.attribution.tracin import flat_theta
from whybox.evaluation.cache import cached_rows, problem_key
from whybox.objective import Objective
from whybox.zoo.train import retrain


def random_subsets(n: int, count: int, alpha: float = 0.5, seed: int = 0) -> np.ndarray:
    """``[count, n]`` boolean masks, each keeping ``round(alpha·n)`` training points."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if count < 3:
        raise ValueError(f"LDS needs at least 3 subsets for a rank correlation, got {count}")
    rng = np.random.default_rng(seed)
    keep = max(1, int(round(alpha * n)))
    masks = np.zeros((count, n), dtype=bool)
    for j in range(count):
        masks[j, rng.choice(n, size=keep, replace=False)] = True
    return masks


Recipe = Callable[[np.ndarray], "torch.Tensor | Mapping[str, torch.Tensor]"]


def subset_ground_truth(
    objective: Objective,
    X_test,
    y_test,
    masks: np.ndarray,
    tol: float = 1e-8,
    cache: str | Path | None = None,
    progress: bool = True,
    train: Recipe | None = None,
    recipe: str = "",
    grad_norms: list | None = None,
) -> torch.Tensor:
    """``[M, m]`` test losses of the model retrained on each subset (rows of ``masks``); with
    ``cache`` (a folder) finished retrainings are kept on disk (``evaluation.cache``).
    ``grad_norms`` (a list, default retraining only): receives the ``[M]`` values of ‖∇R‖ the
    retrained models reached, kept in the cache with their losses.

    ``train``: your training recipe, called with a boolean mask ``[n]`` of the rows to keep and
    returning the trained parameters (a flat θ of ``objective.p`` values, or the model's
    ``state_dict()``); default: ``zoo.retrain`` from θ̂ to ``‖∇R‖ ≤ tol``. ``recipe``: a name for
    it that enters the cache key (required with ``train`` and ``cache``; change it when the
    recipe changes)."""
    X, y = objective.check_data(X_test, y_test, "test")
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != objective.n:
        raise ValueError(f"masks must have shape [M, n={objective.n}], got {masks.shape}")
    if train is not None and cache is not None and not recipe:
        raise ValueError("with train= and cache=, name the training recipe (recipe='adam-3-epochs-seed0', say) "
                         "so cached retrainings of another recipe are never reused")

    if grad_norms is not None and train is not None:
        raise ValueError("grad_norms= is recorded for the default retraining only, not with train=")

    def losses_without_complement(j: int) -> np.ndarray:
        if train is None:
            res = retrain(objective, remove=np.flatnonzero(~masks[j]).tolist(), tol=tol)
            theta = res.theta
        else:
            theta = flat_theta(objective, train(masks[j].copy()), f"train(mask {j})")
        with torch.no_grad():
            losses = objective.losses(X, y, theta=theta).cpu().numpy()
        return losses if grad_norms is None else np.append(losses, res.grad_norm)

    how = ("recipe", recipe) if train is not None else (tol,)  # the L-BFGS key is the one caches already hold
    prefix = "lds-" if grad_norms is None else "lds-norms-"  # rows with ‖∇R‖ appended
    name = prefix + problem_key(objective, X, y, np.packbits(masks), masks.shape, *how)
    rows = cached_rows(cache, name, len(masks), len(X) + (grad_norms is not None), losses_without_complement,
                       "retraining on subsets", progress)
    if grad_norms is not None:
        grad_norms.extend(rows[:, -1].tolist())
        rows = rows[:, :-1]
    return torch.from_numpy(np.ascontiguousarray(rows))


@dataclass
class LDSResult:
    """Per-test-point LDS and its mean."""

    per_test: np.ndarray  # [m] Spearman correlations
    mean: float
    subsets: int
    alpha: float


def lds_from_scores(scores, masks: np.ndarray, actual_losses) -> np.ndarray:
    """``[m]`` LDS per test point from scores ``[m, n]``, masks ``[M, n]`` and actual losses ``[M, m]``."""
    S = scores.detach().cpu().numpy() if torch.is_tensor(scores) else np.asarray(scores, dtype=float)
    A = actual_losses.detach().cpu().numpy() if torch.is_tensor(actual_losses) else np.asarray(actual_losses, dtype=float)
    predicted = (~np.asarray(masks, dtype=bool)).astype(float) @ S.T  # [M, m]: Σ over the removed points
    return np.array([stats.spearmanr(predicted[:, t], A[:, t])[0] for t in range(S.shape[0])])


def lds(
    attributor: Attributor,
    X_test,
    y_test,
    subsets: int = 50,
    alpha: float = 0.5,
    seed: int = 0,
    tol: float = 1e-8,
    cache: str | Path | None = None,
    progress: bool = True,
    train: Recipe | None = None,
    recipe: str = "",
) -> LDSResult:
    """The linear datamodeling score of ``attributor`` on these test points (see the module doc;
    ``train`` and ``recipe`` as in ``subset_ground_truth``)."""
    obj = attributor.objective
    masks = random_subsets(obj.n, subsets, alpha, seed)
    actual = subset_ground_truth(obj, X_test, y_test, masks, tol=tol, cache=cache, progress=progress,
                                 train=train, recipe=recipe)
    per_test = lds_from_scores(attributor.scores(X_test, y_test), masks, actual)
    return LDSResult(per_test, float(np.nanmean(per_test)), subsets, alpha)
