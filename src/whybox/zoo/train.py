"""Full-batch L-BFGS to a verified optimum, warm-started retraining for ground truth, and a few epochs
of Adam for networks explained with Gauss-Newton curvature."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from whybox.losses import LossFn
from whybox.objective import Objective, WeightDecay


@dataclass
class TrainResult:
    """θ after training, with the evidence that it is a minimum."""

    theta: torch.Tensor
    grad_norm: float  # ‖∇R(θ)‖ at the end
    iterations: int
    risk: float

    @property
    def converged(self) -> bool:
        return self.grad_norm < 1e-6


def fit(
    objective: Objective,
    theta0: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 5000,
    checkpoints: list | None = None,
    newton: torch.Tensor | None = None,
) -> TrainResult:
    """Minimise R(θ) = (1/n)Σ wᵢL(zᵢ, θ) + ½Σⱼdⱼθⱼ² with full-batch L-BFGS (strong Wolfe).

    Starts from ``theta0`` (default θ̂ of the objective) and stops when ‖∇R‖ ≤ ``tol`` or after
    ``max_iter`` iterations. The objective and model are not modified. ``checkpoints``: a list
    that receives a copy of θ at the start of every round of up to 100 L-BFGS iterations (for
    ``whybox.TracIn``, learning rate 1; few rounds, so TracIn from an SGD loop is closer to the paper).
    ``newton``: the lower Cholesky factor of the Hessian at nearby parameters (a warm start after a
    small change of the data): first take Newton steps θ −= M⁻¹∇R with that fixed matrix while each
    cuts ‖∇R‖ (``newton_steps``), then L-BFGS from there if ``tol`` is not yet reached.
    """
    if newton is not None and checkpoints is None:
        start = newton_steps(objective, newton, theta0, weights, tol)
        if start.grad_norm <= tol:
            return start
        theta0 = start.theta
    theta = (objective.theta if theta0 is None else theta0).detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta], lr=1, max_iter=min(100, max_iter), history_size=50, line_search_fn="strong_wolfe",
        # torch stops on max|∂R/∂θⱼ| ≤ tolerance_grad; ‖∇R‖ ≤ √p·max|∂R/∂θⱼ|, so this stops only at ‖∇R‖ ≤ tol
        tolerance_grad=tol / float(np.sqrt(theta.numel())), tolerance_change=0.0,
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = objective.risk(theta, weights)
        value.backward()
        return value

    grad_norm, risk = float("inf"), objective.risk(theta, weights).item()
    for block in range(max(1, -(-max_iter // 100))):  # each step runs up to 100 L-BFGS iterations
        opt.param_groups[0]["max_iter"] = min(100, max_iter - 100 * block)  # max_iter in all, not whole blocks
        if checkpoints is not None:
            checkpoints.append(theta.detach().clone())
        opt.step(closure)
        value = objective.risk(theta, weights)
        new_norm = torch.autograd.grad(value, theta)[0].norm().item()
        # L-BFGS can go no further (float precision): neither the gradient nor the risk improves. On a
        # non-convex risk the gradient norm may grow while the risk still falls: that is progress.
        stalled = new_norm >= 0.999 * grad_norm and risk - value.item() <= 1e-12 * max(1.0, abs(risk))
        grad_norm, risk = new_norm, value.item()  # of the θ returned, never of an earlier one
        if grad_norm <= tol or stalled:
            break
    with torch.no_grad():
        risk = objective.risk(theta, weights).item()
    return TrainResult(theta.detach(), grad_norm, int(opt.state[theta].get("n_iter", 0)), risk)


CHORD_RATE = 0.9  # a chord step must cut ‖∇R‖ at least this much, or L-BFGS takes over


def newton_steps(
    objective: Objective,
    factor: torch.Tensor,
    theta0: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> TrainResult:
    """Chord-Newton steps θ −= M⁻¹∇R(θ) with a fixed SPD M = ``factor``·``factor``ᵀ (the Hessian at
    nearby parameters, e.g. H(θ̂) after removing a point), from ``theta0`` (default θ̂), while each step
    cuts ‖∇R‖ by at least ``CHORD_RATE``; stops at ‖∇R‖ ≤ ``tol``. Convergence is linear with a small
    rate near θ̂ and reaches tolerances L-BFGS cannot (it stalls near 1e-7 on the digits CNN:
    ``benchmarks/bench_cnn_loo.py``). On a non-convex risk it can stop contracting after a few steps:
    removing one point may change H by more than its smallest eigenvalues (for 22 of 40 removals on
    the digits CNN: ``benchmarks/bench_cnn_tolerance.py``). Returns the best θ seen (the start if no
    step helped); ``fit(newton=...)`` finishes with L-BFGS."""
    theta = (objective.theta if theta0 is None else theta0).detach().clone()

    def gradient(th: torch.Tensor) -> torch.Tensor:
        th = th.clone().requires_grad_(True)
        return torch.autograd.grad(objective.risk(th, weights), th)[0]

    g = gradient(theta)
    norm, it = g.norm().item(), 0
    while norm > tol and it < max_iter:
        step = torch.cholesky_solve(g[:, None], factor.to(g))[:, 0]
        g_new = gradient(theta - step)
        new = g_new.norm().item()
        if not new <= CHORD_RATE * norm:  # the fixed matrix is too far from H here
            break
        theta, g, norm, it = theta - step, g_new, new, it + 1
    with torch.no_grad():
        risk = objective.risk(theta, weights).item()
    return TrainResult(theta, norm, it, risk)


def train(
    model: nn.Module,
    loss: str | LossFn,
    X,
    y,
    weight_decay: WeightDecay = 0.01,
    params: None | str | Sequence[str] = None,
    tol: float = 1e-10,
    max_iter: int = 5000,
    checkpoints: list | None = None,
    no_decay: None | str | Sequence[str] = None,
) -> tuple[Objective, TrainResult]:
    """Train ``model`` in place to a minimum of R and return ``(objective at θ̂, result)``.

    ``weight_decay``, ``params`` and ``no_decay`` are as in ``Objective``; ``checkpoints``: see ``fit``.
    """
    objective = Objective(model, loss, X, y, weight_decay=weight_decay, params=params, no_decay=no_decay)
    result = fit(objective, tol=tol, max_iter=max_iter, checkpoints=checkpoints)
    objective.write_to_model(result.theta)
    if not result.converged:
        warnings.warn(
            f"training stopped with ‖∇R‖ = {result.grad_norm:.2e}; influence assumes a minimum "
            "(use damping, or train in float64 / longer)",
            RuntimeWarning,
            stacklevel=2,
        )
    return objective.with_theta(result.theta), result


def train_adam(
    model: nn.Module,
    X,
    y,
    loss: str | LossFn = "cross_entropy",
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> list[float]:
    """A few epochs of mini-batch Adam (L2 ``weight_decay`` added to the gradient, PyTorch's
    convention, as in ``Objective``), in place; the model is left in eval mode. Not a minimum:
    explain it with Gauss-Newton curvature (``whybox.KFAC``, ``curvature="ggn"``).

    Returns the mean training loss of each epoch. Shuffling is seeded by ``seed``.
    """
    from torch.func import vmap

    from whybox.losses import resolve

    loss_fn, _ = resolve(loss)
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for rows in torch.randperm(len(X), generator=gen).split(batch_size):
            opt.zero_grad()
            value = vmap(loss_fn)(model(X[rows]), y[rows]).mean()
            value.backward()
            opt.step()
            total += value.item() * len(rows)
        history.append(total / len(X))
    model.eval()
    return history


def train_logistic(X, y, weight_decay: float, tol: float = 1e-8) -> tuple[Objective, TrainResult]:
    """Binary L2 logistic regression ``zoo.logistic_regression(d, 2)`` (bias penalised like the
    weights) trained to ‖∇R‖ ≤ ``tol``, warm-started from scikit-learn's L-BFGS (C = 1/(w·n) on a
    constant column) and finished by ``train``.

    With a tiny weight decay the problem is ill-conditioned: a cold start stops at the same ‖∇R‖
    far from θ̂ along the flat directions (|Δθ| = 0.02 measured at w = 1e-6, n = 20,000).
    """
    from sklearn.linear_model import LogisticRegression

    from whybox.zoo.models import logistic_regression

    X_np, y_np = np.asarray(X, dtype=np.float64), np.asarray(y)
    n, d = X_np.shape
    model = logistic_regression(d, 2)
    if weight_decay > 0:
        sk = LogisticRegression(C=1.0 / (weight_decay * n), fit_intercept=False, max_iter=2000, tol=1e-8)
        sk.fit(np.hstack([X_np, np.ones((n, 1))]), y_np)
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(sk.coef_[:, :d]))
            model.bias.copy_(torch.as_tensor(sk.coef_[:, d]))
    return train(model, "logistic", torch.as_tensor(X_np), torch.as_tensor(y_np), weight_decay, tol=tol)


def retrain(
    objective: Objective,
    remove: Sequence[int] = (),
    tol: float = 1e-10,
    max_iter: int = 5000,
    newton: torch.Tensor | None = None,
) -> TrainResult:
    """Ground truth: retrain from θ̂ without the ``remove`` rows (weights 0, normaliser n kept).

    The objective becomes (1/n)Σ_{i∉remove} L(zᵢ, θ) + ½Σⱼdⱼθⱼ²: the up-weighting by ε = −1/n
    that influence functions linearise, and the same as scikit-learn's C·Σ loss + ½‖θ‖² convention.
    Compare its losses with those of ``retrain_baseline(objective)`` (same tol and max_iter), not with θ̂'s,
    when θ̂ is not a minimum. ``newton``: the Cholesky factor of H(θ̂), to start with Newton steps (``fit``).
    """
    weights = torch.ones(objective.n, dtype=objective.dtype, device=objective.device)
    weights[list(remove)] = 0
    return fit(objective, weights=weights, tol=tol, max_iter=max_iter, newton=newton)


def retrain_baseline(objective: Objective, tol: float = 1e-10, max_iter: int = 5000,
                     newton: torch.Tensor | None = None) -> TrainResult:
    """``retrain`` with nothing removed: the same optimiser, start (θ̂) and budget.

    When θ̂ is not a minimum of R (``objective.stationarity()``), retraining moves θ and the test
    losses even with every point kept; the effect of removing zᵢ is then
    L(θ̂₋ᵢ) − L(θ̂_baseline), which cancels that drift. At a minimum (‖∇R(θ̂)‖ ≤ ``tol``) L-BFGS takes
    no step and the baseline is θ̂ itself.
    """
    return retrain(objective, (), tol=tol, max_iter=max_iter, newton=newton)


def svm_theta(X, y, weight_decay: float, remove: Sequence[int] = (), tol: float = 1e-10) -> torch.Tensor:
    """Exact linear SVM with the true hinge: argmin (1/n)Σ_{i∉remove} max(0, 1 − tᵢ(w·xᵢ + b)) + (w_d/2)(‖w‖² + b²).

    Solved by liblinear's dual coordinate descent (scikit-learn ``LinearSVC(loss="hinge")``) with
    C = 1/(n·weight_decay) and the bias as a regularised constant feature, so the result is the
    same objective whybox uses; n stays the full count when rows are removed. Returns θ = [w, b]
    in ``nn.Linear(d, 1)`` order.
    """
    from sklearn.svm import LinearSVC

    X_np = torch.as_tensor(X).reshape(len(X), -1).cpu().numpy()
    y_np = torch.as_tensor(y).cpu().numpy()
    keep = np.setdiff1d(np.arange(len(X_np)), np.asarray(remove, dtype=int))
    svm = LinearSVC(
        loss="hinge", dual=True, C=1.0 / (len(X_np) * weight_decay), fit_intercept=True,
        intercept_scaling=1.0, tol=tol, max_iter=1_000_000,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # liblinear warns about the tiny tolerance
        svm.fit(X_np[keep], y_np[keep])
    return torch.tensor(np.concatenate([svm.coef_.ravel(), svm.intercept_]), dtype=torch.float64)


class FrozenPrefix:
    """Retraining shortcut for ``nn.Sequential`` models whose θ lies entirely in the last layers
    (frozen extractor + trainable head): the prefix's features are computed once and only the
    perturbed rows are recomputed, so each retraining fits the head alone (same θ, same optimum)."""

    def __init__(self, objective: Objective, cut: int) -> None:
        model = objective.model
        self.prefix = nn.Sequential(*list(model.children())[:cut])
        head = nn.Sequential(*list(model.children())[cut:])
        names = [n.split(".", 1)[1] for n in objective.param_names]  # "1.weight" -> "weight" in child 1
        rel = [f"{int(n0.split('.')[0]) - cut}.{n}" for n0, n in zip(objective.param_names, names)]
        with torch.no_grad():
            self.features = self.prefix(objective.X)
        self.head = Objective(head, objective.loss_fn, self.features, objective.y,
                              weight_decay=objective.weight_decay, params=rel, batch_size=objective.batch_size)
        self.head = self.head.with_theta(objective.theta)

    @classmethod
    def of(cls, objective: Objective) -> FrozenPrefix | None:
        """The shortcut when it applies (θ = exactly the parameters of the last children), else None."""
        model = objective.model
        if not isinstance(model, nn.Sequential):
            return None
        children = list(model.children())
        owner = [int(n.split(".")[0]) for n in objective.param_names]
        cut = min(owner)
        trailing = [f"{i}.{n}" for i in range(cut, len(children)) for n, _ in children[i].named_parameters()]
        if cut == 0 or trailing != objective.param_names:
            return None
        return cls(objective, cut)

    def head_at(self, theta: torch.Tensor, y: torch.Tensor | None = None) -> Objective:
        """The head's objective on the cached features at ``theta``: the same θ, risk and Hessian as the
        full model's (the prefix is frozen), without running the prefix (e.g. to fit a curvature)."""
        return self.head.with_data(self.features, self.head.y if y is None else y).with_theta(theta)

    def refit(self, moved: Objective, rows: Sequence[int], tol: float, newton: torch.Tensor | None = None) -> torch.Tensor:
        """θ after retraining on ``moved``'s data, where only ``rows`` changed, warm-started
        (``newton``: see ``fit``)."""
        with torch.no_grad():
            self.features[rows] = self.prefix(moved.X[rows])
        return fit(self.head.with_data(self.features, moved.y).with_theta(moved.theta), tol=tol, newton=newton).theta
