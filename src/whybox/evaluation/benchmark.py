"""One table that ranks attributors against retraining: method × task × metric, with fit and score time.

Metrics (all against ground truth computed by retraining, cached on disk):

* ``loo_top`` / ``loo_random``: mean Pearson and Spearman, over the highest-loss test points, between a
  method's scores and the actual leave-one-out change of the test loss, on a training subset shared
  by every method and test point (the reference influence's top-k by |score| for the highest-loss
  test point, and k random points);
* ``lds``: linear datamodeling score over random subsets (``evaluation.lds``);
* a test point whose predictions are constant (FastIF outside its candidates) counts as correlation 0;
* ``mislabel_auc`` / ``found_at_10``: ROC AUC and fraction of flipped labels found in the top 10 %
  when 10 % of the training labels are flipped and the model retrained, ranking by ``self_scores``;
* ``fit_s`` / ``score_s`` / ``self_s``: seconds to build and fit the method, to score the test points
  against every training point, and to fit it again on the flipped problem and compute the n self-scores.

Methods by name: every ``study.METHODS`` name, ``influence:SOLVER`` for influence with a named solver
(``influence:cg``, ``influence:arnoldi``, ...; ``curvature.SOLVERS``); ``tracin`` runs over the
checkpoints the zoo trainer saves (θ at each L-BFGS round, η = 1). A method that refuses (an error) gets a row of NaN with the
error in ``note``; a warning a method raises while fitting or scoring is kept in ``note`` too.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from whybox.evaluation.cache import cached_rows, problem_key
from whybox.evaluation.lds import lds_from_scores, random_subsets, subset_ground_truth
from whybox.evaluation.metrics import fraction_found, mislabel_auc, rowwise_correlations
from whybox.objective import Objective
from whybox.zoo.train import retrain


@dataclass
class Task:
    """A reference model trained on embedded data; ``damping`` is what influence needs on it."""

    name: str
    dataset: str
    build: Callable  # zoo.Split -> nn.Module
    weight_decay: float = 0.01
    damping: float = 0.0
    images: bool = False  # feed [N, C, H, W] images instead of flat features

    def train(self, y_override: np.ndarray | None = None, checkpoints: list | None = None):
        """(objective at θ̂, X_test, y_test, ‖∇R‖, classes); ``y_override`` replaces the training labels;
        ``checkpoints`` (a list) receives θ at the start of every L-BFGS round (for TracIn)."""
        from whybox import zoo

        d = zoo.load(self.dataset)
        X, X_test = d.X_train, d.X_test
        if self.images:
            X, X_test = X.reshape(-1, *d.image_shape), X_test.reshape(-1, *d.image_shape)
        y = d.y_train if y_override is None else torch.as_tensor(y_override)
        loss = "logistic" if d.n_classes == 2 else "cross_entropy"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a network's ‖∇R‖ is reported in the table instead
            obj, res = zoo.train(self.build(d), loss, X, y, weight_decay=self.weight_decay, checkpoints=checkpoints)
        return obj, X_test, d.y_test, res.grad_norm, d.n_classes


def _tasks() -> dict[str, Task]:
    from whybox import zoo

    return {
        "digits_lr": Task("digits_lr", "digits", lambda d: zoo.logistic_regression(d.n_features, d.n_classes)),
        "iris_mlp": Task("iris_mlp", "iris", lambda d: zoo.mlp(d.n_features, d.n_classes, hidden=(8,)), damping=0.001),
        "digits_mlp": Task("digits_mlp", "digits", lambda d: zoo.mlp(d.n_features, d.n_classes, hidden=(32,)),
                           damping=0.01),
        "digits_cnn": Task("digits_cnn", "digits", lambda d: zoo.cnn(d.n_classes, in_channels=d.image_shape[0]),
                           damping=0.01, images=True),
    }


TASKS = _tasks()


@dataclass
class BenchmarkSettings:
    """Sizes of one benchmark run (defaults: minutes on a 2-core CPU once the cache is warm)."""

    tasks: list[str] = field(default_factory=lambda: ["digits_lr", "iris_mlp"])
    methods: list[str] = field(default_factory=lambda: ["influence"])  # names: see the module docstring
    n_test: int = 3
    top_k: int = 20
    random_k: int = 20
    lds_subsets: int = 20
    lds_alpha: float = 0.5
    flip_fraction: float = 0.1
    # n self-scores cost n iterative solves with these; their answer is Exact's up to the residual each solve proves
    skip_self_scores: list[str] = field(default_factory=lambda: ["influence:cg", "influence:lissa"])
    tol: float = 1e-8
    cache: str | Path | None = "whybox-out/cache"
    seed: int = 0


def _loo(objective: Objective, X, y, idx: Sequence[int], tol: float, cache, progress: bool) -> np.ndarray:
    """``[m, k]`` actual test-loss change without each training point (cached)."""
    base = objective.losses(X, y).cpu().numpy()

    def without(j: int) -> np.ndarray:
        theta = retrain(objective, remove=[int(idx[j])], tol=tol).theta
        return objective.losses(X, y, theta=theta).cpu().numpy() - base

    name = "loo-" + problem_key(objective, X, y, np.asarray(idx), tol)
    return cached_rows(cache, name, len(idx), len(X), without, "leave-one-out retraining", progress).T


def check_methods(methods: Sequence[str]) -> list[str]:
    """The names among ``methods`` that the benchmark does not know (see the module docstring)."""
    from whybox.curvature import SOLVERS
    from whybox.study import METHODS

    def known(m: str) -> bool:
        name, _, solver = m.partition(":")
        return m in METHODS or (name == "influence" and solver in SOLVERS)

    return [m for m in methods if not known(m)]


def _make(objective: Objective, method: str, damping: float, checkpoints: list | None = None):
    from whybox.study import MethodSettings, make_attributor

    name, _, solver = method.partition(":")
    return make_attributor(objective, MethodSettings(method=name, solver=solver or "auto", damping=damping), checkpoints)


def run_benchmark(settings: BenchmarkSettings, progress: bool = True) -> list[dict]:
    """Rows of the table: one per task × method (methods by their ``--method`` names)."""
    unknown = [t for t in settings.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {sorted(TASKS)}")
    if check_methods(settings.methods):
        raise ValueError(f"unknown methods {check_methods(settings.methods)}; use study.METHODS names, "
                         "influence:SOLVER or tracin")
    rows = []
    for task_name in settings.tasks:
        task = TASKS[task_name]
        checkpoints: list = []
        obj, X_test, y_test, grad_norm, n_classes = task.train(checkpoints=checkpoints)
        test = obj.losses(X_test, y_test).topk(settings.n_test).indices.tolist()
        X, y = X_test[test], y_test[test]
        reference = _make(obj, "influence", task.damping)
        top = torch.argsort(reference.scores(X[:1], y[:1])[0].abs(), descending=True)[: settings.top_k].tolist()
        rng = np.random.default_rng(settings.seed)
        rand = sorted(rng.choice(obj.n, size=min(settings.random_k, obj.n), replace=False).tolist())
        actual = {"top": _loo(obj, X, y, top, settings.tol, settings.cache, progress),
                  "random": _loo(obj, X, y, rand, settings.tol, settings.cache, progress)}
        masks = random_subsets(obj.n, settings.lds_subsets, settings.lds_alpha, settings.seed)
        subset_losses = subset_ground_truth(obj, X, y, masks, settings.tol, settings.cache, progress)
        flipped_checkpoints: list = []
        flipped_obj, flipped = _flipped_problem(task, obj, n_classes, settings, flipped_checkpoints)
        for method in settings.methods:
            row = {"task": task_name, "method": method, "p": obj.p, "‖∇R‖": f"{grad_norm:.1e}"}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    skip = method in settings.skip_self_scores
                    row.update(_evaluate(obj, method, task.damping, checkpoints, X, y, top, rand, actual, masks,
                                         subset_losses, None if skip else flipped_obj, flipped_checkpoints, flipped))
                    notes = [f"self-scores skipped ({obj.n} iterative solves)"] if skip else []
                    row["note"] = "; ".join(notes + ([_short(caught[0].message)] if caught else []))
                except (ValueError, RuntimeError) as err:  # a solver that refuses, e.g. LiSSA on a bad spectrum
                    row.update(dict.fromkeys(_METRICS, float("nan")))
                    row["note"] = f"{type(err).__name__}: {_short(err)}"
            if progress:
                print(f"{task_name} {method}: " + ", ".join(f"{k} {row[k]:.3g}" for k in _METRICS), flush=True)
            rows.append(row)
    return rows


_METRICS = ("loo_top_pearson", "loo_top_spearman", "loo_random_pearson", "loo_random_spearman", "lds",
            "mislabel_auc", "found_at_10", "fit_s", "score_s", "self_s")


def _short(message, width: int = 90) -> str:
    text = " ".join(str(message).split()).replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def _ranks_nothing_is_zero(corr: np.ndarray, predicted) -> np.ndarray:
    """Correlations with the test points whose predictions are constant (FastIF's zeros outside its
    candidates, so no ranking at all) counted as 0, not dropped: dropping them would average a
    method over only the test points it happens to cover."""
    P = predicted.detach().cpu().numpy() if torch.is_tensor(predicted) else np.asarray(predicted)
    constant = np.ptp(P.reshape(len(P), -1), axis=1) == 0
    corr = np.array(corr, dtype=float)
    corr[constant] = 0.0
    return corr


def _evaluate(obj, method, damping, checkpoints, X, y, top, rand, actual, masks, subset_losses,
              flipped_obj, flipped_checkpoints, flipped) -> dict:
    """One method's metrics on one task (see the module docstring); no mislabel metrics without ``flipped_obj``."""
    t0 = time.perf_counter()
    att = _make(obj, method, damping, checkpoints)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = att.scores(X, y)
    score_s = time.perf_counter() - t0
    row = {}
    for subset, idx in (("top", top), ("random", rand)):
        corr = _ranks_nothing_is_zero(rowwise_correlations(scores[:, idx], actual[subset]), scores[:, idx])
        row[f"loo_{subset}_pearson"], row[f"loo_{subset}_spearman"] = corr.mean(axis=0).tolist()
    removed = (~np.asarray(masks, dtype=bool)).astype(float) @ scores.detach().cpu().numpy().T  # [M, m]
    row["lds"] = float(_ranks_nothing_is_zero(lds_from_scores(scores, masks, subset_losses), removed.T).mean())
    row["mislabel_auc"] = row["found_at_10"] = self_s = float("nan")
    if flipped_obj is not None:
        t0 = time.perf_counter()
        self_scores = _make(flipped_obj, method, damping, flipped_checkpoints).self_scores()
        self_s = time.perf_counter() - t0
        row["mislabel_auc"] = mislabel_auc(self_scores, flipped)
        row["found_at_10"] = fraction_found(self_scores, flipped, 0.1)
    row["fit_s"], row["score_s"], row["self_s"] = fit_s, score_s, self_s
    return row


def _flipped_problem(task: Task, obj: Objective, n_classes: int, settings: BenchmarkSettings,
                     checkpoints: list | None = None):
    """The task retrained with ``flip_fraction`` of its training labels changed to another class."""
    from whybox.zoo import flip_labels

    y, flip = flip_labels(obj.y.cpu().numpy(), settings.flip_fraction, n_classes, np.random.default_rng(settings.seed + 1))
    flipped = np.zeros(len(y), dtype=bool)
    flipped[flip] = True
    return task.train(y_override=y, checkpoints=checkpoints)[0], flipped
