r"""scikit-learn linear models as whybox objectives, so sklearn users get influence without PyTorch.

``from_sklearn(estimator, X, y)`` builds the equivalent ``nn.Module``, per-example loss and weight
decay, and returns an ``Objective`` at the estimator's fitted parameters.

scikit-learn minimises  C·Σᵢ L(zᵢ, θ) + ½‖w‖²;  whybox minimises  R(θ) = (1/n)Σᵢ L(zᵢ, θ) + (w_d/2)‖w‖².
Dividing the first by C·n gives the second with **weight_decay = 1/(C·n)** (Ridge: α‖w‖² + Σ r² ⇔
weight_decay = α/n with L = ½r²). Same minimiser, so influence computed by whybox is the influence
for the sklearn model.

The intercept: ``LogisticRegression`` (lbfgs, newton-cg, newton-cholesky, sag, saga) and ``Ridge``
do **not** penalise it, and a refit without a training point moves it. The adapter makes it a
parameter left out of the weight decay (``no_decay=["bias"]``), so influence accounts for that move.
The multinomial softmax ignores a common shift of all K intercepts (a flat direction of R); there
the intercept is parametrised in the (K−1)-dimensional sum-zero subspace, where scikit-learn keeps
it. ``LinearSVC`` and ``solver="liblinear"`` penalise the intercept as one more coefficient on a
constant feature ``intercept_scaling``; there it is a decayed parameter like the others.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from whybox.losses import LossFn, SmoothHinge
from whybox.objective import Objective, Stationarity


class LinearScore(nn.Module):
    """x ↦ x·Wᵀ + b, the decision function of a scikit-learn linear model.

    ``intercept_mode``: ``"fixed"`` keeps b as a buffer (``fit_intercept=False``: b = 0);
    ``"free"`` makes it a parameter (to be left out of the weight decay); ``"penalised"`` makes it
    a parameter on a constant feature ``intercept_scaling`` (liblinear: b = scaling·bias).
    A free intercept of a softmax over K ≥ 3 scores is stored as its K−1 coordinates in an
    orthonormal basis of the sum-zero vectors (b = offset + basis·bias): the loss ignores a common
    shift, which would make the Hessian singular, and the orthonormal basis keeps gradient inner
    products equal to those over the K intercepts.
    """

    def __init__(
        self,
        coef: np.ndarray,
        intercept: np.ndarray,
        intercept_scaling: float = 1.0,
        intercept_mode: str = "fixed",
        softmax: bool = False,
        squeeze: bool = False,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if intercept_mode not in ("fixed", "free", "penalised"):
            raise ValueError(f"intercept_mode must be fixed, free or penalised, got {intercept_mode!r}")
        coef = np.atleast_2d(np.asarray(coef, dtype=float))
        k = coef.shape[0]
        intercept = np.broadcast_to(np.asarray(intercept, dtype=float), (k,)).copy()
        self.weight = nn.Parameter(torch.tensor(coef, dtype=dtype))
        self.scaling = float(intercept_scaling) if intercept_mode == "penalised" else 1.0
        basis = np.eye(k)
        if intercept_mode == "free" and softmax and k > 2:
            from scipy.linalg import null_space

            basis = null_space(np.ones((1, k)))  # [k, k-1], orthonormal, each column sums to 0
        coords = basis.T @ intercept / self.scaling
        self.register_buffer("bias_basis", torch.tensor(basis, dtype=dtype))
        self.register_buffer("bias_offset", torch.tensor(intercept - self.scaling * basis @ coords, dtype=dtype))
        if intercept_mode == "fixed":
            self.register_buffer("bias", torch.tensor(coords, dtype=dtype))
        else:
            self.bias = nn.Parameter(torch.tensor(coords, dtype=dtype))
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.reshape(len(x), -1) @ self.weight.T + self.bias_offset + self.scaling * (self.bias_basis @ self.bias)
        return out.reshape(len(x)) if self.squeeze else out


def squared_hinge(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LinearSVC's default loss max(0, 1 − t·s)² for one score; labels 0/1 or ±1."""
    s = output.reshape(())
    t = target.to(s.dtype).reshape(())
    t = torch.where(t == 0, -torch.ones_like(t), t)
    return torch.clamp(1 - t * s, min=0) ** 2


@dataclass(frozen=True)
class OneVsRest:
    """Σ_k loss(s_k, ±1) over classes: scikit-learn's one-vs-rest multiclass LinearSVC.

    ``base`` is a binary per-score loss (``squared_hinge`` or ``SmoothHinge(t)``); ``target`` is the
    class index.
    """

    base: Any

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = torch.arange(output.shape[-1], device=output.device)
        signs = torch.where(k == target.long().reshape(()), 1.0, -1.0).to(output.dtype)
        return torch.stack([self.base(output[j], signs[j]) for j in range(output.shape[-1])]).sum()


@dataclass
class SklearnModel:
    """What the adapter built for one estimator."""

    module: nn.Module
    loss: str | LossFn
    weight_decay: float  # on the coefficients (and on a penalised intercept)
    classes: np.ndarray | None  # sklearn's ``classes_`` (None for regression)
    note: str = ""
    no_decay: tuple[str, ...] = ()  # ("bias",) when the intercept is free and unpenalised
    stationarity: Stationarity | None = None  # set by ``from_sklearn``: how converged the fit is

    def encode(self, y) -> torch.Tensor:
        """Labels as whybox targets: class indices (0..K-1) for classifiers, floats for Ridge."""
        y = np.asarray(y)
        if self.classes is None:
            return torch.tensor(y, dtype=torch.float64)
        idx = np.searchsorted(self.classes, y)
        idx = np.clip(idx, 0, len(self.classes) - 1)
        if not np.all(self.classes[idx] == y):
            unknown = sorted(set(np.asarray(y).tolist()) - set(self.classes.tolist()))[:5]
            raise ValueError(f"labels {unknown} are not among the model's classes {self.classes.tolist()}")
        return torch.tensor(idx, dtype=torch.int64)


def _no_decay(intercept_mode: str) -> tuple[str, ...]:
    return ("bias",) if intercept_mode == "free" else ()


SUPPORTED = "LogisticRegression (L2), LinearSVC (L2) and Ridge"


def _check_supported(est) -> None:
    """Refuse anything but the supported linear models, before asking whether it is fitted."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    if isinstance(est, (LogisticRegression, LinearSVC, Ridge)):
        return
    name = type(est).__name__
    if type(est).__module__.startswith(("sklearn.tree", "sklearn.ensemble")):
        why = (f"{name} is a tree model: piecewise constant, not differentiable in its parameters, so it has no "
               "gradient or Hessian for influence functions to use")
    else:
        why = f"whybox has no adapter for {name}"
    raise TypeError(
        f"{name} is not supported ({why}). Supported: {SUPPORTED}; for another differentiable model, write it "
        "in PyTorch and build a whybox.Objective (docs/sklearn.md)"
    )


def _check_fitted(est) -> None:
    if not hasattr(est, "coef_"):
        raise ValueError(f"{type(est).__name__} is not fitted: call .fit(X, y) first")


def _iterations(est) -> tuple[int, int] | None:
    """(iterations run, max_iter) when the estimator records both, else None."""
    n_iter, max_iter = getattr(est, "n_iter_", None), getattr(est, "max_iter", None)
    if n_iter is None or max_iter is None:
        return None
    return int(np.max(np.asarray(n_iter))), int(max_iter)


def _check_converged(est, stationarity: Stationarity, threshold: float, smoothed: bool, stacklevel: int) -> None:
    """Warn, naming the scikit-learn fix, when the fitted θ̂ is not a minimum of its objective."""
    if stationarity.relative <= threshold:
        return
    name = type(est).__name__
    its = _iterations(est)
    if its is not None and its[0] >= its[1]:
        why = f" {name} stopped at max_iter={its[1]} (n_iter_ = {its[0]}) before converging."
        fix = (f"raise max_iter (e.g. {name}(max_iter={max(1000, 10 * its[1])})) and refit; standardising the "
               "features also helps the solver converge")
    elif smoothed:
        why = " The hinge solution is not a minimum of the smoothed hinge whybox differentiates."
        fix = "refit with loss='squared_hinge' for exact influence, or read the scores as approximate"
    else:
        why = ""
        fix = "refit with a smaller tol and a larger max_iter"
    warnings.warn(
        f"θ̂ of the fitted {name} is not a minimum of the training objective: ‖∇R(θ̂)‖ = "
        f"{stationarity.grad_norm:.3g}, {stationarity.relative:.3g} of the RMS per-example gradient norm "
        f"(threshold {threshold:g}).{why} Influence assumes ∇R(θ̂) = 0, so scores may be wrong: {fix}",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def adapt(estimator, n_train: int, hinge_temperature: float = 1e-3, dtype: torch.dtype = torch.float64) -> SklearnModel:
    """The module, loss and weight decay equivalent to a fitted sklearn estimator trained on ``n_train`` rows.

    Supported: ``LogisticRegression`` (L2), ``LinearSVC`` (L2, squared hinge or hinge) and ``Ridge``.
    A LinearSVC trained with the plain hinge is explained with ``SmoothHinge(hinge_temperature)``
    (paper §4.3), with a warning.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    _check_supported(estimator)
    _check_fitted(estimator)
    name = type(estimator).__name__
    coef, intercept = np.asarray(estimator.coef_, dtype=float), np.asarray(estimator.intercept_, dtype=float)
    fit_intercept = bool(getattr(estimator, "fit_intercept", True))
    if getattr(estimator, "class_weight", None) is not None:
        raise ValueError(f"{name} with class_weight is a weighted objective; refit with class_weight=None")
    if isinstance(estimator, LogisticRegression):
        l1 = getattr(estimator, "l1_ratio", 0.0) or 0.0
        penalty = getattr(estimator, "penalty", "l2")
        if l1 != 0 or penalty not in ("l2", "deprecated", None) or not np.isfinite(estimator.C):
            raise ValueError("LogisticRegression must use the plain L2 penalty (l1_ratio=0) with a finite C")
        liblinear = estimator.solver == "liblinear"
        binary = coef.shape[0] == 1
        mode = ("penalised" if liblinear else "free") if fit_intercept else "fixed"
        module = LinearScore(coef, intercept if fit_intercept else 0.0, estimator.intercept_scaling, mode,
                             softmax=not binary, squeeze=binary, dtype=dtype)
        return SklearnModel(module, "logistic" if binary else "cross_entropy", 1.0 / (estimator.C * n_train),
                            np.asarray(estimator.classes_), no_decay=_no_decay(mode))
    if isinstance(estimator, LinearSVC):
        if estimator.penalty != "l2":
            raise ValueError("LinearSVC must use penalty='l2'")
        if getattr(estimator, "multi_class", "ovr") == "crammer_singer":
            raise ValueError("LinearSVC(multi_class='crammer_singer') is not supported; use 'ovr'")
        note = ""
        base: Any = squared_hinge
        if estimator.loss == "hinge":
            base = SmoothHinge(hinge_temperature)
            note = (f"LinearSVC was trained with the hinge loss, which has no Hessian; influence uses "
                    f"SmoothHinge(t={hinge_temperature:g}) at the hinge solution (paper §4.3)")
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        binary = coef.shape[0] == 1
        module = LinearScore(coef, intercept if fit_intercept else 0.0, estimator.intercept_scaling,
                             "penalised" if fit_intercept else "fixed", squeeze=binary, dtype=dtype)
        loss = base if binary else OneVsRest(base)
        return SklearnModel(module, loss, 1.0 / (estimator.C * n_train), np.asarray(estimator.classes_), note)
    if isinstance(estimator, Ridge):
        alpha = np.asarray(estimator.alpha, dtype=float)
        if alpha.size != 1 or not alpha > 0:
            raise ValueError("Ridge needs one alpha > 0 (per-target alphas are not supported)")
        mode = "free" if fit_intercept else "fixed"
        module = LinearScore(coef, intercept if fit_intercept else 0.0, intercept_mode=mode, squeeze=coef.ndim == 1, dtype=dtype)
        return SklearnModel(module, "squared_error", float(alpha) / n_train, None, no_decay=_no_decay(mode))
    raise TypeError(f"unsupported estimator {name}; use {SUPPORTED}")


def from_sklearn(estimator, X, y, hinge_temperature: float = 1e-3, dtype: torch.dtype = torch.float64,
                 stationarity_threshold: float = 1e-3) -> tuple[Objective, SklearnModel]:
    """An ``Objective`` at a fitted sklearn linear model's parameters, on its training data ``(X, y)``.

    Returns ``(objective, adapted)``; ``adapted.encode(y_test)`` turns sklearn labels into targets.
    ``adapted.stationarity`` says how close the fit is to the optimum (``Objective.stationarity``);
    a ``RuntimeWarning`` naming the fix (raise ``max_iter``) is raised when its ``relative`` exceeds
    ``stationarity_threshold``. Models other than LogisticRegression, LinearSVC and Ridge (e.g. a
    RandomForestClassifier, not differentiable in its parameters) are refused with a ``TypeError``.

    Example::

        clf = LogisticRegression(C=1.0).fit(X, y)
        obj, adapted = whybox.adapters.from_sklearn(clf, X, y)
        inf = whybox.InfluenceFunction(obj).fit()
        inf.up_loss(X_test, adapted.encode(y_test))
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-d array [n, features], got shape {X.shape}")
    adapted = adapt(estimator, len(X), hinge_temperature, dtype)
    if X.shape[1] != adapted.module.weight.shape[1]:
        raise ValueError(f"X has {X.shape[1]} features but the model was fitted on {adapted.module.weight.shape[1]}")
    obj = Objective(adapted.module, adapted.loss, torch.tensor(X, dtype=dtype), adapted.encode(y),
                    weight_decay=adapted.weight_decay, no_decay=adapted.no_decay)
    if not (np.isfinite(stationarity_threshold) and stationarity_threshold > 0):
        raise ValueError(f"stationarity_threshold must be a finite number > 0, got {stationarity_threshold}")
    adapted.stationarity = obj.stationarity()
    _check_converged(estimator, adapted.stationarity, stationarity_threshold, "SmoothHinge" in adapted.note,
                     stacklevel=3)
    return obj, adapted


def fit_sklearn(kind: str, X, y, C: float = 1.0, seed: int = 0):
    """Fit a scikit-learn linear model to a tight optimum: ``kind`` is logistic, svm or ridge.

    ``C`` is the inverse regularisation strength (Ridge: alpha = 1/C, matching C·Σ½r² + ½‖w‖²).
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    if not (np.isfinite(C) and C > 0):
        raise ValueError(f"C must be a finite number > 0, got {C}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        if kind == "logistic":
            est = LogisticRegression(C=C, tol=1e-10, max_iter=10_000)
        elif kind == "svm":
            est = LinearSVC(C=C, tol=1e-10, max_iter=100_000, dual=False, random_state=seed)
        elif kind == "ridge":
            est = Ridge(alpha=1.0 / C, tol=1e-12)
        else:
            raise ValueError(f"unknown sklearn model {kind!r}; choose logistic, svm or ridge")
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", category=ConvergenceWarning)
        return est.fit(np.asarray(X, dtype=float), np.asarray(y))
