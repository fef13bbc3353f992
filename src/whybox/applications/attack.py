"""Training-set attacks (Koh & Liang 2017, §5.2): perturb a few training images, invisibly, so that
the retrained model gets a chosen test point wrong.

For a target test point z_test and a training point z̃ (initially z_i), iterate

    z̃ := Π(z̃ + α·sign(I_pert,loss(z̃, z_test)))      then retrain (warm start),

where I_pert,loss(z, z_test) = −∇θL(z_test)ᵀ H⁻¹ ∇x∇θL(z) is the gradient of the *test* loss with
respect to the training *input* (so stepping along it raises the test loss), and Π projects onto the
valid images: pixel levels in ``[low, high]`` (digits: 0..16, MNIST: 0..255) within ``epsilon`` levels
of the original pixel (an L∞ budget), either on the integer grid (``integer=True``: the perturbed image
is itself an 8-bit image) or continuous (``integer=False``). The paper's released code does the latter
with ``epsilon = 0.5`` and ``step = 0.02`` levels ("the same 8-bit representation": the perturbed image
rounds back to the original; kohpangwei/influence-release, influence/dataset_poisoning.py). The model
sees standardised inputs, so the step is taken, and projected, in raw pixel space and re-standardised.

Several targets at once: the attack raises their average loss. Which training points are perturbed:
``select="score"``: the ``n_points`` with the largest |score| of any ``whybox.Attributor`` (default:
influence functions) on the target(s), whatever the sign; ``select="pert"`` (the paper's code): the
largest ‖I_pert,loss‖₁, the first-order rise of the target loss from one sign step.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from whybox import zoo
from whybox.applications._common import AttributorSpec, bind
from whybox.attribution import Attributor
from whybox.curvature import CG, Curvature, make_solver
from whybox.influence import InfluenceFunction
from whybox.objective import Objective
from whybox.settings import Settings, setting


@dataclass(frozen=True)
class PixelGrid:
    """The valid inputs: integer pixel levels in ``[low, high]``; the model sees ``(raw − mean)/std``.

    ``mean``/``std`` are per pixel (``None``: the model sees raw pixels). ``from_split`` reads them
    from a ``zoo.Split``.
    """

    low: float = 0.0
    high: float = 16.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"PixelGrid needs high > low, got [{self.low}, {self.high}]")
        if self.std is not None and not (np.asarray(self.std) > 0).all():
            raise ValueError("PixelGrid std must be > 0 for every pixel")

    @classmethod
    def from_split(cls, split: zoo.Split) -> PixelGrid:
        """The grid of an embedded image split (digits: levels 0..16, the split's standardisation)."""
        if split.raw_train is None:
            raise ValueError(f"{split.name} carries no raw pixels")
        return cls(float(split.raw_train.min()), float(split.raw_train.max()), split.mean, split.std)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = int(np.prod(like.shape[1:]))
        mean = torch.zeros(d) if self.mean is None else torch.as_tensor(self.mean).reshape(-1)
        std = torch.ones(d) if self.std is None else torch.as_tensor(self.std).reshape(-1)
        if mean.numel() != d:
            raise ValueError(f"PixelGrid has {mean.numel()} pixels but the inputs have {d} values per row")
        return mean.to(like), std.to(like)

    def to_raw(self, X: torch.Tensor) -> torch.Tensor:
        """Model inputs ``[k, *shape]`` → raw pixel levels ``[k, d]`` (rounded onto the grid)."""
        mean, std = self._stats(X)
        return torch.round(X.reshape(len(X), -1) * std + mean)

    def to_model(self, raw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Raw pixels ``[k, d]`` → model inputs shaped like ``like``."""
        mean, std = self._stats(like)
        return ((raw - mean) / std).reshape(like.shape).to(like.dtype)

    def raw_gradient(self, grad_model: torch.Tensor) -> torch.Tensor:
        """A gradient w.r.t. model inputs ``[k, *shape]`` → w.r.t. raw pixels ``[k, d]`` (chain rule)."""
        _, std = self._stats(grad_model)
        return grad_model.reshape(len(grad_model), -1) / std

    def project(self, raw: torch.Tensor, raw0: torch.Tensor, epsilon: float, integer: bool = True) -> torch.Tensor:
        """Π: the nearest point within ``epsilon`` levels of ``raw0`` and inside ``[low, high]``; on the
        integer grid when ``integer`` (then ``epsilon`` is effectively ⌊epsilon⌋)."""
        lo = torch.clamp(raw0 - epsilon, min=self.low)
        hi = torch.clamp(raw0 + epsilon, max=self.high)
        inside = torch.minimum(torch.maximum(raw, lo), hi)
        if not integer:
            return inside
        return torch.minimum(torch.maximum(torch.round(inside), torch.ceil(lo)), torch.floor(hi))


@dataclass
class AttackSettings(Settings):
    """The knobs of one attack (written next to its results)."""

    n_points: int = setting("Training images to perturb: those with the largest |score| (select='score') or ‖I_pert,loss‖₁ (select='pert') on the target(s).", 1)
    step: float = setting("α: step size in raw pixel levels (digits: 0..16, MNIST: 0..255; the paper: 0.02 with integer=False).", 1.0)
    epsilon: float = setting("L∞ budget per pixel in levels (the paper: 0.5 with integer=False, the same 8-bit representation).", 2.0)
    iterations: int = setting("Attack steps, each followed by retraining.", 10)
    stop_when_flipped: bool = setting("Stop as soon as every target is misclassified.", True)
    tol: float = setting("‖∇R‖ at which each retraining stops.", 1e-8)
    integer: bool = setting("Keep every pixel on the integer grid (the perturbed image is a valid 8-bit image); False: continuous levels, as in the paper's code.", True)
    select: str = setting("How the training images are picked: 'score' (largest |attributor score|) or 'pert' (largest ‖I_pert,loss‖₁, the paper's code).", "score")

    def __post_init__(self) -> None:
        if self.n_points < 1:
            raise ValueError(f"n_points must be >= 1, got {self.n_points}")
        if self.select not in ("score", "pert"):
            raise ValueError(f"select must be 'score' or 'pert', got {self.select!r}")
        if self.integer and not self.step >= 0.5:
            raise ValueError(f"step must be >= 0.5 pixel levels on the integer grid (smaller steps round back onto the same grid point), got {self.step}; or integer=False")
        if self.integer and not self.epsilon >= 1:
            raise ValueError(f"epsilon must be >= 1 pixel level on the integer grid (the smallest change), got {self.epsilon}; or integer=False")
        if not (self.step > 0 and self.epsilon > 0):
            raise ValueError(f"step and epsilon must be > 0, got {self.step} and {self.epsilon}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")


@dataclass
class SweepSettings(Settings):
    """Attacks on each correctly classified test point, once per budget."""

    budgets: tuple[int, ...] = setting("Numbers of training images to perturb, one sweep each.", (1, 2, 10))
    max_targets: int | None = setting("Attack at most this many correctly classified test points (a seeded random subset; None = all).")
    seed: int = setting("Seed of the target subset.", 0)
    attack: AttackSettings = setting("Each attack's settings; its n_points is replaced by each budget.", factory=AttackSettings)
    second_try: bool = setting("With one image, also attack with the second-ranked image alone: a target counts as flipped by one image when either flips it (the paper's code).", False)
    cumulative: bool = setting("Run the budgets in increasing order and stop at the first that flips the target (the paper's code): a row counts the targets flipped with at most that many images. False: every budget is run and counted on its own.", False)

    def __post_init__(self) -> None:
        self.budgets = tuple(int(k) for k in self.budgets)
        if not self.budgets or min(self.budgets) < 1:
            raise ValueError(f"budgets must be integers >= 1, got {self.budgets}")
        if self.max_targets is not None and self.max_targets < 1:
            raise ValueError(f"max_targets must be >= 1 or None (all), got {self.max_targets}")


@dataclass
class AttackResult:
    """One attack on one target test point (or several at once), after retraining.

    Losses are the plain test losses of the retrained model; ``linf``/``l2`` are the size of each
    perturbed training image's change in pixel levels.
    """

    targets: list[int]
    train_indices: list[int]
    flipped: list[bool]
    iterations: int
    loss_before: list[float]
    loss_after: list[float]
    loss_history: list[float]  # mean target loss after each retraining
    raw_original: np.ndarray  # [k, d] pixel levels
    raw_perturbed: np.ndarray
    theta: torch.Tensor
    seconds: float

    @property
    def linf(self) -> np.ndarray:
        return np.abs(self.raw_perturbed - self.raw_original).max(axis=1)

    @property
    def l2(self) -> np.ndarray:
        return np.linalg.norm(self.raw_perturbed - self.raw_original, axis=1)

    @property
    def all_flipped(self) -> bool:
        return all(self.flipped)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images and θ."""
        return {"targets": self.targets, "train_indices": self.train_indices, "flipped": self.flipped,
                "iterations": self.iterations, "loss_before": self.loss_before, "loss_after": self.loss_after,
                "loss_history": self.loss_history, "linf": self.linf.tolist(), "l2": self.l2.tolist(),
                "seconds": self.seconds}


def select_points(attributor: Attributor, X_target, y_target, n_points: int) -> list[int]:
    """The ``n_points`` training points with the largest |score| on the target(s) (mean over targets)."""
    scores = torch.as_tensor(attributor.scores(X_target, y_target)).reshape(len(X_target), -1).mean(0)
    if n_points > len(scores):
        raise ValueError(f"n_points = {n_points} but there are only {len(scores)} training points")
    return torch.argsort(scores.abs(), descending=True)[:n_points].tolist()


def select_by_pert(influence: InfluenceFunction, X_target, y_target, n_points: int) -> list[int]:
    """The ``n_points`` training points whose I_pert,loss on the (mean) target loss has the largest L1
    norm: the first-order rise of the target loss from one sign step (the paper's code)."""
    objective = influence.objective
    if n_points > objective.n:
        raise ValueError(f"n_points = {n_points} but there are only {objective.n} training points")
    norms = torch.cat([influence.pert_loss(X_target, y_target, torch.arange(s.start, s.stop)).mean(0).flatten(1).abs().sum(1)
                       for s in objective.chunks(objective.n, 256)])
    return torch.argsort(norms, descending=True)[:n_points].tolist()


class _HeadCurvatureInfluence(InfluenceFunction):
    """Influence on the full model (pert_loss differentiates through the frozen prefix down to the
    pixels) whose curvature is fitted on the head's cached features: the same θ and the same H,
    without running the prefix over every training image for each Hessian-vector product."""

    def __init__(self, objective: Objective, curvature: Curvature, head: Objective) -> None:
        super().__init__(objective, curvature)
        self._head = head

    def fit(self) -> _HeadCurvatureInfluence:
        self.curvature.fit(self._head)
        self._fitted = True
        self._stest.clear()
        return self


def _labels01(objective: Objective, y: torch.Tensor) -> torch.Tensor:
    """Labels as ``Objective.predict`` returns classes (binary ±1 labels → 0/1)."""
    return y if objective.loss_name == "cross_entropy" else y.clamp_min(0)


NEWTON_MAX_PARAMS = 5_000  # attack() forms H(θ̂) and factorises it up to this many parameters


def _sign(grad: torch.Tensor, rel: float = 1e-6) -> torch.Tensor:
    """sign() per image, with components below ``rel`` × the image's largest set to 0: pixels the
    model ignores (constant in the training data, so their weights are ~0) get a gradient of
    rounding noise, whose sign would move them at random."""
    tiny = grad.abs() <= rel * grad.abs().amax(dim=1, keepdim=True)
    return torch.sign(grad).masked_fill(tiny, 0)


def newton_factor(objective: Objective, head: zoo.FrozenPrefix | None = None) -> torch.Tensor:
    """The lower Cholesky factor of H(θ̂) (on the head's cached features when ``head`` is given: the
    same matrix without running the frozen prefix)."""
    H = (head.head_at(objective.theta, objective.y) if head is not None else objective).hessian()
    return torch.linalg.cholesky(H)


def pick_points(objective: Objective, X_target, y_target, select: str, n_points: int,
                attributor: AttributorSpec | None = None, curvature: Curvature | None = None) -> list[int]:
    """The training points an attack perturbs: ``select='pert'`` (largest ‖I_pert,loss‖₁) or ``'score'``
    (largest |score| of ``attributor``), best first."""
    curvature = curvature if curvature is not None else make_solver("cg", p=objective.p)
    if select == "pert":
        reuse = isinstance(attributor, InfluenceFunction) and attributor.objective is objective
        inf0 = attributor if reuse else InfluenceFunction(objective, copy.deepcopy(curvature)).fit()
        return select_by_pert(inf0, X_target, y_target, n_points)
    if attributor is None:
        attributor = InfluenceFunction(objective, copy.deepcopy(curvature)).fit()
    return select_points(bind(attributor, objective), X_target, y_target, n_points)


def attack(
    objective: Objective,
    X_test,
    y_test,
    targets: Sequence[int],
    grid: PixelGrid,
    settings: AttackSettings | None = None,
    attributor: AttributorSpec | None = None,
    curvature: Curvature | None = None,
    train_indices: Sequence[int] | None = None,
    newton: torch.Tensor | None = None,
) -> AttackResult:
    """Perturb the ``settings.n_points`` training images with the largest |score| on the ``targets``
    rows of ``(X_test, y_test)`` to raise the targets' (mean) loss, retraining after each step.

    Args:
        objective: the trained model (θ̂) on its training data; only ``objective.X`` rows change.
        grid: valid pixel values and the raw ↔ model-input map (``PixelGrid.from_split(split)``).
        settings: step, budget, iterations (``AttackSettings()`` by default).
        attributor: any ``whybox.Attributor`` picking the training points: one fitted on
            ``objective``, a subclass, or a factory ``objective -> fitted Attributor`` (default:
            ``InfluenceFunction(objective, curvature)``). The attack direction itself is always
            I_pert,loss from influence functions at the current (retrained) parameters.
        curvature: the inverse-HVP solver for I_pert,loss, refitted each step (default ``CG()``: a
            step needs one solve, for the mean target gradient, so forming H every step, as ``Exact``
            does, costs more: 1.2 s against 0.2 s for pixel logistic regression on MNIST 1 vs 7, p = 785),
            preconditioned with ``newton`` when that is given or computed.
        train_indices: the training images to perturb (skips the selection; ``n_points`` is ignored).
        newton: the lower Cholesky factor of H(θ̂) (``newton_factor``; computed here when None and
            p ≤ 5,000). Each retraining starts with Newton steps with it and each CG solve is
            preconditioned by it: the perturbations are small, so both take a few steps instead of
            dozens. Retraining tolerance and CG residuals are unchanged.
    """
    settings = settings or AttackSettings()
    X, y = objective.check_data(X_test, y_test, "test")
    targets = [int(t) for t in targets]
    if not targets or min(targets) < 0 or max(targets) >= len(X):
        raise ValueError(f"targets must be indices in [0, {len(X)}), got {targets[:5]}")
    start = time.perf_counter()
    Xt, yt = X[targets], y[targets]
    labels = _labels01(objective, yt)
    head = zoo.FrozenPrefix.of(objective)  # retrain only the head on cached features when θ is the head
    if newton is None and objective.p <= NEWTON_MAX_PARAMS:
        newton = newton_factor(objective, head)
    if curvature is None:
        curvature = CG(preconditioner=newton) if newton is not None else make_solver("cg", p=objective.p)
    if train_indices is not None:
        idx = [int(i) for i in train_indices]
        if not idx or min(idx) < 0 or max(idx) >= objective.n:
            raise ValueError(f"train_indices must be indices in [0, {objective.n}), got {idx[:5]}")
    else:
        idx = pick_points(objective, Xt, yt, settings.select, settings.n_points, attributor, curvature)

    raw0 = grid.to_raw(objective.X[idx])
    raw = raw0.clone()
    before = objective.losses(Xt, yt)
    history: list[float] = []
    it = 0
    current = objective
    for it in range(1, settings.iterations + 1):  # noqa: B007 - `it` after the loop = iterations run
        inf = InfluenceFunction(current, curvature).fit() if head is None else (
            _HeadCurvatureInfluence(current, curvature, head.head_at(current.theta, objective.y)).fit())
        g = inf.pert_loss(Xt, yt, idx).mean(0)  # d(mean target loss)/d(training inputs), [k, *x]
        new = grid.project(raw + settings.step * _sign(grid.raw_gradient(g)), raw0, settings.epsilon, settings.integer)
        if torch.equal(new, raw):  # a fixed point: same data, same θ, same step from here on
            break
        raw = new
        moved = current.with_rows(idx, grid.to_model(raw, objective.X[idx]))
        theta = (head.refit(moved, idx, settings.tol, newton=newton) if head else  # warm start
                 zoo.fit(moved, tol=settings.tol, newton=newton).theta)
        current = moved.with_theta(theta)
        history.append(float(current.losses(Xt, yt).mean()))
        if settings.stop_when_flipped and not (current.predict(Xt)[0] == labels).any():
            break
    flipped = (current.predict(Xt)[0] != labels).tolist()
    return AttackResult(
        targets=targets, train_indices=idx, flipped=[bool(f) for f in flipped], iterations=it,
        loss_before=before.tolist(), loss_after=current.losses(Xt, yt).tolist(), loss_history=history,
        raw_original=raw0.numpy(), raw_perturbed=raw.numpy(), theta=current.theta,
        seconds=time.perf_counter() - start,
    )


@dataclass
class SweepRow:
    """Flip statistics for one budget (number of perturbed training images)."""

    n_points: int
    attacked: int  # attacks run with this many images (cumulative sweeps skip targets already flipped)
    flipped: int  # targets flipped with this many images (at most this many when cumulative)
    targets: int
    mean_linf: float
    mean_l2: float
    acc_others_before: float  # test accuracy on the non-target points, clean model (mean over attacks)
    acc_others_after: float  # ... after the attack
    mean_iterations: float
    seconds: float

    @property
    def flip_rate(self) -> float:
        return self.flipped / self.targets if self.targets else float("nan")


@dataclass
class Sweep:
    """Attacks on each correctly classified test point separately, for several budgets."""

    rows: list[SweepRow]
    attacks: dict[int, list[AttackResult]]  # n_points -> the attacks run with that many images
    n_correct: int  # correctly classified test points (the candidates)
    targets: list[int]  # the attacked ones
    settings: SweepSettings
    attributor: str
    curvature: str

    def to_dict(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "attributor": self.attributor, "curvature": self.curvature,
                "correct_test_points": self.n_correct, "targets": self.targets,
                "rows": [dict(r.__dict__, flip_rate=r.flip_rate) for r in self.rows]}


def tries(budgets: Sequence[int], second_try: bool) -> list[tuple[int, slice]]:
    """(budget, slice of the ranked training points) in the order they are attacked: the paper's code
    runs the 1st image alone, the 2nd alone, then the top 2, 3, 5 and 10."""
    out: list[tuple[int, slice]] = []
    for k in sorted(set(budgets)):
        out.append((k, slice(0, k)))
        if k == 1 and second_try:
            out.append((1, slice(1, 2)))
    return out


def attack_each(
    objective: Objective,
    X_test,
    y_test,
    grid: PixelGrid,
    settings: SweepSettings | None = None,
    attributor: AttributorSpec | None = None,
    curvature: Curvature | None = None,
    progress: bool = True,
    only: Sequence[int] | None = None,
) -> Sweep:
    """Attack every correctly classified test point on its own (a fresh training set each time), once
    per budget in ``settings.budgets``; ``settings.max_targets`` limits how many (a seeded random
    subset). The training points are ranked once per target (``settings.attack.select``) and each
    budget k perturbs the top k; ``second_try`` and ``cumulative`` reproduce the paper's counting.
    ``attributor`` and ``curvature`` as in ``attack``; H(θ̂) is formed and factorised once for all
    attacks when p ≤ 5,000 (``attack``'s ``newton``). ``only``: attack these test rows (each must be
    classified correctly; ``max_targets`` is then ignored), e.g. one shard of the targets per process."""
    settings = settings or SweepSettings()
    X, y = objective.check_data(X_test, y_test, "test")
    right = objective.predict(X)[0] == _labels01(objective, y)
    correct = torch.nonzero(right).reshape(-1)
    n_correct = len(correct)
    if only is not None:
        wanted = torch.as_tensor([int(t) for t in only], dtype=torch.long).reshape(-1)
        if len(wanted) and not bool(right[wanted].all()):
            raise ValueError(f"only must list correctly classified test rows; {wanted[~right[wanted]].tolist()[:5]} are not")
        correct = wanted
    elif settings.max_targets is not None and settings.max_targets < n_correct:
        gen = torch.Generator().manual_seed(settings.seed)
        correct = correct[torch.randperm(n_correct, generator=gen)[: settings.max_targets]].sort().values
    if len(correct) == 0:
        raise ValueError("the model gets no test point right: nothing to attack")
    need = max(settings.budgets) + (1 if settings.second_try and max(settings.budgets) == 1 else 0)
    if need > objective.n:
        raise ValueError(f"budgets need {need} training points but there are only {objective.n}")
    newton = newton_factor(objective, zoo.FrozenPrefix.of(objective)) if objective.p <= NEWTON_MAX_PARAMS else None
    if curvature is None:
        curvature = CG(preconditioner=newton) if newton is not None else make_solver("cg", p=objective.p)
    attributor = bind(attributor, objective) if attributor is not None else (
        InfluenceFunction(objective, copy.deepcopy(curvature)).fit())
    plan = tries(settings.budgets, settings.second_try)
    runs: dict[int, list[tuple[int, AttackResult, float, float]]] = {k: [] for k in sorted(set(settings.budgets))}
    first_flip: dict[int, int] = {}  # target -> smallest budget that flipped it
    bar = tqdm(total=len(correct), desc="targets", disable=not progress)
    for t in correct.tolist():
        ranked = pick_points(objective, X[[t]], y[[t]], settings.attack.select, need, attributor, curvature)
        others = torch.ones(len(X), dtype=torch.bool)
        others[t] = False
        labels = _labels01(objective, y[others])
        for k, rows in plan:
            if settings.cumulative and t in first_flip:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = attack(objective, X, y, [t], grid, replace(settings.attack, n_points=k), attributor, curvature,
                           train_indices=ranked[rows], newton=newton)
            acc_b = float(right[others].double().mean())
            acc_a = float((objective.predict(X[others], r.theta)[0] == labels).double().mean())
            runs[k].append((t, r, acc_b, acc_a))
            if r.all_flipped and t not in first_flip:
                first_flip[t] = k
        bar.update()
        bar.set_postfix(flipped=len(first_flip))
    bar.close()
    rows_out, attacks = [], {}
    for k, done in runs.items():
        results = [r for _, r, _, _ in done]
        attacks[k] = results
        if settings.cumulative:
            flipped = sum(1 for b in first_flip.values() if b <= k)
        else:
            flipped = len({t for t, r, _, _ in done if r.all_flipped})
        mean = (lambda v: float(np.mean(v)) if v else float("nan"))  # noqa: E731
        rows_out.append(SweepRow(
            n_points=k, attacked=len(results), flipped=flipped, targets=len(correct),
            mean_linf=mean([r.linf.mean() for r in results]), mean_l2=mean([r.l2.mean() for r in results]),
            acc_others_before=mean([b for _, _, b, _ in done]), acc_others_after=mean([a for _, _, _, a in done]),
            mean_iterations=mean([r.iterations for r in results]), seconds=float(sum(r.seconds for r in results)),
        ))
    return Sweep(rows=rows_out, attacks=attacks, n_correct=n_correct, targets=correct.tolist(), settings=settings,
                 attributor=repr(attributor), curvature=repr(curvature))
