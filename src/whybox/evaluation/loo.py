"""Leave-one-out retraining as ground truth for any attributor (paper §4.1, Basu et al. 2021).

Predicted: the attributor's ``scores`` (for influence: ``removal_effect`` order 1 = −(1/n)·I_up,loss,
and order 2 where the attributor offers it). Actual: L(z_test, θ̂₋ᵢ) − L(z_test, θ̂) with θ̂₋ᵢ
retrained from θ̂ without zᵢ to tight convergence. Both share the sign convention: positive = the
point supported the test prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from whybox.attribution import Attributor
from whybox.evaluation.metrics import correlations
from whybox.influence import InfluenceFunction
from whybox.objective import Objective
from whybox.zoo.train import fit, retrain, retrain_baseline


def loo_ground_truth(
    objective: Objective,
    X_test,
    y_test,
    train_idx: Sequence[int],
    tol: float = 1e-10,
    progress: bool = True,
    baseline: bool | None = None,
    max_iter: int = 5000,
    newton: torch.Tensor | None = None,
) -> torch.Tensor:
    """Actual test-loss change after removing each training point and retraining, ``[m, k]``.

    Each retraining starts from θ̂ and minimises (1/n)Σ_{j≠i}L(z_j, θ) + (w/2)‖θ‖² with L-BFGS, for at
    most ``max_iter`` iterations (a fixed budget for a model that is not at a minimum, like the
    paper's "retrained from θ̃ for 30k steps").
    ``baseline``: measure the change from a retrain with nothing removed (``zoo.retrain_baseline``,
    same optimiser and budget) rather than from θ̂. Default: when θ̂ is not stationary to the
    retraining tolerance (‖∇R(θ̂)‖ > ``tol``, ``objective.stationarity()``), the only case where
    that retrain moves θ, so the drift of the optimiser is not counted as the point's effect.
    ``max_iter``: the L-BFGS budget of every retraining (baseline included), for models that do not
    reach ``tol`` (a network without weight decay).
    ``newton``: the lower Cholesky factor of H(θ̂) (small p, e.g. ``torch.linalg.cholesky(objective.hessian())``):
    each retraining (baseline included) starts with chord-Newton steps with that matrix and finishes with L-BFGS
    (``zoo.fit``), so it reaches ``tol`` in a few gradient evaluations (for a network at a minimum, seconds per
    point where L-BFGS takes a minute and stalls short of ``tol``: ``benchmarks/bench_cnn_loo.py``). Only for retrainings that reach
    ``tol`` (a convex model): a fixed L-BFGS budget from a non-stationary θ̃ defines its own ground truth,
    so a retraining that ends above ``tol`` raises ``ValueError``.
    """
    X, y = objective.check_data(X_test, y_test, "test")
    if baseline is None:
        baseline = objective.stationarity().grad_norm > tol

    def run(remove: list[int]):
        result = retrain(objective, remove, tol=tol, max_iter=max_iter, newton=newton)
        if newton is not None and result.grad_norm > tol:
            raise ValueError(f"a retraining ended at ‖∇R‖ = {result.grad_norm:.1e} > tol = {tol:g}: newton applies only "
                             "to retrainings that reach tol (a fixed budget defines its own ground truth); drop newton")
        return result.theta

    base = objective.losses(X, y, theta=run([]) if baseline else None)
    cols = []
    for i in tqdm(list(train_idx), desc="leave-one-out retraining", disable=not progress, leave=False):
        cols.append(objective.losses(X, y, theta=run([int(i)])) - base)
    return torch.stack(cols, dim=1)


def group_ground_truth(
    objective: Objective,
    X_test,
    y_test,
    groups: Sequence[Sequence[int]],
    tol: float = 1e-10,
    progress: bool = True,
) -> torch.Tensor:
    """Actual test-loss change after removing each whole group and retraining, ``[m, len(groups)]``:
    ``zoo.retrain`` from θ̂ without the group's rows (normaliser n kept), as ``loo_ground_truth``
    does for one point, from the same baseline (θ̂, or ``retrain_baseline`` when θ̂ is not stationary
    to ``tol``)."""
    X, y = objective.check_data(X_test, y_test, "test")
    stationary = objective.stationarity().grad_norm <= tol
    base = objective.losses(X, y, theta=None if stationary else retrain_baseline(objective, tol=tol).theta)
    cols = []
    for g in tqdm(list(groups), desc="group retraining", disable=not progress, leave=False):
        theta = retrain(objective, remove=[int(i) for i in g], tol=tol).theta
        cols.append(objective.losses(X, y, theta=theta) - base)
    return torch.stack(cols, dim=1)


def select_points(attributor: Attributor, x, y, top_k: int = 100, random_k: int = 0, seed: int = 0) -> dict[str, list[int]]:
    """Training points to validate for one test point: the ``top_k`` by |score| and a random sample."""
    score = attributor.scores(x, y)[0]
    chosen = {"top": torch.argsort(score.abs(), descending=True)[:top_k].tolist()}
    if random_k:
        gen = np.random.default_rng(seed)
        chosen["random"] = sorted(gen.choice(attributor.n, size=min(random_k, attributor.n), replace=False).tolist())
    return chosen


def predicted_removal(attributor: Attributor, x, y, idx: Sequence[int], order: int = 1) -> torch.Tensor:
    """The attributor's prediction for removing each point: ``scores`` (order 1), or the
    second-order removal effect where the attributor has one (influence functions)."""
    if order == 1:
        return attributor.scores(x, y, idx)
    if not _has_second_order(attributor):
        raise ValueError(f"order {order} removal effects need an attributor with removal_effect(order=2) "
                         f"(InfluenceFunction); {attributor.name} has none: use orders=(1,)")
    return attributor.removal_effect(x, y, idx, order=order)


def _has_second_order(attributor: Attributor) -> bool:
    return callable(getattr(attributor, "removal_effect", None))


@dataclass
class ValidationRow:
    """One line of a validation table."""

    test_index: int
    subset: str
    order: int
    k: int
    pearson: float
    spearman: float
    max_abs_actual: float

    def as_dict(self) -> dict:
        return asdict(self)


def validate(
    attributor: Attributor,
    X_test,
    y_test,
    test_indices: Sequence[int],
    top_k: int = 100,
    random_k: int = 0,
    orders: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
    ground_truth: Objective | None = None,
    tol: float = 1e-10,
) -> list[ValidationRow]:
    """Compare predicted and actual leave-one-out changes for each test point.

    ``orders``: (1, 2) for influence functions by default, (1,) for other attributors.
    ``ground_truth`` is the objective retrained for the actual change (default: the attributor's
    own). ``tol`` is the gradient norm each retraining must reach.
    """
    if orders is None:
        orders = (1, 2) if _has_second_order(attributor) else (1,)
    truth = ground_truth or attributor.objective
    rows = []
    for j in tqdm(list(test_indices), desc="validating test points", disable=not progress, leave=False):
        x, y = X_test[j : j + 1], y_test[j : j + 1]
        for subset, idx in select_points(attributor, x, y, top_k, random_k, seed).items():
            actual = loo_ground_truth(truth, x, y, idx, tol=tol, progress=progress)[0]
            for order in orders:
                r, s = correlations(predicted_removal(attributor, x, y, idx, order)[0], actual)
                rows.append(ValidationRow(int(j), subset, order, len(idx), r, s, float(actual.abs().max())))
    return rows


@dataclass
class Validation:
    """Predicted vs actual (retrained) test-loss change for one test point's most influential training points."""

    test_index: int
    train_indices: list[int]
    predicted: list[float]  # the attributor's scores
    actual: list[float]  # L(z_test, θ̂ without z_i) − L(z_test, θ̂)
    pearson: float
    spearman: float


def validate_point(attributor: Attributor, X_test, y_test, test_index: int, k: int = 10, progress: bool = False,
                   tol: float = 1e-10) -> Validation:
    """Retrain without each of the ``k`` training points with the largest |score| for one test point
    and compare predicted and actual test-loss changes (what the report's scatter plot shows)."""
    x, t = X_test[test_index : test_index + 1], y_test[test_index : test_index + 1]
    chosen = select_points(attributor, x, t, top_k=k)["top"]
    predicted = attributor.scores(x, t, chosen)[0].tolist()
    actual = loo_ground_truth(attributor.objective, x, t, chosen, tol=tol, progress=progress)[0].tolist()
    if len(chosen) >= 3 and np.std(predicted) > 0 and np.std(actual) > 0:
        pearson, spearman = correlations(predicted, actual)
    else:
        pearson = spearman = float("nan")
    return Validation(test_index, chosen, predicted, actual, pearson, spearman)


def perturbation_check(
    influence: InfluenceFunction,
    x_test,
    y_test,
    train_index: int,
    step: float = 1e-3,
    tol: float = 1e-11,
) -> dict[str, float]:
    """Finite-difference check of I_pert,loss: move training input i by δ = step·u along the
    normalised pert_loss direction u, retrain, and compare the actual test-loss change with the
    prediction (1/n)·pert_loss·δ. Returns predicted, actual and their relative error."""
    obj = influence.objective
    grad_x = influence.pert_loss(x_test, y_test, [train_index])[0, 0]
    delta = step * grad_x / grad_x.norm()
    predicted = float((grad_x * delta).sum()) / obj.n
    X_new = obj.X.clone()
    X_new[train_index] += delta
    moved = obj.with_data(X_new, obj.y)
    theta = fit(moved, tol=tol).theta
    x, y = obj.check_data(x_test, y_test, "test")
    actual = float((obj.losses(x, y, theta=theta) - obj.losses(x, y)).sum())
    return {"predicted": predicted, "actual": actual, "relative_error": abs(predicted - actual) / abs(actual)}
