"""Small digits tasks side by side with other libraries: time to influence scores and agreement with exact.

    /path/to/bench-venv/bin/python benchmarks/peers/bench_small.py          # LR, MLP, CNN
    ... bench_small.py --tasks digits_lr --repeats 5

Install the other libraries in a separate venv (benchmarks/peers/README.md says how: their wheels pin
other torch builds). Every method runs in this one process on the same trained model, the same 5 test
points and the same 1,200 training points (scikit-learn digits, float64), after one shared torch.func
warm-up; the time is the best of ``--repeats`` runs of fit + scores (so a cold start's one-off cost is
not counted for anyone). Agreement: Pearson r of all 5 × 1,200 scores with whybox ``Exact`` (the
dense (H + λI)⁻¹, checked by its residual) — |r|, since libraries differ in sign convention.

The curvature is the same for everyone: H of the mean training loss plus (weight decay + damping)·I
(dattri: ``regularization``); whybox's own settings are its defaults except the solver named.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import whybox
from whybox.evaluation.benchmark import TASKS
from whybox.utils import machine_info, markdown_table


def whybox_method(solver: str, **kwargs):
    def run(task, obj, X, y):
        obj._train_grads = obj._head_cache = None  # nothing cached from a previous run
        curvature = {"exact": whybox.Exact, "cg": whybox.CG}[solver](damping=task.damping, **kwargs)
        scores = whybox.InfluenceFunction(obj, curvature).fit().scores(X, y)
        d = curvature.diagnostics
        run.note = (f"residual {d['relative_residual']:.1e}"
                    + (f", {d['iterations']} iterations, {d['hvps']} HVPs" if "iterations" in d else ""))
        return scores
    return run


def dattri_method(kind: str, **kwargs):
    def run(task, obj, X, y):
        from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorExplicit
        from dattri.task import AttributionTask

        model = obj.model

        def loss(params, data):
            x, t = data
            return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, x), t)

        task_ = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
        cls = {"cg": IFAttributorCG, "explicit": IFAttributorExplicit}[kind]
        att = cls(task=task_, regularization=obj.weight_decay + task.damping, **kwargs)
        train = DataLoader(TensorDataset(obj.X, obj.y), batch_size=obj.n)
        att.cache(train)
        with torch.no_grad():
            return att.attribute(train, DataLoader(TensorDataset(X, y), batch_size=len(X))).T
    return run


def kronfluence_ekfac():
    def run(task, obj, X, y):
        import copy
        import tempfile

        from _kronfluence import classify_task
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments

        task_ = classify_task()

        # a container around the model: Kronfluence wraps Linear/Conv2d children, and a bare nn.Linear has none
        model = prepare_model(torch.nn.Sequential(copy.deepcopy(obj.model)), task_)
        with tempfile.TemporaryDirectory() as out:
            analyzer = Analyzer("small", model, task_, cpu=True, disable_tqdm=True, output_dir=out)
            train = TensorDataset(obj.X, obj.y)
            analyzer.fit_all_factors("f", train, per_device_batch_size=obj.n, factor_args=FactorArguments(strategy="ekfac"),
                                     overwrite_output_dir=True)
            analyzer.compute_pairwise_scores("s", "f", TensorDataset(X, y), train, per_device_query_batch_size=len(X),
                                             per_device_train_batch_size=obj.n, overwrite_output_dir=True,
                                             score_args=ScoreArguments(damping_factor=obj.weight_decay + task.damping))
            return analyzer.load_pairwise_scores("s")["all_modules"]
    return run


METHODS = {
    "whybox Exact": whybox_method("exact"),
    "whybox CG": whybox_method("cg"),
    "whybox CG (rtol 1e-4)": whybox_method("cg", rtol=1e-4),
    "whybox CG (rtol 1e-3)": whybox_method("cg", rtol=1e-3),
    "whybox CG (rtol 1e-2)": whybox_method("cg", rtol=1e-2),
    "whybox CG (rtol 1e-2, no preconditioner)": whybox_method("cg", rtol=1e-2, preconditioner=None),
    "whybox CG (float64 iterations)": whybox_method("cg", precision="model"),
    "whybox CG (rtol 1e-2, float64 iterations)": whybox_method("cg", rtol=1e-2, precision="model"),
    "dattri CG (defaults: 10 iterations)": dattri_method("cg"),
    "dattri CG (20 iterations)": dattri_method("cg", max_iter=20, tol=1e-10),
    "dattri CG (200 iterations, tol 1e-10)": dattri_method("cg", max_iter=200, tol=1e-10),
    "dattri Explicit": dattri_method("explicit"),
    "Kronfluence EK-FAC (not exact)": kronfluence_ekfac(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["digits_lr", "digits_mlp", "digits_cnn"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--test", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        obj, X_test, y_test, grad_norm, _ = task.train()
        X, y = X_test[: args.test], y_test[: args.test]
        reference = whybox_method("exact")(task, obj, X, y).reshape(-1).numpy()  # also the warm-up
        for method in args.methods:
            times, scores = [], None
            for _ in range(args.repeats):
                start = time.perf_counter()
                try:
                    scores = METHODS[method](task, obj, X, y)
                except Exception as err:  # a library that cannot run this task: say so in the table
                    scores = err
                    break
                times.append(time.perf_counter() - start)
            if isinstance(scores, Exception):
                rows.append({"task": name, "p": obj.p, "method": method, "seconds": float("nan"),
                             "vs fastest other": float("nan"), "|r| vs exact": "", "1 − |r|": float("nan"),
                             "note": f"{type(scores).__name__}: {str(scores)[:60]}"})
                continue
            r = abs(np.corrcoef(scores.detach().reshape(-1).double().numpy(), reference)[0, 1])
            rows.append({"task": name, "p": obj.p, "method": method, "seconds": min(times),
                         "vs fastest other": float("nan"), "|r| vs exact": f"{r:.6f}", "1 − |r|": 1 - r,
                         "note": getattr(METHODS[method], "note", "")})
        others = [r["seconds"] for r in rows if r["task"] == name and not r["method"].startswith("whybox")]
        for r in rows:
            if r["task"] == name and others:
                r["vs fastest other"] = r["seconds"] / np.nanmin(others)
    print(machine_info())
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(markdown_table(rows, floatfmt=".3g"))


if __name__ == "__main__":
    main()
