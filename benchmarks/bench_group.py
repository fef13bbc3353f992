"""Group influence against retraining without the group: first order, the Newton step, Basu et al. 2020.

    python benchmarks/bench_group.py            # digits LR, 20 groups per cell, 10 test points (~3 min)
    python benchmarks/bench_group.py --quick    # 5 groups per cell, 5 test points

For each kind of group (``random``; coherent: ``class`` = random points of one class, ``cluster`` =
the nearest training points, in input space, to a random training point) and each size (1–20 % of
n), the actual change of each test point's loss after retraining without the group (``zoo.retrain``
from θ̂, normaliser n kept, cached on disk) is compared with

* ``order 1``: the sum of the members' influences (Koh et al. 2019);
* ``newton``: one Newton step without the group (order 2 in ``GroupInfluence``; test loss exact);
* ``basu``: Basu et al. (2020)'s second-order group influence (series cut after its second term).

Per cell: Pearson and Spearman across the groups, per test point, averaged over test points (Basu et
al.'s protocol); ``slope``: least-squares slope of predicted on actual over all (test, group) pairs
(1 = right magnitude); ``rel_err`` = ‖predicted − actual‖/‖actual‖. Writes benchmarks/results/group.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import whybox
from whybox import zoo
from whybox.evaluation import group_ground_truth, rowwise_correlations
from whybox.evaluation.cache import cached_rows, problem_key
from whybox.utils import machine_info, markdown_table

METHODS = {"order 1": 1, "newton": 2, "basu": "basu"}


def make_groups(kind: str, size: int, count: int, X: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> list[list[int]]:
    """``count`` groups of ``size`` training rows of one kind (fewer for ``class`` when classes are small)."""
    n = len(y)
    if kind == "random":
        return [sorted(rng.choice(n, size, replace=False).tolist()) for _ in range(count)]
    if kind == "class":
        big = [c for c in np.unique(y) if (y == c).sum() >= size]
        return [sorted(rng.choice(np.flatnonzero(y == big[j % len(big)]), size, replace=False).tolist())
                for j in range(count)] if big else []
    if kind == "cluster":
        centres = rng.choice(n, count, replace=False)
        dist = ((X[centres, None, :] - X[None, :, :]) ** 2).sum(-1)
        return [sorted(np.argsort(d, kind="stable")[:size].tolist()) for d in dist]
    raise ValueError(f"unknown group kind {kind!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--kinds", nargs="*", default=["random", "class", "cluster"])
    ap.add_argument("--groups", type=int, default=20, help="groups per (kind, size) cell")
    ap.add_argument("--n-test", type=int, default=10, help="random test points")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--tol", type=float, default=1e-8, help="gradient norm each retraining reaches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="whybox-out/cache")
    ap.add_argument("--quick", action="store_true", help="5 groups per cell, 5 test points")
    ap.add_argument("--out", default="benchmarks/results/group")
    a = ap.parse_args()
    if a.quick:
        a.groups, a.n_test = 5, 5
    torch.set_num_threads(1)

    d = zoo.load("digits")
    obj, res = zoo.train(zoo.logistic_regression(d.n_features, d.n_classes), "cross_entropy", d.X_train, d.y_train,
                         weight_decay=a.weight_decay)
    rng = np.random.default_rng(a.seed)
    test = sorted(rng.choice(len(d.X_test), a.n_test, replace=False).tolist())
    X, y = d.X_test[test], d.y_test[test]
    t0 = time.perf_counter()
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    fit_s = time.perf_counter() - t0
    Xtr, ytr = obj.X.cpu().numpy(), obj.y.cpu().numpy()

    rows, retrain_s, retrains = [], 0.0, 0
    for kind in a.kinds:
        for frac in a.fractions:
            size = max(1, round(frac * obj.n))
            groups = make_groups(kind, size, a.groups, Xtr, ytr, rng)
            if not groups:
                print(f"skipped: {kind} groups of {size} (no class has {size} training points)")
                continue
            key = problem_key(obj, X, y, repr(groups), a.tol)
            t0 = time.perf_counter()
            actual = torch.as_tensor(cached_rows(
                a.cache, f"group-{key}", len(groups), len(X),
                lambda j: group_ground_truth(obj, X, y, [groups[j]], tol=a.tol, progress=False)[:, 0].cpu().numpy(),
                f"retraining without {kind} groups of {size}")).T  # [m, groups]
            retrain_s += time.perf_counter() - t0
            retrains += len(groups)
            for name, order in METHODS.items():
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    pred = whybox.GroupInfluence(inf, groups, order=order).scores(X, y)
                score_s = time.perf_counter() - t0
                corr = np.nanmean(rowwise_correlations(pred, actual), axis=0)
                rows.append({
                    "groups": kind, "size": size, "% of n": 100 * size / obj.n, "method": name,
                    "pearson": float(corr[0]), "spearman": float(corr[1]),
                    "slope": float((pred * actual).sum() / (actual**2).sum()),
                    "rel_err": float((pred - actual).norm() / actual.norm()),
                    "score_s": score_s, "actual_mean_abs": float(actual.abs().mean()),
                })

    header = machine_info()
    setup = (f"digits logistic regression (n = {obj.n}, p = {obj.p}, weight decay {a.weight_decay}, ‖∇R(θ̂)‖ = "
             f"{res.grad_norm:.1e}); {a.n_test} random test points; up to {a.groups} groups per cell; retraining to "
             f"‖∇R‖ ≤ {a.tol:g}; Exact H fitted in {fit_s:.2f} s; {retrains} group retrainings "
             f"({retrain_s:.1f} s this run, 0 when cached)")
    table = markdown_table(rows, ".3f")
    summary = markdown_table(_summary(rows), ".3f")
    text = f"{header}\n\n{setup}\n\n{table}\n\nMean over cells, by kind of group:\n\n{summary}\n"
    print(text)
    out = Path(a.out).with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def _summary(rows: list[dict]) -> list[dict]:
    out = []
    for kind in dict.fromkeys(r["groups"] for r in rows):
        for name in METHODS:
            cell = [r for r in rows if r["groups"] == kind and r["method"] == name]
            out.append({"groups": kind, "method": name, **{k: float(np.mean([r[k] for r in cell]))
                                                           for k in ("pearson", "spearman", "slope", "rel_err")}})
    return out


if __name__ == "__main__":
    main()
