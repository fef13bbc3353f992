r"""Fixing mislabeled training examples (Koh & Liang 2017, §5.4, Fig 6).

Flip a random fraction of the training labels, rank the training points for a (simulated) human
to check, fix the flipped labels among the checked points, retrain, and measure

* the fraction of the flipped labels found after checking the top ``f`` of the ranking, and
* the test accuracy after fixing those points and retraining,

for every ranking, over several repeats with different flips. Rankings (higher priority = check
first):

``self_influence``  the attributor's ``self_scores()`` (high = check first); for influence
                    functions ∇L(zᵢ)ᵀH⁻¹∇L(zᵢ) = −I_up,loss(zᵢ, zᵢ) (paper).
``influence_loo``   train loss + self_scores/n: the influence estimate of zᵢ's **leave-one-out**
                    loss, L(zᵢ, θ̂₋ᵢ) ≈ L(zᵢ, θ̂) + (1/n)∇L(zᵢ)ᵀH⁻¹∇L(zᵢ) (first order in 1/n;
                    assumes self scores in loss units, ``units == "loss"``).
``train_loss``      L(zᵢ, θ̂) (paper's baseline).
``cv_loss``         out-of-sample loss from K-fold cross-validation (K retrainings).
``trusted``         ``-scores(X_trusted, y_trusted).sum(0)`` over a small trusted (clean) validation
                    set: the points that oppose the trusted predictions most (for influence, whose
                    up-weighting raises the trusted loss most) come first; only with a trusted set.
``cleanlab``        cleanlab's ``find_label_issues`` on the cross-validated probabilities
                    (issues ranked by self-confidence first, then the rest by label quality);
                    only when cleanlab is installed (``pip install cleanlab``).
``random``          a random order (paper's baseline).

The scorer of training points is any ``whybox.Attributor`` (``scores``: positive = the training
point supports the test prediction; ``self_scores``: high = check first). The model is retrained
for every repeat, so a ``Problem`` holds a recipe: an ``Attributor`` subclass (built as
``cls(objective).fit()``) or a factory ``objective -> fitted Attributor``, e.g.
``method_factory("cg")``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from whybox import zoo
from whybox.applications._common import AttributorSpec, as_factory, build_for_run, method_factory
from whybox.objective import Objective
from whybox.settings import Settings, setting

RANKINGS = ("self_influence", "influence_loo", "train_loss", "cv_loss", "trusted", "cleanlab", "random")
PROBLEMS = (*zoo.DATASETS, "digits_mlp", "spam")  # every embedded set (L2 logistic regression), and two more


def cleanlab_available() -> bool:
    """Whether the optional ``cleanlab`` package can be imported."""
    try:
        import cleanlab.filter  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------- settings
@dataclass
class MislabeledSettings(Settings):
    """The knobs of one label-fixing experiment (written next to its results)."""

    rankings: tuple[str, ...] = setting(
        f"Rankings to compare, from {RANKINGS}; 'trusted' needs a trusted set, 'cleanlab' is skipped with a note "
        "when cleanlab is not installed.", ("self_influence", "influence_loo", "train_loss", "cv_loss", "cleanlab", "random"))
    flip_fraction: float = setting("Fraction of training labels flipped per repeat (each to another class).", 0.1)
    fractions: tuple[float, ...] | None = setting("Fractions checked for the 'found' curve (default 0, 0.01, ..., 0.30).")
    acc_fractions: tuple[float, ...] | None = setting(
        "Fractions checked at which to fix, retrain and measure test accuracy (None or empty: detection only).",
        (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3))
    repeats: int = setting("Independent label flips (mean ± std over them).", 10)
    seed: int = setting("Seed of the first flip (repeat r uses seed + r).", 0)
    cv_folds: int = setting("Folds for cv_loss and cleanlab's out-of-sample probabilities.", 5)

    def __post_init__(self) -> None:
        self.rankings = tuple(dict.fromkeys(self.rankings))
        unknown = [r for r in self.rankings if r not in RANKINGS]
        if unknown or not self.rankings:
            raise ValueError(f"unknown rankings {unknown or 'none given'}; choose from {list(RANKINGS)}")
        if not 0 < self.flip_fraction < 1:
            raise ValueError(f"flip_fraction must be in (0, 1), got {self.flip_fraction}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.cv_folds < 2:
            raise ValueError(f"cv_folds must be >= 2, got {self.cv_folds}")
        for name in ("fractions", "acc_fractions"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, tuple(float(v) for v in values))
                if any(not 0 <= v <= 1 for v in getattr(self, name)):
                    raise ValueError(f"{name} must lie in [0, 1], got {values}")


# ---------------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """A data set plus the recipe to train a model on it (so it can be retrained on fixed labels).

    ``make_model()`` must return a freshly initialised model (the same every call); ``loss`` is a
    likelihood (``logistic`` or ``cross_entropy``), so class probabilities are exp(−loss).
    ``attributor``: an ``Attributor`` subclass or a factory ``objective -> fitted Attributor``.
    """

    split: zoo.Split
    make_model: Callable[[], nn.Module]
    loss: str
    weight_decay: float = 0.01
    attributor: AttributorSpec = field(default_factory=method_factory)
    train_tol: float = 1e-10  # the model that is explained (influence assumes a minimum)
    max_iter: int = 5000
    description: str = ""
    refit_tol: float = 1e-5  # retraining for test accuracy and cross-validation (predictions only)
    name: str = ""  # default: the split's name

    def __post_init__(self) -> None:
        s = self.split
        if len(s.X_train) != len(s.y_train) or len(s.X_test) != len(s.y_test):
            raise ValueError("split: X and y must have the same number of rows (train and test)")
        if s.n_classes < 2:
            raise ValueError(f"split.n_classes must be >= 2, got {s.n_classes}")
        if self.loss not in ("logistic", "cross_entropy"):
            raise ValueError(f"loss must be 'logistic' or 'cross_entropy' (a likelihood), got {self.loss!r}")
        if not (self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        self.name = self.name or s.name
        self.description = self.description or self.name

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> Objective:
        """A freshly initialised model on ``(X, y)`` (train it with ``zoo.fit``)."""
        return Objective(self.make_model(), self.loss, X, y, weight_decay=self.weight_decay)

    def hold_out_trusted(self, n_trusted: int, seed: int = 0) -> tuple[Problem, tuple[torch.Tensor, torch.Tensor]]:
        """``n_trusted`` random clean test points as a trusted set, and the problem on the other test points."""
        n_test = len(self.split.y_test)
        if not 0 < n_trusted < n_test - 10:
            raise ValueError(f"n_trusted must be in (0, {n_test - 10}); the test split has {n_test} points")
        perm = torch.randperm(n_test, generator=torch.Generator().manual_seed(seed))
        keep, held = perm[n_trusted:], perm[:n_trusted]
        s = self.split
        rest = replace(s, X_test=s.X_test[keep], y_test=s.y_test[keep],
                       raw_test=None if s.raw_test is None else s.raw_test[keep.numpy()])
        return replace(self, split=rest), (s.X_test[held], s.y_test[held])


def load_problem(
    name: str,
    weight_decay: float = 0.01,
    seed: int = 0,
    attributor: AttributorSpec | None = None,
    spam_options: dict | None = None,
) -> Problem:
    """A ready-made setting: L2 logistic regression on any embedded set of ``zoo.DATASETS`` (``digits``:
    10 classes, p = 650; ``breast_cancer``: binary, p = 31; ``mnist``: 28×28 in [0, 1], 10 classes,
    p = 7,850, needs ``pip install whybox[mnist]``), ``digits_mlp`` (64-32-10 tanh MLP,
    p = 2,410; influence with damping 0.01 as the Hessian need not be PD) or ``spam`` (synthetic
    Enron-like bag of words, ``zoo.make_spam_corpus(**spam_options)``, binary logistic regression,
    p = vocab + 1)."""
    if name == "digits_mlp":
        d = zoo.load("digits", seed=seed)
        return Problem(d, lambda: zoo.mlp(d.n_features, d.n_classes, hidden=(32,), seed=seed), "cross_entropy",
                       weight_decay, attributor or method_factory("exact", damping=0.01), train_tol=1e-6,
                       max_iter=1500, description="digits, 64-32-10 tanh MLP", name=name)
    if name in zoo.DATASETS:
        d = zoo.load(name, seed=seed)
        description = f"{name}, L2 logistic regression"
    elif name == "spam":
        d = zoo.make_spam_corpus(seed=seed, **(spam_options or {}))
        zeros = float((torch.cat([d.X_train, d.X_test]) == 0).double().mean())
        description = (f"synthetic spam bag-of-words ({len(d.y_train)} train / {len(d.y_test)} test emails, "
                       f"{d.n_features} words, {100 * zeros:.0f}% zeros), L2 logistic regression")
    else:
        raise ValueError(f"unknown problem {name!r}; choose one of {list(PROBLEMS)}")
    p = (d.n_features + 1) * (d.n_classes if d.n_classes > 2 else 1)
    return Problem(d, lambda: zoo.logistic_regression(d.n_features, d.n_classes),
                   "cross_entropy" if d.n_classes > 2 else "logistic", weight_decay,
                   attributor or method_factory(), description=f"{description} (p = {p})", name=name)


# ---------------------------------------------------------------------------------- pieces
def cross_val_probs(problem: Problem, X: torch.Tensor, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-sample class probabilities ``[n, C]`` by stratified K-fold retraining; for a
    likelihood loss p(c | x) = exp(−L(x, c))."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n_classes = problem.split.n_classes
    out = np.zeros((len(y), n_classes))
    if np.bincount(y, minlength=n_classes).min() >= folds:
        splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
    else:
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(X)
    for tr, te in splits:
        obj = problem.objective(X[tr], torch.as_tensor(y[tr]))
        theta = zoo.fit(obj, tol=problem.refit_tol, max_iter=problem.max_iter).theta
        for c in range(n_classes):
            out[te, c] = obj.losses(X[te], torch.full((len(te),), c), theta).cpu().numpy()
    return np.exp(-out)


def cleanlab_order(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """cleanlab's ranking: ``find_label_issues`` (ranked by self-confidence) first, then every
    other point by ``get_label_quality_scores`` (lowest quality first)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    issues = np.asarray(find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence"), dtype=int)
    quality = get_label_quality_scores(labels, pred_probs)
    rest = np.setdiff1d(np.argsort(quality, kind="stable"), issues, assume_unique=True)
    rest = rest[np.argsort(quality[rest], kind="stable")]
    return np.concatenate([issues, rest])


def _priority(order: np.ndarray) -> np.ndarray:
    """Priorities that sort into ``order`` (first = highest)."""
    priority = np.empty(len(order))
    priority[order] = np.arange(len(order), 0, -1)
    return priority


# ---------------------------------------------------------------------------------- result
@dataclass
class MislabeledResult:
    """Curves of one experiment. ``found[r]`` is ``[repeats, len(fractions)]`` (fraction of the
    flipped labels among the checked points); ``accuracy[r]`` is ``[repeats, len(acc_fractions)]``
    (test accuracy after fixing the checked points and retraining). ``setup`` records the problem
    and the attributor."""

    problem: str
    description: str
    fractions: np.ndarray
    acc_fractions: np.ndarray
    found: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    clean_accuracy: float
    settings: MislabeledSettings
    setup: dict[str, Any]
    seconds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def rankings(self) -> list[str]:
        return list(self.found)

    def found_at(self, ranking: str, fraction: float) -> tuple[float, float]:
        """Mean and std over repeats of the fraction of flips found after checking ``fraction``."""
        j = int(np.argmin(np.abs(self.fractions - fraction)))
        col = self.found[ranking][:, j]
        return float(col.mean()), float(col.std())

    def accuracy_at(self, ranking: str, fraction: float) -> tuple[float, float]:
        """Mean and std over repeats of the test accuracy after fixing ``fraction`` and retraining."""
        if ranking not in self.accuracy or len(self.acc_fractions) == 0:
            return float("nan"), float("nan")
        j = int(np.argmin(np.abs(self.acc_fractions - fraction)))
        col = self.accuracy[ranking][:, j]
        return float(col.mean()), float(col.std())

    def best(self, fraction: float = 0.1) -> str:
        """The ranking that finds the most flips at ``fraction`` checked (ties: first listed)."""
        return max(self.rankings, key=lambda r: self.found_at(r, fraction)[0])

    def table(self, check: Sequence[float] = (0.05, 0.1, 0.2, 0.3)) -> list[dict[str, Any]]:
        """One row per ranking: found@f and accuracy@f (mean, std), plus the seconds it took."""
        rows = []
        for r in self.rankings:
            row: dict[str, Any] = {"ranking": r}
            for f in check:
                row[f"found@{f:g}"] = self.found_at(r, f)
            for f in check:
                if len(self.acc_fractions) and np.min(np.abs(self.acc_fractions - f)) < 1e-9:
                    row[f"acc@{f:g}"] = self.accuracy_at(r, f)
            row["seconds"] = self.seconds.get(r, float("nan"))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem": self.problem, "description": self.description, "settings": self.settings.to_dict(),
            "setup": self.setup, "clean_accuracy": self.clean_accuracy, "fractions": self.fractions.tolist(),
            "acc_fractions": self.acc_fractions.tolist(),
            "found": {k: v.tolist() for k, v in self.found.items()},
            "accuracy": {k: v.tolist() for k, v in self.accuracy.items()},
            "seconds": self.seconds, "notes": self.notes,
            "table": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in self.table()],
            "sign_convention": "rankings put the points to check first; found = fraction of flipped labels among checked points",
        }


# ---------------------------------------------------------------------------------- experiment
def fix_mislabeled(
    problem: Problem,
    settings: MislabeledSettings | None = None,
    trusted: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
) -> MislabeledResult:
    """Run the paper's §5.4 experiment on ``problem`` with every ranking in ``settings.rankings``.

    Args:
        settings: the experiment's knobs (``MislabeledSettings()`` by default).
        trusted: ``(X, y)``, a small clean validation set for the ``trusted`` ranking.
    """
    from whybox.evaluation import fraction_found  # scipy: imported when an experiment runs, not with the CLI

    settings = settings or MislabeledSettings()
    factory = as_factory(problem.attributor, "problem.attributor")
    rankings = list(settings.rankings)
    if "trusted" in rankings and trusted is None:
        raise ValueError("ranking 'trusted' needs a trusted validation set: trusted=(X_val, y_val)")
    notes: list[str] = []
    if "cleanlab" in rankings and not cleanlab_available():
        rankings.remove("cleanlab")
        notes.append("cleanlab not installed: its baseline was skipped (pip install cleanlab)")
    fr = np.round(np.arange(0, 0.3001, 0.01), 4) if settings.fractions is None else np.asarray(settings.fractions)
    af = np.asarray(settings.acc_fractions or [], float)
    repeats, seed = settings.repeats, settings.seed
    split = problem.split
    X, y_true = split.X_train, split.y_train.cpu().numpy()
    n = len(y_true)

    def test_accuracy(obj: Objective, theta: torch.Tensor | None = None) -> float:
        return float((obj.predict(split.X_test, theta)[0].cpu() == split.y_test.cpu()).double().mean())

    found = {r: np.zeros((repeats, len(fr))) for r in rankings}
    acc = {r: np.zeros((repeats, len(af))) for r in rankings}
    seconds = {r: 0.0 for r in rankings}
    clean = problem.objective(X, split.y_train)
    clean_acc = test_accuracy(clean, zoo.fit(clean, tol=problem.refit_tol, max_iter=problem.max_iter).theta)
    grad_norms, described = [], {}
    uses_att, uses_cv = {"self_influence", "influence_loo", "trusted"}, {"cv_loss", "cleanlab"}
    bar = tqdm(total=repeats * len(rankings), desc=f"mislabeled {problem.name}", disable=not progress)
    for rep in range(repeats):
        rng = np.random.default_rng(seed + rep)
        y_noisy, flipped = zoo.flip_labels(y_true, settings.flip_fraction, split.n_classes, rng)
        is_flipped = np.zeros(n, bool)
        is_flipped[flipped] = True
        obj = problem.objective(X, torch.as_tensor(y_noisy))
        checkpoints: list = []  # for an attributor that reads the training run (TracIn)
        obj = obj.with_theta(zoo.fit(obj, tol=problem.train_tol, max_iter=problem.max_iter, checkpoints=checkpoints).theta)
        grad_norms.append(obj.risk_grad().norm().item())
        base_acc = test_accuracy(obj)
        shared: dict[str, float] = {}
        if uses_att & set(rankings):
            t = time.perf_counter()
            att = build_for_run(factory, obj, checkpoints)
            described = {"attributor": repr(att), "attributor_sign": att.sign}
            if {"self_influence", "influence_loo"} & set(rankings):
                self_s = att.self_scores().detach().cpu().numpy()
            shared["att"] = time.perf_counter() - t
        if uses_cv & set(rankings):
            t = time.perf_counter()
            probs = cross_val_probs(problem, X, y_noisy, settings.cv_folds, seed + rep)
            shared["cv"] = time.perf_counter() - t

        for r in rankings:
            t = time.perf_counter()
            if r == "self_influence":
                priority = self_s
            elif r == "influence_loo":
                priority = obj.losses().cpu().numpy() + self_s / n
            elif r == "train_loss":
                priority = obj.losses().cpu().numpy()
            elif r == "cv_loss":
                priority = -np.log(np.clip(probs[np.arange(n), y_noisy], 1e-300, None))
            elif r == "cleanlab":
                priority = _priority(cleanlab_order(y_noisy, probs))
            elif r == "trusted":
                priority = -att.scores(*trusted).sum(0).detach().cpu().numpy()
            else:  # random
                priority = _priority(np.random.default_rng(10_000 + seed + rep).permutation(n))
            order = np.argsort(-priority, kind="stable")
            t_rank = time.perf_counter() - t
            found[r][rep] = [fraction_found(priority, is_flipped, f) for f in fr]
            for j, f in enumerate(af):
                k = int(round(f * n))
                if k == 0:
                    acc[r][rep, j] = base_acc
                    continue
                y_fix = y_noisy.copy()
                y_fix[order[:k]] = y_true[order[:k]]
                refit = zoo.fit(obj.with_data(obj.X, torch.as_tensor(y_fix)), tol=problem.refit_tol,
                                max_iter=problem.max_iter)  # warm-started from θ̂
                acc[r][rep, j] = test_accuracy(obj, refit.theta)
            shared_key = "att" if r in uses_att else "cv" if r in uses_cv else ""
            seconds[r] += t_rank + shared.get(shared_key, 0.0)  # time to rank, not to retrain
            bar.update(1)
    bar.close()
    if max(grad_norms) > 1e-5:
        notes.append(f"training stopped at ‖∇R‖ up to {max(grad_norms):.1e} (train_tol {problem.train_tol:g})")
    setup = dict(problem=problem.name, weight_decay=problem.weight_decay, loss=problem.loss, n_train=n,
                 n_test=len(split.y_test), n_trusted=None if trusted is None else len(trusted[1]), **described)
    return MislabeledResult(problem.name, problem.description, fr, af, found, acc, clean_acc, settings, setup,
                            {r: s / repeats for r, s in seconds.items()}, notes)


def recommend(results: Sequence[MislabeledResult], fraction: float = 0.1) -> dict[str, str]:
    """Per problem, the ranking that found the most flips at ``fraction`` checked."""
    return {r.problem: r.best(fraction) for r in results}
