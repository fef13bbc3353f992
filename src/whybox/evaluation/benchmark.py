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

Ground truth is "retrain from θ̂ to the nearest minimum" (for a network, the minimum in θ̂'s basin, not
a retraining from scratch): L-BFGS from θ̂ toward ‖∇R‖ ≤ ``tol``. A task with ``newton=True`` (the
digits CNN) starts each leave-one-out retraining with chord-Newton steps with H(θ̂)'s Cholesky factor
while they contract, then L-BFGS, to ``newton_tol``, against a baseline retrained the same way with
nothing removed; its subset retrainings aim for ``lds_tol``. The CNN's tolerances are 1e-7: L-BFGS
stalls near 6e-8 in float64 there, and the chord steps converge for only a few removals (removing one
point changes H's smallest eigenvalues by more than their size, 1.2e-4). The ‖∇R‖ each such
retraining reached is recorded (``facts``). The flipped-label model is trained by the task's own
recipe (from its initialisation).
Per trained problem the dense H is formed once (``SharedHessian``, cached with ``cache``) and shared by
the methods that form it (influence with Exact, FastIF) and the Newton steps; each method using it is
charged the seconds forming it took. Trained models are cached with ``cache`` too (``Task.train``).

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
from whybox.zoo.train import retrain, retrain_baseline


@dataclass
class Task:
    """A reference model trained on embedded data; ``damping`` is what influence needs on it."""

    name: str
    dataset: str
    build: Callable  # zoo.Split -> nn.Module
    weight_decay: float = 0.01
    damping: float = 0.0
    images: bool = False  # feed [N, C, H, W] images instead of flat features
    # leave-one-out ground truth by chord-Newton steps with the Cholesky factor of H(θ̂) (``zoo.retrain(newton=)``),
    # to ‖∇R₋ᵢ‖ ≤ newton_tol, against a baseline retrained the same way with nothing removed
    newton: bool = False
    newton_tol: float = 1e-10
    # ‖∇R‖ the subset (LDS) retrainings aim for (default: the benchmark's tol); their norms are recorded when set
    lds_tol: float | None = None

    def train(self, y_override: np.ndarray | None = None, checkpoints: list | None = None,
              cache: str | Path | None = None):
        """(objective at θ̂, X_test, y_test, ‖∇R‖, classes); ``y_override`` replaces the training labels;
        ``checkpoints`` (a list) receives θ at the start of every L-BFGS round (for TracIn). With ``cache``
        (a folder) the trained θ, its ‖∇R‖ and the checkpoints are kept on disk, keyed by the initial θ,
        data, loss and weight decay, and a later call loads them instead of training again."""
        from whybox import zoo
        from whybox.utils import digest

        d = zoo.load(self.dataset)
        X, X_test = d.X_train, d.X_test
        if self.images:
            X, X_test = X.reshape(-1, *d.image_shape), X_test.reshape(-1, *d.image_shape)
        y = d.y_train if y_override is None else torch.as_tensor(y_override)
        loss = "logistic" if d.n_classes == 2 else "cross_entropy"
        model = self.build(d)
        path = None
        if cache is not None:
            init = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
            key = digest(init, X, y, f"{self.weight_decay}|{loss}|zoo.train defaults", length=20)
            path = Path(cache) / f"train-{self.name}-{key}.pt"
        if path is not None and path.exists():
            saved = torch.load(path)
            obj = Objective(model, loss, X, y, weight_decay=self.weight_decay)
            obj.write_to_model(saved["theta"])
            obj, grad_norm, recorded = obj.with_theta(saved["theta"]), saved["grad_norm"], saved["checkpoints"]
        else:
            recorded = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a network's ‖∇R‖ is reported in the table instead
                obj, res = zoo.train(model, loss, X, y, weight_decay=self.weight_decay, checkpoints=recorded)
            grad_norm = res.grad_norm
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"theta": obj.theta, "grad_norm": grad_norm, "checkpoints": recorded}, path)
        if checkpoints is not None:
            checkpoints.extend(recorded)
        return obj, X_test, d.y_test, grad_norm, d.n_classes


def _tasks() -> dict[str, Task]:
    from whybox import zoo

    return {
        "digits_lr": Task("digits_lr", "digits", lambda d: zoo.logistic_regression(d.n_features, d.n_classes)),
        "iris_mlp": Task("iris_mlp", "iris", lambda d: zoo.mlp(d.n_features, d.n_classes, hidden=(8,)), damping=0.001),
        "digits_mlp": Task("digits_mlp", "digits", lambda d: zoo.mlp(d.n_features, d.n_classes, hidden=(32,)),
                           damping=0.01),
        "digits_cnn": Task("digits_cnn", "digits", lambda d: zoo.cnn(d.n_classes, in_channels=d.image_shape[0]),
                           damping=0.01, images=True, newton=True, newton_tol=1e-7, lds_tol=1e-7),
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


class SharedHessian:
    """H at θ̂ of one trained problem, formed on first use and then shared by every method that would
    form it again (influence with Exact, FastIF around it) and by the Newton warm start of the ground
    truth. With ``cache`` (a folder) it is kept on disk, keyed by the problem, with the seconds forming
    it took (measured when it was formed), which the benchmark adds to the fit time of each method using it."""

    def __init__(self, objective: Objective, cache: str | Path | None = None) -> None:
        self.objective, self.cache = objective, cache
        self._value: tuple[torch.Tensor, float] | None = None

    def get(self) -> tuple[torch.Tensor, float]:
        """(H, seconds it took to form)."""
        if self._value is None:
            path = Path(self.cache) / f"hessian-{problem_key(self.objective)}.pt" if self.cache is not None else None
            if path is not None and path.exists():
                saved = torch.load(path)
                self._value = saved["H"], saved["seconds"]
            else:
                t0 = time.perf_counter()
                H = self.objective.hessian()
                self._value = H, time.perf_counter() - t0
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    torch.save({"H": H, "seconds": self._value[1]}, path)
        return self._value

    @property
    def seconds(self) -> float | None:
        """Seconds forming H took, once it has been formed or loaded; else None."""
        return None if self._value is None else self._value[1]

    def newton_factor(self) -> torch.Tensor:
        """The lower Cholesky factor of the undamped H (``zoo.retrain(newton=...)``); raises
        ``NotPositiveDefiniteError`` when θ̂ is not a minimum."""
        from whybox.curvature import Exact

        return Exact(matrix=self.get()[0]).fit(self.objective).cholesky


def _loo(objective: Objective, X, y, idx: Sequence[int], tol: float, cache, progress: bool,
         newton: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``[m, k]`` actual test-loss change without each training point (cached), and with ``newton``
    (a Cholesky factor of H(θ̂), see ``zoo.retrain``) the ``[k]`` values of ‖∇R₋ᵢ‖ the retrainings
    reached. With ``newton`` the change is measured against ``retrain_baseline`` (the same steps with
    nothing removed), so that θ̂'s own residual gradient cancels."""
    if newton is None:
        base = objective.losses(X, y).cpu().numpy()
    else:
        base = objective.losses(X, y, theta=retrain_baseline(objective, tol=tol, newton=newton).theta).cpu().numpy()

    def without(j: int) -> np.ndarray:
        res = retrain(objective, remove=[int(idx[j])], tol=tol, newton=newton)
        change = objective.losses(X, y, theta=res.theta).cpu().numpy() - base
        return change if newton is None else np.append(change, res.grad_norm)

    if newton is None:  # the key and layout caches already hold
        name = "loo-" + problem_key(objective, X, y, np.asarray(idx), tol)
        return cached_rows(cache, name, len(idx), len(X), without, "leave-one-out retraining", progress).T, None
    name = "loo-newton-" + problem_key(objective, X, y, np.asarray(idx), tol)
    rows = cached_rows(cache, name, len(idx), len(X) + 1, without, "leave-one-out retraining (chord-Newton)", progress)
    return rows[:, :-1].T, rows[:, -1]


def check_methods(methods: Sequence[str]) -> list[str]:
    """The names among ``methods`` that the benchmark does not know (see the module docstring)."""
    from whybox.curvature import SOLVERS
    from whybox.study import METHODS

    def known(m: str) -> bool:
        name, _, solver = m.partition(":")
        return m in METHODS or (name == "influence" and solver in SOLVERS)

    return [m for m in methods if not known(m)]


def _uses_hessian(objective: Objective, method: str) -> bool:
    """Whether ``method`` forms the dense H: influence with Exact (named or ``auto``'s choice) and FastIF around it."""
    from whybox.curvature.registry import default_solver_name

    name, _, solver = method.partition(":")
    return name in ("influence", "fastif") and (solver or default_solver_name(objective.p)) == "exact"


def _make(objective: Objective, method: str, damping: float, checkpoints: list | None = None,
          hessian: SharedHessian | None = None):
    """The fitted attributor ``method`` names; with ``hessian``, a method that forms H uses that one."""
    from whybox.study import FASTIF_CANDIDATES, MethodSettings, make_attributor

    name, _, solver = method.partition(":")
    if hessian is not None and _uses_hessian(objective, method):
        from whybox.attribution import FastIF
        from whybox.curvature import Exact
        from whybox.influence import InfluenceFunction

        influence = InfluenceFunction(objective, Exact(damping, matrix=hessian.get()[0])).fit()
        return influence if name == "influence" else FastIF(influence, k=min(FASTIF_CANDIDATES, objective.n)).fit()
    return make_attributor(objective, MethodSettings(method=name, solver=solver or "auto", damping=damping), checkpoints)


def run_benchmark(settings: BenchmarkSettings, progress: bool = True, facts: dict | None = None) -> list[dict]:
    """Rows of the table: one per task × method (methods by their ``--method`` names). ``facts`` (a dict)
    receives, per task name, how its ground truth was computed and what it reached (tolerances,
    ‖∇R‖ of the retrained models where recorded, seconds)."""
    unknown = [t for t in settings.tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {sorted(TASKS)}")
    if check_methods(settings.methods):
        raise ValueError(f"unknown methods {check_methods(settings.methods)}; use study.METHODS names, "
                         "influence:SOLVER or tracin")
    rows = []
    for task_name in settings.tasks:
        task = TASKS[task_name]
        from whybox.curvature.registry import EXACT_MAX_PARAMS

        fact: dict = {}
        checkpoints: list = []
        t0 = time.perf_counter()
        obj, X_test, y_test, grad_norm, n_classes = task.train(checkpoints=checkpoints, cache=settings.cache)
        fact["train_s"] = time.perf_counter() - t0  # this run's (a cached training loads in well under a second)
        hessian = SharedHessian(obj, settings.cache) if obj.p <= EXACT_MAX_PARAMS else None
        test = obj.losses(X_test, y_test).topk(settings.n_test).indices.tolist()
        X, y = X_test[test], y_test[test]
        reference = _make(obj, "influence", task.damping, hessian=hessian)
        top = torch.argsort(reference.scores(X[:1], y[:1])[0].abs(), descending=True)[: settings.top_k].tolist()
        rng = np.random.default_rng(settings.seed)
        rand = sorted(rng.choice(obj.n, size=min(settings.random_k, obj.n), replace=False).tolist())
        if task.newton and hessian is None:
            raise ValueError(f"task {task_name}: newton=True needs the dense H (p = {obj.p} > {EXACT_MAX_PARAMS})")
        newton = hessian.newton_factor() if task.newton else None
        loo_tol = task.newton_tol if task.newton else settings.tol
        t0 = time.perf_counter()
        (top_change, top_norms), (rand_change, rand_norms) = (
            _loo(obj, X, y, idx, loo_tol, settings.cache, progress, newton) for idx in (top, rand))
        actual = {"top": top_change, "random": rand_change}
        fact.update(loo_tol=loo_tol, loo="chord-Newton with H(θ̂), then L-BFGS" if task.newton else "L-BFGS from θ̂",
                    loo_s=time.perf_counter() - t0)
        if task.newton:
            fact["loo_max_grad_norm"] = float(np.max(np.concatenate([top_norms, rand_norms])))
        t0 = time.perf_counter()
        masks = random_subsets(obj.n, settings.lds_subsets, settings.lds_alpha, settings.seed)
        lds_tol, lds_norms = (settings.tol, None) if task.lds_tol is None else (task.lds_tol, [])
        subset_losses = subset_ground_truth(obj, X, y, masks, lds_tol, settings.cache, progress, grad_norms=lds_norms)
        fact.update(lds_tol=lds_tol, lds_s=time.perf_counter() - t0)
        if lds_norms:
            fact["lds_max_grad_norm"] = max(lds_norms)
        flipped_checkpoints: list = []
        t0 = time.perf_counter()
        flipped_obj, flipped, flipped_norm = _flipped_problem(task, obj, n_classes, settings, flipped_checkpoints)
        fact.update(flipped_train_s=time.perf_counter() - t0, flipped_grad_norm=flipped_norm)
        flipped_hessian = SharedHessian(flipped_obj, settings.cache) if hessian is not None else None
        if facts is not None:
            facts[task_name] = fact
        for method in settings.methods:
            row = {"task": task_name, "method": method, "p": obj.p, "‖∇R‖": f"{grad_norm:.1e}"}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    skip = method in settings.skip_self_scores
                    row.update(_evaluate(obj, method, task.damping, checkpoints, X, y, top, rand, actual, masks,
                                         subset_losses, None if skip else flipped_obj, flipped_checkpoints, flipped,
                                         hessian, flipped_hessian))
                    notes = [f"self-scores skipped ({obj.n} iterative solves)"] if skip else []
                    row["note"] = "; ".join(notes + ([_short(caught[0].message)] if caught else []))
                except (ValueError, RuntimeError) as err:  # a solver that refuses, e.g. LiSSA on a bad spectrum
                    row.update(dict.fromkeys(_METRICS, float("nan")))
                    row["note"] = f"{type(err).__name__}: {_short(err)}"
            if progress:
                print(f"{task_name} {method}: " + ", ".join(f"{k} {row[k]:.3g}" for k in _METRICS), flush=True)
            rows.append(row)
        for key, shared in (("hessian_s", hessian), ("flipped_hessian_s", flipped_hessian)):
            if shared is not None and shared.seconds is not None:
                fact[key] = shared.seconds
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


def _shared_seconds(objective: Objective, method: str, hessian: SharedHessian | None) -> float:
    """Seconds forming the shared H took, if ``method`` uses it (formed now, before the method's clock starts)."""
    return hessian.get()[1] if hessian is not None and _uses_hessian(objective, method) else 0.0


def _evaluate(obj, method, damping, checkpoints, X, y, top, rand, actual, masks, subset_losses,
              flipped_obj, flipped_checkpoints, flipped, hessian=None, flipped_hessian=None) -> dict:
    """One method's metrics on one task (see the module docstring); no mislabel metrics without ``flipped_obj``.
    A method using the shared H is charged the seconds forming it took (``SharedHessian``)."""
    formed = _shared_seconds(obj, method, hessian)
    t0 = time.perf_counter()
    att = _make(obj, method, damping, checkpoints, hessian)
    fit_s = formed + time.perf_counter() - t0
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
        formed = _shared_seconds(flipped_obj, method, flipped_hessian)
        t0 = time.perf_counter()
        self_scores = _make(flipped_obj, method, damping, flipped_checkpoints, flipped_hessian).self_scores()
        self_s = formed + time.perf_counter() - t0
        row["mislabel_auc"] = mislabel_auc(self_scores, flipped)
        row["found_at_10"] = fraction_found(self_scores, flipped, 0.1)
    row["fit_s"], row["score_s"], row["self_s"] = fit_s, score_s, self_s
    return row


def _flipped_problem(task: Task, obj: Objective, n_classes: int, settings: BenchmarkSettings,
                     checkpoints: list | None = None):
    """The task trained by its own recipe with ``flip_fraction`` of its training labels changed to another
    class: (objective, which labels were flipped, its ‖∇R‖)."""
    from whybox.zoo import flip_labels

    y, flip = flip_labels(obj.y.cpu().numpy(), settings.flip_fraction, n_classes, np.random.default_rng(settings.seed + 1))
    flipped = np.zeros(len(y), dtype=bool)
    flipped[flip] = True
    obj, _, _, grad_norm, _ = task.train(y_override=y, checkpoints=checkpoints, cache=settings.cache)
    return obj, flipped, grad_norm
