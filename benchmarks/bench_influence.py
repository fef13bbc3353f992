"""Influence functions checked against ground truth, and their cost.

    python benchmarks/bench_influence.py                 # every section at the issue's sizes
    python benchmarks/bench_influence.py --only speed    # one section: agreement, lr, mlp, svm, ablation, pert, speed
    python benchmarks/bench_influence.py --quick         # small sizes (a smoke run)

Prints markdown tables headed by the machine and versions; writes them as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

import whybox
from whybox import zoo
from whybox.evaluation import correlations, loo_ground_truth, perturbation_check, validate
from whybox.utils import machine_info, markdown_table

PROGRESS = sys.stderr.isatty()


def trained_lr():
    d = zoo.load("digits")
    obj, res = zoo.train(zoo.logistic_regression(64, 10), "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    return d, obj, res


def trained_mlp():
    d = zoo.load("digits")
    obj, res = zoo.train(zoo.mlp(64, 10, hidden=(32,)), "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    return d, obj, res


def highest_loss(obj, d, k):
    return obj.losses(d.X_test, d.y_test).topk(k).indices.tolist()


def summarise(rows, model: str) -> list[dict]:
    return [
        {"model": model, "test point": r.test_index, "points": f"{r.subset} {r.k}", "order": r.order,
         "pearson": r.pearson, "spearman": r.spearman, "max |actual|": r.max_abs_actual}
        for r in rows
    ]


# ---------------------------------------------------------------------------- sections
def section_agreement(args) -> list[dict]:
    rows = []
    b = zoo.load("digits", classes=(1, 7))
    obj_b, _ = zoo.train(zoo.logistic_regression(64, 2), "logistic", b.X_train, b.y_train, weight_decay=0.01)
    exact_b = whybox.InfluenceFunction(obj_b, whybox.Exact()).fit().up_loss(b.X_test, b.y_test)
    ref = closed_form(obj_b, b.X_test, b.y_test)
    rows.append({"check": "Exact vs paper §2.3 closed form (binary LR, 1 vs 7, all test × train)",
                 "value": float((exact_b - ref).norm() / ref.norm()), "metric": "relative error", "target": "< 1e-8"})
    d, obj, _ = trained_lr()
    tests = highest_loss(obj, d, 5)
    x, y = d.X_test[tests], d.y_test[tests]
    exact = whybox.InfluenceFunction(obj, whybox.Exact()).fit().up_loss(x, y)
    cg = whybox.InfluenceFunction(obj, whybox.CG()).fit()
    rows.append({"check": "CG (defaults) vs Exact, digits LR, 5 test × 1,200 train",
                 "value": float((cg.up_loss(x, y) - exact).norm() / exact.norm()), "metric": "relative error", "target": "< 1e-6"})
    lissa = whybox.InfluenceFunction(obj, whybox.LiSSA()).fit()
    s = lissa.up_loss(x, y)
    per_test = [float(np.corrcoef(s[j], exact[j])[0, 1]) for j in range(len(tests))]
    rows.append({"check": "LiSSA (defaults) vs Exact, digits LR, worst test point", "value": min(per_test),
                 "metric": "Pearson over all n", "target": ">= 0.995"})
    paper = whybox.InfluenceFunction(obj, whybox.LiSSA(tail_average=False)).fit().up_loss(x, y)
    rows.append({"check": "LiSSA paper estimator h_t/scale (no tail average), worst test point",
                 "value": min(float(np.corrcoef(paper[j], exact[j])[0, 1]) for j in range(len(tests))),
                 "metric": "Pearson over all n", "target": "(for comparison)"})
    return rows


def closed_form(obj, x_test, y_test):
    """Koh & Liang §2.3 for binary logistic regression, written out with the bias as a feature."""
    aug = lambda X: torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)  # noqa: E731
    Xtr, xt = aug(obj.X), aug(x_test)
    ytr, yt = 2.0 * obj.y - 1, 2.0 * y_test - 1
    m, s = Xtr @ obj.theta, torch.sigmoid
    H = (Xtr.T * (s(m) * s(-m))) @ Xtr / obj.n + obj.weight_decay * torch.eye(obj.p, dtype=m.dtype)
    coef = -(yt[:, None] * ytr[None, :]) * s(-yt * (xt @ obj.theta))[:, None] * s(-ytr * m)[None, :]
    return coef * (xt @ torch.linalg.solve(H, Xtr.T))


def section_lr(args) -> list[dict]:
    d, obj, res = trained_lr()
    print(f"digits LR: n={obj.n}, p={obj.p}, ‖∇R‖={res.grad_norm:.1e}")
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    rows = validate(inf, d.X_test, d.y_test, highest_loss(obj, d, args.tests), top_k=args.top_k, random_k=args.random_k,
                    progress=PROGRESS)
    return summarise(rows, "digits logistic regression, w=0.01")


def section_mlp(args) -> list[dict]:
    d, obj, res = trained_mlp()
    inf = whybox.InfluenceFunction(obj, whybox.Exact(damping=args.mlp_damping)).fit()
    diag = inf.curvature.diagnostics
    print(f"digits MLP 64-32-10: p={obj.p}, ‖∇R‖={res.grad_norm:.1e}, H eigenvalues "
          f"[{diag['min_eigenvalue']:.3g}, {diag['max_eigenvalue']:.3g}] with damping {args.mlp_damping}")
    rows = validate(inf, d.X_test, d.y_test, highest_loss(obj, d, args.mlp_tests), top_k=args.mlp_k, random_k=args.mlp_k,
                    progress=PROGRESS, tol=1e-7)
    return summarise(rows, f"digits MLP, damping {args.mlp_damping}")


def section_svm(args) -> list[dict]:
    """Paper §4.3: train with the true hinge (exact, liblinear), score with SmoothHinge(t).

    Two places to take the smooth influence: at the hinge weights themselves (the paper's recipe),
    and at the smooth objective's own optimum reached from them (where ∇R = 0 holds, so the
    influence derivation applies; as t → 0 it tends to the hinge weights).
    """
    b = zoo.load("digits", classes=(1, 7))
    w = 0.01
    theta = zoo.svm_theta(b.X_train, b.y_train, w)
    hinge = whybox.Objective(zoo.linear_svm(64), "hinge", b.X_train, b.y_train, weight_decay=w).with_theta(theta)
    margins = (2.0 * hinge.y - 1) * hinge.outputs(hinge.X).reshape(-1)
    test = int(hinge.losses(b.X_test, b.y_test).argmax())
    x, y = b.X_test[test : test + 1], b.y_test[test : test + 1]
    idx = list(range(hinge.n))
    base = hinge.losses(x, y)
    actual = torch.stack([
        hinge.losses(x, y, theta=zoo.svm_theta(b.X_train, b.y_train, w, remove=[i])) - base for i in idx
    ], dim=1)[0]
    print(f"linear SVM 1 vs 7: n={hinge.n}, on the margin: {((margins - 1).abs() < 1e-6).sum().item()}, "
          f"inside it: {(margins < 1 - 1e-6).sum().item()}; test point {test} (hinge loss {base.item():.3f}); "
          f"actual = hinge test-loss change after exact leave-one-out retraining of all {len(idx)} points")
    rows = []
    for t in args.temperatures:
        smooth = whybox.Objective(zoo.linear_svm(64), whybox.SmoothHinge(t), b.X_train, b.y_train, weight_decay=w)
        places = {"hinge weights": theta}
        if t > 0:
            places["smooth optimum"] = zoo.fit(smooth.with_theta(theta)).theta
        for where, th in places.items():
            at = smooth.with_theta(th)
            inf = whybox.InfluenceFunction(at, whybox.Exact()).fit()
            row = {"influence loss": f"SmoothHinge t={t}" if t else "raw hinge", "taken at": where,
                   "‖∇R‖ there": at.risk_grad().norm().item(), "points": len(idx)}
            for order in (1, 2):
                row[f"pearson order {order}"], row[f"spearman order {order}"] = correlations(
                    inf.removal_effect(x, y, idx, order=order)[0], actual)
            rows.append(row)
    return rows


def section_ablation(args) -> list[dict]:
    """Paper Fig 1 on 1 vs 7 logistic regression: which parts of I_up,loss matter."""
    b = zoo.load("digits", classes=(1, 7))
    obj, _ = zoo.train(zoo.logistic_regression(64, 2), "logistic", b.X_train, b.y_train, weight_decay=0.01)
    test = int(obj.losses(b.X_test, b.y_test).argmax())
    x, y = b.X_test[test : test + 1], b.y_test[test : test + 1]
    aug = lambda X: torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)  # noqa: E731
    Xtr, xt = aug(obj.X), aug(x)[0]
    ytr, yt = 2.0 * obj.y - 1, 2.0 * y[0] - 1
    s = torch.sigmoid
    m = Xtr @ obj.theta
    H = whybox.Exact().fit(obj).hessian
    test_term = -yt * ytr * s(-yt * (xt @ obj.theta))
    train_loss = s(-ytr * m)
    with_H = torch.linalg.solve(H, Xtr.T).T @ xt
    plain = Xtr @ xt
    variants = {
        "full influence": test_term * train_loss * with_H,
        "without train-loss term": test_term * with_H,
        "without H⁻¹": test_term * train_loss * plain,
        "Euclidean inner product (neither)": test_term * plain,
    }
    actual = loo_ground_truth(obj, x, y, range(obj.n), progress=PROGRESS)[0]
    rows = []
    for name, score in variants.items():
        r, sp = correlations(-score / obj.n, actual)
        rows.append({"variant": name, "points": obj.n, "pearson": r, "spearman": sp})
    return rows


def section_pert(args) -> list[dict]:
    d, obj, _ = trained_lr()
    inf = whybox.InfluenceFunction(obj).fit()
    rows = []
    for j in highest_loss(obj, d, 3):
        x, y = d.X_test[j : j + 1], d.y_test[j : j + 1]
        for i in torch.argsort(inf.up_loss(x, y)[0].abs(), descending=True)[:2].tolist():
            c = perturbation_check(inf, x, y, i, step=1e-2)
            rows.append({"test point": j, "train point": i, "‖δ‖": 1e-2, **c})
    return rows


def _timed_run(model: str, solver: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    d, obj, _ = trained_lr() if model == "lr" else trained_mlp()
    tests = highest_loss(obj, d, 5)
    x, y = d.X_test[tests], d.y_test[tests]
    obj = obj.with_theta(obj.theta)  # drop cached gradients: time them too
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    damping = 0.0 if model == "lr" else 0.01
    t0 = time.perf_counter()
    inf = whybox.InfluenceFunction(obj, {"exact": whybox.Exact, "cg": whybox.CG, "lissa": whybox.LiSSA}[solver](damping=damping)).fit()
    t1 = time.perf_counter()
    scores = inf.up_loss(x, y)
    t2 = time.perf_counter()
    G = torch.cat([g for _, g in obj.iter_grads()])
    t3 = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"model": model, "p": obj.p, "solver": solver, "fit s": t1 - t0, "score 5×n s": t2 - t1,
               "fit+score s": t2 - t0, "per-example grads s": t3 - t2, "peak RSS MB": rss1 / 1024,
               "RSS growth MB": (rss1 - rss0) / 1024, "shape": str(tuple(scores.shape)), "n": G.shape[0]})


def section_speed(args) -> list[dict]:
    """Each configuration in a fresh process, so peak memory is its own."""
    ctx = mp.get_context("spawn")
    rows = []
    for model in ("lr", "mlp"):
        for solver in ("exact", "cg", "lissa"):
            q = ctx.Queue()
            proc = ctx.Process(target=_timed_run, args=(model, solver, q))
            proc.start()
            rows.append(q.get())
            proc.join()
    return rows


SECTIONS = {
    "agreement": section_agreement, "lr": section_lr, "mlp": section_mlp, "svm": section_svm,
    "ablation": section_ablation, "pert": section_pert, "speed": section_speed,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), help="sections to run (default: all)")
    ap.add_argument("--tests", type=int, default=5, help="test points (highest loss) for the LOO tables")
    ap.add_argument("--top-k", type=int, default=100, help="most influential training points per test point")
    ap.add_argument("--random-k", type=int, default=100, help="random training points per test point")
    ap.add_argument("--mlp-damping", type=float, default=0.01)
    ap.add_argument("--mlp-tests", type=int, default=2, help="test points for the MLP table (its retraining is slow)")
    ap.add_argument("--mlp-k", type=int, default=20, help="top and random training points per MLP test point")
    ap.add_argument("--temperatures", type=float, nargs="*", default=[0.0, 0.001, 0.01, 0.1])
    ap.add_argument("--quick", action="store_true", help="small sizes: 2 test points, 10 + 10 training points")
    ap.add_argument("--out", default="whybox-out/bench_influence")
    args = ap.parse_args()
    if args.quick:
        args.tests, args.top_k, args.random_k, args.mlp_tests, args.mlp_k = 2, 10, 10, 1, 5
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine_info())
    results = {}
    for name in args.only or list(SECTIONS):
        t = time.perf_counter()
        rows = SECTIONS[name](args)
        print(f"\n## {name} ({time.perf_counter() - t:.0f} s)\n\n{markdown_table(rows)}", flush=True)
        results[name] = rows
        (out / "results.json").write_text(json.dumps({"machine": machine_info(), **results}, indent=1))
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
