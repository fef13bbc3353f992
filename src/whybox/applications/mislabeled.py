r"""Fixing mislabeled training examples (Koh & Liang 2017, §5.4, Fig 6).

Flip a random fraction of the training labels, rank the training points for a (simulated) human
to check, fix the flipped labels among the checked points, retrain, and measure

* the fraction of the flipped labels found after checking the top ``f`` of the ranking, and
* the test accuracy after fixing those points and retraining,

for every ranking, over several repeats with different flips. Rankings (higher priority = check
first):

``self_influence``  ∇L(zᵢ)ᵀH⁻¹∇L(zᵢ) = −I_up,loss(zᵢ, zᵢ), the attributor's ``self_scores()`` (paper).
``influence_loo``   train loss + self_scores/n: the influence estimate of zᵢ's **leave-one-out**
                    loss, L(zᵢ, θ̂₋ᵢ) ≈ L(zᵢ, θ̂) + (1/n)∇L(zᵢ)ᵀH⁻¹∇L(zᵢ) (first order in 1/n;
                    assumes the attributor's self scores are in influence units).
``train_loss``      L(zᵢ, θ̂) (paper's baseline).
``cv_loss``         out-of-sample loss from K-fold cross-validation (K retrainings).
``trusted``         Σ_v I_up,loss(zᵢ, v)/n over a small trusted (clean) validation set, i.e.
                    ``-scores(X_trusted, y_trusted).sum(0)``: the points whose up-weighting raises
                    the trusted loss most come first; only with a trusted set.
``cleanlab``        cleanlab's ``find_label_issues`` on the cross-validated probabilities
                    (issues ranked by self-confidence first, then the rest by label quality);
                    only when cleanlab is installed (``pip install cleanlab``).
``random``          a random order (paper's baseline).

The scorer of training points is any ``whybox.attribution.Attributor``, built by a factory from
the trained ``Objective`` (the model is retrained for every repeat, so a fixed attributor cannot
be passed): ``attributor=lambda obj: whybox.InfluenceFunction(obj, whybox.CG()).fit()``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from whybox import zoo
from whybox.attribution import Attributor
from whybox.curvature import CG, Exact
from whybox.influence import InfluenceFunction
from whybox.objective import Objective

AttributorFactory = Callable[[Objective], Attributor]

RANKINGS = ("self_influence", "influence_loo", "train_loss", "cv_loss", "trusted", "cleanlab", "random")
LABELS = {
    "self_influence": "self-influence",
    "influence_loo": "influence LOO loss",
    "train_loss": "train loss",
    "cv_loss": "cross-val loss",
    "trusted": "influence on trusted set",
    "cleanlab": "cleanlab",
    "random": "random",
}
COLORS = {
    "self_influence": "tab:blue", "influence_loo": "tab:purple", "train_loss": "tab:green",
    "cv_loss": "tab:orange", "trusted": "tab:cyan", "cleanlab": "tab:brown", "random": "tab:red",
}


def cleanlab_available() -> bool:
    """Whether the optional ``cleanlab`` package can be imported."""
    try:
        import cleanlab.filter  # noqa: F401
    except ImportError:
        return False
    return True


def influence_factory(solver: str = "auto", damping: float = 0.0) -> AttributorFactory:
    """An attributor factory building a fitted ``InfluenceFunction``.

    ``solver``: ``"exact"`` (dense Hessian, Cholesky), ``"cg"`` (conjugate gradients, H never
    formed) or ``"auto"`` (exact for p ≤ 5,000 parameters, else CG).
    """
    if solver not in ("auto", "exact", "cg"):
        raise ValueError(f"solver must be 'auto', 'exact' or 'cg', got {solver!r}")

    def build(obj: Objective) -> InfluenceFunction:
        use = solver if solver != "auto" else ("exact" if obj.p <= 5000 else "cg")
        curv = Exact(damping=damping) if use == "exact" else CG(damping=damping, rtol=1e-8)
        return InfluenceFunction(obj, curv).fit()

    build.description = f"InfluenceFunction({solver}, damping={damping:g})"  # type: ignore[attr-defined]
    return build


# ---------------------------------------------------------------------------------- problems
@dataclass
class Problem:
    """A data set plus the recipe to train a model on it (so it can be retrained on fixed labels).

    ``make_model()`` must return a freshly initialised model (same seed every call).
    """

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    make_model: Callable[[], nn.Module]
    loss: str
    weight_decay: float = 0.01
    attributor: AttributorFactory = field(default_factory=influence_factory)
    train_tol: float = 1e-10  # the model that is explained (influence assumes a minimum)
    max_iter: int = 5000
    description: str = ""
    refit_tol: float = 1e-5  # retraining for test accuracy and cross-validation (predictions only)

    def __post_init__(self) -> None:
        if len(self.X_train) != len(self.y_train) or len(self.X_test) != len(self.y_test):
            raise ValueError("X and y must have the same number of rows (train and test)")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        if not (self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


def make_spam_corpus(
    n_train: int = 2000,
    n_test: int = 1000,
    vocab: int = 2000,
    doc_length: float = 60.0,
    spam_rate: float = 0.3,
    separation: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """A synthetic two-class bag-of-words corpus shaped like Enron1 spam (no download).

    Words follow a shared Zipf background; each class tilts it by exp(sᶜ_w) with sᶜ_w ~
    N(0, ``separation``²) drawn independently per class and word, so every word is weak evidence
    and the signal is spread over thousands of sparse features. Document lengths ~ 1 + Poisson.
    Features are log(1 + count) (about 97 % zeros at the defaults); label 1 = spam.
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("vocab", vocab)):
        if v < 2:
            raise ValueError(f"{name} must be >= 2, got {v}")
    if not 0 < spam_rate < 1:
        raise ValueError(f"spam_rate must be in (0, 1), got {spam_rate}")
    rng = np.random.default_rng(seed)
    background = 1.0 / np.arange(1, vocab + 1) ** 1.0
    rng.shuffle(background)
    probs = []
    for _ in range(2):
        w = background * np.exp(rng.normal(0.0, separation, vocab))
        probs.append(w / w.sum())
    n = n_train + n_test
    y = (rng.random(n) < spam_rate).astype(np.int64)
    lengths = 1 + rng.poisson(doc_length, n)
    counts = np.stack([rng.multinomial(lengths[i], probs[y[i]]) for i in range(n)])
    X = np.log1p(counts)
    return {
        "X_train": X[:n_train], "y_train": y[:n_train], "X_test": X[n_train:], "y_test": y[n_train:],
        "settings": dict(n_train=n_train, n_test=n_test, vocab=vocab, doc_length=doc_length,
                         spam_rate=spam_rate, separation=separation, seed=seed),
        "sparsity": float((counts == 0).mean()),
    }


PROBLEMS = ("digits", "breast_cancer", "digits_mlp", "spam")


def load_problem(
    name: str,
    weight_decay: float = 0.01,
    seed: int = 0,
    attributor: Optional[AttributorFactory] = None,
    spam_options: Optional[dict] = None,
) -> Problem:
    """A ready-made setting: ``digits`` (10-class L2 logistic regression, p = 650),
    ``breast_cancer`` (binary L2 logistic regression, p = 31), ``digits_mlp`` (64-32-10 tanh MLP,
    p = 2,410; influence with damping 0.01 as the Hessian need not be PD) or ``spam`` (synthetic
    Enron-like bag of words, binary logistic regression, p = vocab + 1)."""
    t = lambda a: torch.as_tensor(a)  # noqa: E731
    if name in ("digits", "breast_cancer", "digits_mlp"):
        d = zoo.load("digits" if name == "digits_mlp" else name, seed=seed)
        if name == "digits_mlp":
            make = lambda: zoo.mlp(d.n_features, d.n_classes, hidden=(32,), seed=seed)  # noqa: E731
            return Problem(name, d.X_train, d.y_train, d.X_test, d.y_test, d.n_classes, make, "cross_entropy",
                           weight_decay, attributor or influence_factory("exact", damping=0.01),
                           train_tol=1e-6, max_iter=1500,
                           description="digits, 64-32-10 tanh MLP, influence: Exact with damping 0.01")
        make = lambda: zoo.logistic_regression(d.n_features, d.n_classes)  # noqa: E731
        loss = "cross_entropy" if d.n_classes > 2 else "logistic"
        p = (d.n_features + 1) * (d.n_classes if d.n_classes > 2 else 1)
        return Problem(name, d.X_train, d.y_train, d.X_test, d.y_test, d.n_classes, make, loss, weight_decay,
                       attributor or influence_factory(), description=f"{name}, L2 logistic regression (p = {p})")
    if name == "spam":
        c = make_spam_corpus(seed=seed, **(spam_options or {}))
        vocab = c["X_train"].shape[1]
        make = lambda: zoo.logistic_regression(vocab, 2)  # noqa: E731
        s = c["settings"]
        return Problem(
            "spam", t(c["X_train"]), t(c["y_train"]), t(c["X_test"]), t(c["y_test"]), 2, make, "logistic",
            weight_decay, attributor or influence_factory(),
            description=(f"synthetic spam bag-of-words ({s['n_train']} train / {s['n_test']} test emails, "
                         f"{vocab} words, {100 * c['sparsity']:.0f}% zeros), L2 logistic regression "
                         f"(p = {vocab + 1}; influence: {'Exact' if vocab + 1 <= 5000 else 'CG'})"),
        )
    raise ValueError(f"unknown problem {name!r}; choose one of {list(PROBLEMS)}")


# ---------------------------------------------------------------------------------- pieces
def flip_labels(y: np.ndarray, fraction: float, n_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip a random ``fraction`` of labels, each to a uniformly random *other* class.

    Returns ``(noisy labels, sorted indices of the flipped rows)``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"flip fraction must be in (0, 1), got {fraction}")
    y = np.asarray(y)
    k = max(1, int(round(fraction * len(y))))
    idx = np.sort(rng.choice(len(y), size=k, replace=False))
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, n_classes, size=k)) % n_classes
    return noisy, idx


def _probs(outputs: torch.Tensor) -> np.ndarray:
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        p1 = torch.sigmoid(outputs.reshape(-1))
        return torch.stack([1 - p1, p1], 1).detach().cpu().numpy()
    return torch.softmax(outputs, -1).detach().cpu().numpy()


def _accuracy(obj: Objective, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = _probs(obj.outputs(X.to(obj.dtype), theta)).argmax(1)
    return float((pred == y.cpu().numpy()).mean())


def _train(problem: Problem, X: torch.Tensor, y: torch.Tensor, tol: Optional[float] = None) -> Objective:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # MLPs stop at train_tol, reported below
        obj, _ = zoo.train(problem.make_model(), problem.loss, X, y, problem.weight_decay,
                           tol=tol or problem.train_tol, max_iter=problem.max_iter)
    return obj


def _refit(problem: Problem, obj: Objective, y_new: torch.Tensor) -> torch.Tensor:
    """Warm-started retraining of ``obj`` on new labels; returns θ."""
    return zoo.fit(obj.with_data(obj.X, y_new), tol=problem.refit_tol, max_iter=problem.max_iter).theta


def cross_val_probs(problem: Problem, X: torch.Tensor, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-sample predicted probabilities ``[n, C]`` by stratified K-fold retraining."""
    from sklearn.model_selection import StratifiedKFold

    n_classes = max(problem.n_classes, 2)
    out = np.zeros((len(y), n_classes))
    min_count = np.bincount(y, minlength=n_classes).min()
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed) if min_count >= folds else None
    if kfold is None:
        from sklearn.model_selection import KFold
        splits = KFold(n_splits=folds, shuffle=True, random_state=seed).split(X)
    else:
        splits = kfold.split(np.zeros(len(y)), y)
    for tr, te in splits:
        obj = _train(problem, X[tr], torch.as_tensor(y[tr]), tol=problem.refit_tol)
        with torch.no_grad():
            out[te] = _probs(obj.outputs(X[te].to(obj.dtype)))
    return out


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


def _order(priority: np.ndarray) -> np.ndarray:
    return np.argsort(-priority, kind="stable")


# ---------------------------------------------------------------------------------- result
@dataclass
class MislabeledResult:
    """Curves of one experiment. ``found[r]`` is ``[repeats, len(fractions)]`` (fraction of the
    flipped labels among the checked points); ``accuracy[r]`` is ``[repeats, len(acc_fractions)]``
    (test accuracy after fixing the checked points and retraining)."""

    problem: str
    description: str
    fractions: np.ndarray
    acc_fractions: np.ndarray
    found: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    clean_accuracy: float
    settings: dict[str, Any]
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
            "problem": self.problem, "description": self.description, "settings": self.settings,
            "clean_accuracy": self.clean_accuracy, "fractions": self.fractions.tolist(),
            "acc_fractions": self.acc_fractions.tolist(),
            "found": {k: v.tolist() for k, v in self.found.items()},
            "accuracy": {k: v.tolist() for k, v in self.accuracy.items()},
            "seconds": self.seconds, "notes": self.notes,
            "table": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in self.table()],
            "sign_convention": "rankings put the points to check first; found = fraction of flipped labels among checked points",
        }

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``mislabeled_<problem>.json``, ``.csv`` (the table) and ``.png`` (Fig 6 style)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {k: out / f"mislabeled_{self.problem}.{k}" for k in ("json", "csv", "png")}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1))
        rows = self.table()
        cols = [c for c in rows[0] if c != "ranking"]
        lines = ["ranking," + ",".join(f"{c}_mean,{c}_std" if c != "seconds" else c for c in cols)]
        for row in rows:
            vals = [f"{row[c][0]:.4f},{row[c][1]:.4f}" if isinstance(row[c], tuple) else f"{row[c]:.2f}" for c in cols]
            lines.append(row["ranking"] + "," + ",".join(vals))
        paths["csv"].write_text("\n".join(lines) + "\n")
        plot_mislabeled(self, paths["png"])
        return paths


def plot_mislabeled(result: MislabeledResult, path: str | Path) -> Path:
    """Fig 6 of the paper: test accuracy (left) and fraction of flips found (right) vs fraction
    of training data checked, mean ± std over repeats."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in result.rankings:
        kw = dict(color=COLORS.get(r), label=LABELS.get(r, r))
        if r in result.accuracy and len(result.acc_fractions):
            a = result.accuracy[r]
            axes[0].errorbar(result.acc_fractions * 100, a.mean(0), yerr=a.std(0), capsize=2, marker="o", ms=3, **kw)
        f = result.found[r]
        axes[1].plot(result.fractions * 100, f.mean(0), **kw)
        axes[1].fill_between(result.fractions * 100, f.mean(0) - f.std(0), f.mean(0) + f.std(0),
                             color=COLORS.get(r), alpha=0.15)
    axes[0].axhline(result.clean_accuracy, color="k", ls=":", lw=1, label="trained on clean labels")
    axes[0].set(xlabel="% of training data checked", ylabel="test accuracy", title="test accuracy after fixing")
    axes[1].set(xlabel="% of training data checked", ylabel="fraction of flips found", title="flipped labels found",
                ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    reps = result.settings.get("repeats")
    fig.suptitle(f"{result.description} — {reps} repeats, "
                 f"{100 * result.settings.get('flip_fraction', 0):.0f}% labels flipped", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------- experiment
def fix_mislabeled(
    problem: Problem,
    rankings: Sequence[str] = ("self_influence", "influence_loo", "train_loss", "cv_loss", "cleanlab", "random"),
    flip_fraction: float = 0.1,
    fractions: Optional[Sequence[float]] = None,
    acc_fractions: Optional[Sequence[float]] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    repeats: int = 10,
    seed: int = 0,
    trusted: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    cv_folds: int = 5,
    progress: bool = True,
) -> MislabeledResult:
    """Run the paper's §5.4 experiment on ``problem`` with every ranking in ``rankings``.

    Args:
        rankings: names from ``RANKINGS``. ``"trusted"`` needs ``trusted=(X, y)`` (clean labels);
            ``"cleanlab"`` is skipped with a note when cleanlab is not installed.
        flip_fraction: fraction of training labels flipped per repeat (to another class).
        fractions: fractions checked for the "found" curve (default 0, 0.01, ..., 0.30).
        acc_fractions: fractions checked at which to fix, retrain and measure test accuracy
            (``None`` or empty: detection only, no retraining).
        repeats: independent flips (seeds ``seed, seed+1, ...``).
        trusted: a small clean validation set for the ``trusted`` ranking.
        cv_folds: folds for ``cv_loss`` and ``cleanlab``'s out-of-sample probabilities.
    """
    unknown = [r for r in rankings if r not in RANKINGS]
    if unknown:
        raise ValueError(f"unknown rankings {unknown}; choose from {list(RANKINGS)}")
    if not rankings:
        raise ValueError("give at least one ranking")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if cv_folds < 2:
        raise ValueError(f"cv_folds must be >= 2, got {cv_folds}")
    notes: list[str] = []
    rankings = list(dict.fromkeys(rankings))
    if "trusted" in rankings and trusted is None:
        raise ValueError("ranking 'trusted' needs a trusted validation set: trusted=(X_val, y_val)")
    if "cleanlab" in rankings and not cleanlab_available():
        rankings.remove("cleanlab")
        notes.append("cleanlab not installed: its baseline was skipped (pip install cleanlab)")
    fr = np.round(np.arange(0, 0.3001, 0.01), 4) if fractions is None else np.asarray(fractions, float)
    af = np.asarray(acc_fractions if acc_fractions is not None else [], float)
    for name, arr in (("fractions", fr), ("acc_fractions", af)):
        if len(arr) and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name} must lie in [0, 1]")
    X, y_true = problem.X_train, problem.y_train.cpu().numpy()
    n = len(y_true)
    found = {r: np.zeros((repeats, len(fr))) for r in rankings}
    acc = {r: np.zeros((repeats, len(af))) for r in rankings}
    seconds = {r: 0.0 for r in rankings}
    clean = _train(problem, X, problem.y_train, tol=problem.refit_tol)
    clean_acc = _accuracy(clean, clean.theta, problem.X_test, problem.y_test)
    grad_norms = []
    bar = tqdm(total=repeats * len(rankings), desc=f"mislabeled {problem.name}", disable=not progress)
    for rep in range(repeats):
        rng = np.random.default_rng(seed + rep)
        y_noisy, flipped = flip_labels(y_true, flip_fraction, problem.n_classes, rng)
        is_flipped = np.zeros(n, bool)
        is_flipped[flipped] = True
        y_noisy_t = torch.as_tensor(y_noisy)
        obj = _train(problem, X, y_noisy_t)
        grad_norms.append(obj.risk_grad().norm().item())
        base_acc = _accuracy(obj, obj.theta, problem.X_test, problem.y_test)
        shared: dict[str, float] = {}
        att: Optional[Attributor] = None
        probs: Optional[np.ndarray] = None
        if {"self_influence", "influence_loo", "trusted"} & set(rankings):
            t = time.perf_counter()
            att = problem.attributor(obj)
            if {"self_influence", "influence_loo"} & set(rankings):
                self_s = att.self_scores().detach().cpu().numpy()
            shared["att"] = time.perf_counter() - t
        if {"cv_loss", "cleanlab"} & set(rankings):
            t = time.perf_counter()
            probs = cross_val_probs(problem, X, y_noisy, cv_folds, seed + rep)
            shared["cv"] = time.perf_counter() - t

        for r in rankings:
            t = time.perf_counter()
            if r == "self_influence":
                order = _order(self_s)
            elif r == "influence_loo":
                loo = obj.losses().cpu().numpy() + self_s / n
                order = _order(loo)
            elif r == "train_loss":
                order = _order(obj.losses().cpu().numpy())
            elif r == "cv_loss":
                p = probs[np.arange(n), y_noisy]
                order = _order(-np.log(np.clip(p, 1e-300, None)))
            elif r == "cleanlab":
                order = cleanlab_order(y_noisy, probs)
            elif r == "trusted":
                harm = -att.scores(*trusted).sum(0).detach().cpu().numpy()
                order = _order(harm)
            else:  # random
                order = np.random.default_rng(10_000 + seed + rep).permutation(n)
            t_rank = time.perf_counter() - t
            hits = np.concatenate([[0], np.cumsum(is_flipped[order])])
            found[r][rep] = hits[np.round(fr * n).astype(int)] / len(flipped)
            for j, f in enumerate(af):
                k = int(round(f * n))
                if k == 0:
                    acc[r][rep, j] = base_acc
                    continue
                y_fix = y_noisy.copy()
                y_fix[order[:k]] = y_true[order[:k]]
                theta = _refit(problem, obj, torch.as_tensor(y_fix))
                acc[r][rep, j] = _accuracy(obj, theta, problem.X_test, problem.y_test)
            uses = {"self_influence": "att", "influence_loo": "att", "trusted": "att", "cv_loss": "cv", "cleanlab": "cv"}
            seconds[r] += t_rank + shared.get(uses.get(r, ""), 0.0)  # time to rank, not to retrain
            bar.update(1)
    bar.close()
    seconds = {r: s / repeats for r, s in seconds.items()}
    if max(grad_norms) > 1e-5:
        notes.append(f"training stopped at ‖∇R‖ up to {max(grad_norms):.1e} (train_tol {problem.train_tol:g})")
    settings = dict(flip_fraction=flip_fraction, repeats=repeats, seed=seed, cv_folds=cv_folds,
                    weight_decay=problem.weight_decay, loss=problem.loss, n_train=n, n_test=len(problem.y_test),
                    attributor=getattr(problem.attributor, "description", repr(problem.attributor)),
                    n_trusted=None if trusted is None else len(trusted[1]))
    return MislabeledResult(problem.name, problem.description or problem.name, fr, af, found, acc, clean_acc,
                            settings, seconds, notes)


def recommend(results: Sequence[MislabeledResult], fraction: float = 0.1) -> dict[str, str]:
    """Per problem, the ranking that found the most flips at ``fraction`` checked."""
    return {r.problem: r.best(fraction) for r in results}


def format_table(result: MislabeledResult, check: Sequence[float] = (0.05, 0.1, 0.2, 0.3)) -> str:
    """A plain-text table (mean ± std over repeats)."""
    rows = result.table(check)
    cols = [c for c in rows[0] if c not in ("ranking", "seconds")]
    head = f"{'ranking':<16}" + "".join(f"{c:>15}" for c in cols) + f"{'rank s':>8}"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = "".join(f"{row[c][0]:>8.3f}±{row[c][1]:<6.3f}" for c in cols)
        lines.append(f"{row['ranking']:<16}{cells}{row['seconds']:>8.2f}")
    return "\n".join(lines)
