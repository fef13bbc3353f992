"""The paper's experiments on real 28×28 MNIST (the 5,000-image subset of `pip install whybox[mnist]`).

    PYTHONPATH=src python benchmarks/bench_mnist.py fig2 [--only lr|cnn] [--lr-top 30 --lr-random 30 ...]
    PYTHONPATH=src python benchmarks/bench_mnist.py attack [options of `whybox attack`]
    PYTHONPATH=src python benchmarks/bench_mnist.py attack-all [--model network|logistic --workers 2]
    PYTHONPATH=src python benchmarks/bench_mnist.py attack-why [--targets 5 --budgets ... --sizes ...]
    PYTHONPATH=src python benchmarks/bench_mnist.py svm-margins [--temperatures 1,0.001]
    PYTHONPATH=src python benchmarks/bench_mnist.py mislabeled [options of `whybox mislabeled`]
    PYTHONPATH=src python benchmarks/bench_mnist.py compare [options of `whybox compare`]

fig2 (paper §4.1-4.2, Fig 2): predicted −(1/n)·I_up,loss vs the actual test-loss change after
leave-one-out retraining, for 10-class L2 logistic regression (w = 0.01, no bias: p = 7,840, as in the
paper) with CG and with the paper's LiSSA, and for a small CNN stopped before convergence, damping 0.01.
attack-why measures what limits the training-set attack at 28×28 (one perturbed image, both models):
the L∞ budget (the paper's continuous ±0.5 level, then integer budgets), and the training-set size.
The other sub-commands run the verbs with --dataset mnist (and their MNIST defaults, which any option
given overrides). Each prints machine and versions first; PNG and JSON go to --out.

Defaults are sized to run in a few minutes on a 2-core CPU (measured times in docs/mnist.md); the paper's
sizes by options: fig2 --lr-top 500 --lissa-repeats 10 --cnn-top 100; attack --targets 0 (all correct
test points) --budgets 1,2,3,5,10; mislabeled --repeats 40 (the paper's Fig 6; it used Enron spam);
compare --n-test 0 is not offered: the paper shows one test image (--n-test 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import whybox
from whybox import zoo
from whybox.evaluation import correlations, loo_ground_truth
from whybox.utils import machine_info, markdown_table

PROGRESS = sys.stderr.isatty()


def _stratified_head(split: zoo.Split, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` training images of each class (a fixed, balanced subset)."""
    y = split.y_train.numpy()
    rows = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(split.n_classes)]))
    return split.X_train[rows], split.y_train[rows]


def _misclassified(obj: whybox.Objective, X, y, count: int) -> list[int]:
    wrong = torch.nonzero(obj.predict(X)[0] != y).reshape(-1).tolist()
    if not wrong:
        raise SystemExit("the model gets every test point right: no misclassified point to explain")
    return wrong[:count]


def _row(model: str, solver: str, test: int, subset: str, pred: torch.Tensor, actual: torch.Tensor, seconds: float,
         paper: str) -> dict:
    r, s = correlations(pred, actual)
    slope = float((pred * actual).sum() / (actual * actual).sum())  # least squares through 0: 1 = on the diagonal
    return {"model": model, "solver": solver, "test point": test, "points": f"{subset} {len(actual)}",
            "pearson": r, "spearman": s, "slope": slope, "max |actual|": float(actual.abs().max()), "score s": seconds,
            "paper": paper}


def fig2_lr(a, panels: list, rows: list) -> None:
    d = zoo.load("mnist", seed=a.seed)
    t = time.perf_counter()
    model = nn.Linear(784, 10, bias=False, dtype=torch.float64)  # the paper's model: no bias, p = 7,840
    obj, res = zoo.train(model, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    acc = float((obj.predict(d.X_test)[0] == d.y_test).double().mean())
    print(f"\nMNIST logistic regression: n = {obj.n}, p = {obj.p}, w = 0.01, ‖∇R‖ = {res.grad_norm:.1e}, "
          f"test accuracy {acc:.3f}, trained in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    exact = whybox.InfluenceFunction(obj, whybox.Exact()).fit()  # H formed from the layer inputs, Cholesky
    print(f"  Exact: H ({obj.p}²) formed and factorised in {time.perf_counter() - t:.0f} s", flush=True)
    newton = exact.curvature.cholesky if a.newton else None  # each leave-one-out retraining starts with Newton steps
    cg = whybox.InfluenceFunction(obj, whybox.CG(rtol=1e-10)).fit()
    lissa = whybox.InfluenceFunction(obj, whybox.LiSSA(
        scale=a.lissa_scale, depth=a.lissa_depth, repeats=a.lissa_repeats, batch_size=1, tail_average=False,
        max_rounds=1, seed=a.seed)).fit()
    for j in _misclassified(obj, d.X_test, d.y_test, a.tests):
        x, y = d.X_test[j : j + 1], d.y_test[j : j + 1]
        t = time.perf_counter()
        s_ex = exact.scores(x, y)[0]
        t_ex = time.perf_counter() - t
        t = time.perf_counter()
        s_cg = cg.scores(x, y)[0]
        t_cg = time.perf_counter() - t
        subsets = {"top": torch.argsort(s_ex.abs(), descending=True)[: a.lr_top].tolist()}
        if a.lr_random:
            subsets["random"] = sorted(np.random.default_rng(a.seed + j).choice(obj.n, a.lr_random, replace=False).tolist())
        t = time.perf_counter()
        with warnings.catch_warnings():  # the paper's LiSSA leaves a residual on purpose; it is reported below
            warnings.simplefilter("ignore")
            s_li = lissa.scores(x, y)[0]
        t_li = time.perf_counter() - t
        diag = lissa.curvature.diagnostics
        for subset, idx in subsets.items():
            t = time.perf_counter()
            actual = loo_ground_truth(obj, x, y, idx, tol=a.lr_tol, progress=PROGRESS, newton=newton)[0]
            print(f"  test {j}: {len(idx)} leave-one-out retrainings ({subset}) in {time.perf_counter() - t:.0f} s", flush=True)
            rows.append(_row("LR", "Exact (Cholesky)", j, subset, s_ex[idx], actual, t_ex,
                             "on the diagonal (top 500)" if subset == "top" else "-"))
            rows.append(_row("LR", "CG (rtol 1e-10)", j, subset, s_cg[idx], actual, t_cg, "-"))
            rows.append(_row("LR", f"LiSSA r={a.lissa_repeats} t={a.lissa_depth} scale={a.lissa_scale:g}", j, subset,
                             s_li[idx], actual, t_li, "on the diagonal, r=10 t=5000" if subset == "top" else "-"))
            if subset == "top" and j == _misclassified(obj, d.X_test, d.y_test, 1)[0]:
                panels.append(("LR, Exact", s_ex[idx].numpy(), actual.numpy()))
                panels.append((f"LR, LiSSA (r={a.lissa_repeats}, t={a.lissa_depth})", s_li[idx].numpy(), actual.numpy()))
        print(f"  CG residual {cg.curvature.diagnostics.get('relative_residual', float('nan')):.1e}; LiSSA residual "
              f"{diag.get('relative_residual', float('nan')):.2f} (H eigenvalues {diag['min_eigenvalue']:.3g} … "
              f"{diag['max_eigenvalue']:.3g}: depth {a.lissa_depth} leaves (1 − λ_min/scale)^t = "
              f"{(1 - diag['min_eigenvalue'] / a.lissa_scale) ** a.lissa_depth:.2f} of the slowest direction)", flush=True)


def fig2_cnn(a, panels: list, rows: list) -> None:
    d = zoo.load("mnist", seed=a.seed, images=True)
    X, y = _stratified_head(d, a.cnn_train // 10)
    t = time.perf_counter()
    with warnings.catch_warnings():  # stopped before convergence on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        obj, res = zoo.train(zoo.mnist_cnn(10, seed=a.seed), "cross_entropy", X, y, weight_decay=a.cnn_weight_decay,
                             max_iter=a.cnn_iter)
    acc = float((obj.predict(d.X_test)[0] == d.y_test).double().mean())
    print(f"\nMNIST CNN: n = {obj.n}, p = {obj.p}, w = {a.cnn_weight_decay}, {a.cnn_iter} L-BFGS iterations: "
          f"‖∇R‖ = {res.grad_norm:.1e} (not converged), test accuracy {acc:.3f}, {time.perf_counter() - t:.0f} s", flush=True)
    inf = whybox.InfluenceFunction(obj, whybox.CG(damping=a.damping, rtol=1e-8)).fit()
    for j in _misclassified(obj, d.X_test, d.y_test, a.cnn_tests):
        x, yt = d.X_test[j : j + 1], d.y_test[j : j + 1]
        t = time.perf_counter()
        s = inf.scores(x, yt)[0]
        t_s = time.perf_counter() - t
        idx = torch.argsort(s.abs(), descending=True)[: a.cnn_top].tolist()
        t = time.perf_counter()
        actual = loo_ground_truth(obj, x, yt, idx, tol=1e-12, max_iter=a.cnn_retrain_iter, baseline=True,
                                  progress=PROGRESS)[0]
        print(f"  test {j}: {len(idx)} retrainings of {a.cnn_retrain_iter} L-BFGS iterations from θ̃ (minus a baseline "
              f"retraining with nothing removed) in {time.perf_counter() - t:.0f} s; CG: "
              f"{inf.curvature.diagnostics.get('iterations')} iterations, residual "
              f"{inf.curvature.diagnostics.get('relative_residual', float('nan')):.1e}", flush=True)
        rows.append(_row("CNN", f"CG, damping {a.damping:g}", j, "top", s[idx], actual, t_s, "Pearson 0.86 (top 100)"))
        if not any(p[0].startswith("CNN") for p in panels):
            panels.append((f"CNN, CG, damping {a.damping:g}", s[idx].numpy(), actual.numpy()))


def fig2(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_mnist.py fig2", description="Paper Fig 2 on MNIST.")
    ap.add_argument("--only", choices=["lr", "cnn"], help="run one model (default both)")
    ap.add_argument("--tests", type=int, default=1, help="LR: misclassified test points (first ones in the test split)")
    ap.add_argument("--lr-top", type=int, default=20, help="LR: most influential points by |CG score| (paper: 500)")
    ap.add_argument("--lr-random", type=int, default=20, help="LR: random training points (0 = none)")
    ap.add_argument("--lr-tol", type=float, default=1e-8, help="LR: ‖∇R‖ each leave-one-out retraining reaches")
    ap.add_argument("--no-newton", dest="newton", action="store_false",
                    help="LR: retrain with L-BFGS alone (default: Newton steps with H(θ̂)'s Cholesky factor first)")
    ap.add_argument("--lissa-repeats", type=int, default=1, help="LiSSA r (paper: 10)")
    ap.add_argument("--lissa-depth", type=int, default=5000, help="LiSSA t (paper: 5,000)")
    ap.add_argument("--lissa-scale", type=float, default=25.0, help="LiSSA scale (paper: 25)")
    ap.add_argument("--cnn-train", type=int, default=1000, help="CNN: training images (balanced subset of the 4,000)")
    ap.add_argument("--cnn-iter", type=int, default=150, help="CNN: L-BFGS iterations (stopped before convergence)")
    ap.add_argument("--cnn-weight-decay", type=float, default=0.001, help="CNN: L2 weight decay (paper: 0.001)")
    ap.add_argument("--damping", type=float, default=0.01, help="CNN: Hessian damping (paper: 0.01)")
    ap.add_argument("--cnn-top", type=int, default=20, help="CNN: most influential points retrained (paper: 100)")
    ap.add_argument("--cnn-tests", type=int, default=1, help="CNN: misclassified test points")
    ap.add_argument("--cnn-retrain-iter", type=int, default=50, help="CNN: L-BFGS iterations per retraining from θ̃")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="whybox-out/mnist")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_info(), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    panels, rows = [], []
    start = time.perf_counter()
    if a.only in (None, "lr"):
        fig2_lr(a, panels, rows)
    if a.only in (None, "cnn"):
        fig2_cnn(a, panels, rows)
    print(f"\n## Fig 2: predicted vs actual leave-one-out test-loss change ({time.perf_counter() - start:.0f} s)\n")
    print(markdown_table(rows, ".3g"))
    from whybox.report.usecases import plot_loo_panels

    png = plot_loo_panels(panels, out / "fig2.png")
    (out / "fig2.json").write_text(json.dumps({"machine": machine_info(), "settings": vars(a), "rows": rows,
                                               "panels": [{"title": t, "predicted": p.tolist(), "actual": q.tolist()}
                                                          for t, p, q in panels]}, indent=1))
    print(f"\nwrote {png} and {out / 'fig2.json'}")


def _attack_rows(name: str, obj, split, grid, settings, targets: list[int], label: dict) -> dict:
    from whybox.applications import attack as atk

    inf = whybox.InfluenceFunction(obj, whybox.CG()).fit()
    results = []
    t = time.perf_counter()
    for tgt in targets:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results.append(atk.attack(obj, split.X_test, split.y_test, [tgt], grid, settings, attributor=inf))
    flipped = [r for r in results if r.all_flipped]
    if flipped and label.get("png"):  # the first successful attack: original vs perturbed training image
        from whybox.report.usecases import plot_attack

        r = flipped[0]
        plot_attack(r, split.raw_test, split.image_shape, label["png"],
                    labels=[split.class_names[int(split.y_test[t])] for t in r.targets],
                    title=f"{name}: 1 image perturbed, L∞ ≤ {label['L∞ budget']:g} levels ({label['grid']})")
    label = {k: v for k, v in label.items() if k != "png"}
    ratio = [r.loss_after[0] / r.loss_before[0] for r in results]
    return {"model": name, **label, "flipped": f"{sum(r.all_flipped for r in results)}/{len(results)}",
            "rate": sum(r.all_flipped for r in results) / len(results),
            "target loss before": float(np.median([r.loss_before[0] for r in results])),
            "loss ×": float(np.median(ratio)), "L∞": float(np.mean([r.linf.mean() for r in results])),
            "L2": float(np.mean([r.l2.mean() for r in results])),
            "steps": float(np.mean([r.iterations for r in results])), "s": time.perf_counter() - t}


def attack_why(argv: list[str]) -> None:
    """Flip rates with one perturbed image against the L∞ budget and the training-set size."""
    from dataclasses import replace

    from whybox.applications import attack as atk

    ap = argparse.ArgumentParser(prog="bench_mnist.py attack-why", description=attack_why.__doc__)
    ap.add_argument("--pair", default="1,7")
    ap.add_argument("--targets", type=int, default=5, help="correctly classified test points (seeded subset)")
    ap.add_argument("--pick", choices=["random", "closest"], default="random",
                    help="random correct test points, or the correct ones with the highest loss (closest to flipping)")
    ap.add_argument("--budgets", default="0.5,8,32,128", help="L∞ budgets in grey levels; 0.5 = the paper's "
                    "continuous attack (α 0.02, 100 steps), others on the integer grid with α = budget/8")
    ap.add_argument("--int-steps", type=int, default=30, help="steps of the integer-grid attacks")
    ap.add_argument("--sizes", default="50,100,200,400,800", help="training-set sizes (balanced subsets of the pair)")
    ap.add_argument("--size-budget", type=float, default=32, help="integer L∞ budget of the size sweep")
    ap.add_argument("--models", default="network,logistic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="whybox-out/mnist")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_info(), flush=True)
    pair = tuple(int(v) for v in a.pair.split(","))
    split = zoo.load("mnist", classes=pair, seed=a.seed)
    grid = atk.PixelGrid.from_split(split)
    models = [m for m in a.models.split(",") if m]
    extractor = zoo.pretrained_extractor(split, pair, seed=a.seed, dataset="mnist")[0] if "network" in models else None
    build = {"network": lambda s: zoo.frozen_network(s, extractor)[0], "logistic": lambda s: zoo.pixel_logistic(s)[0]}

    def targets_of(obj, s) -> list[int]:
        right = torch.nonzero(obj.predict(s.X_test)[0] == s.y_test).reshape(-1)
        if a.pick == "closest":
            loss = obj.losses(s.X_test[right], s.y_test[right])
            return right[torch.argsort(loss, descending=True)[: a.targets]].sort().values.tolist()
        gen = torch.Generator().manual_seed(a.seed)
        return right[torch.randperm(len(right), generator=gen)[: a.targets]].sort().values.tolist()

    def settings_for(eps: float) -> atk.AttackSettings:
        if eps < 1:  # the paper's released code: continuous levels within ±eps, α = 0.02, 100 steps
            return atk.AttackSettings(n_points=1, step=0.02, epsilon=eps, iterations=100, integer=False, select="pert")
        return atk.AttackSettings(n_points=1, step=max(1.0, eps / 8), epsilon=eps, iterations=a.int_steps, select="pert")

    Path(a.out).mkdir(parents=True, exist_ok=True)
    rows_b, rows_n = [], []
    for name in models:
        obj = build[name](split)
        tg = targets_of(obj, split)
        for eps in [float(v) for v in a.budgets.split(",")]:
            label = {"n train": obj.n, "L∞ budget": eps, "grid": "continuous" if eps < 1 else "integer",
                     "png": Path(a.out) / f"attack_why_{name}_{eps:g}.png"}
            rows_b.append(_attack_rows(name, obj, split, grid, settings_for(eps), tg, label))
            print(markdown_table(rows_b[-1:], ".3g").splitlines()[-1], flush=True)
    y = split.y_train.numpy()
    for name in models:
        for size in [int(v) for v in a.sizes.split(",") if v]:
            keep = np.sort(np.concatenate([np.flatnonzero(y == c)[: size // 2] for c in (0, 1)]))
            sub = replace(split, X_train=split.X_train[keep], y_train=split.y_train[keep], raw_train=split.raw_train[keep])
            obj = build[name](sub)
            label = {"n train": obj.n, "L∞ budget": a.size_budget, "grid": "integer"}
            rows_n.append(_attack_rows(name, obj, sub, grid, settings_for(a.size_budget), targets_of(obj, sub), label))
            print(markdown_table(rows_n[-1:], ".3g").splitlines()[-1], flush=True)
    d = split.X_train.shape[1]
    print(f"\n## What limits the attack at 28×28: one perturbed training image of {pair}, {a.targets} {a.pick} targets per row\n")
    print(f"input size: {d} pixels here, 299·299·3 = 268,203 in the paper; a ±0.5-level box allows an L2 change of "
          f"at most 0.5·√d = {0.5 * d ** 0.5:.1f} levels here and {0.5 * 268203 ** 0.5:.0f} there\n")
    print("### budget\n\n" + markdown_table(rows_b, ".3g"))
    print("\n### training-set size\n\n" + markdown_table(rows_n, ".3g"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attack_why.json").write_text(json.dumps({"machine": machine_info(), "settings": vars(a), "budget": rows_b,
                                                     "size": rows_n}, indent=1))
    print(f"\nwrote {out / 'attack_why.json'}")


def svm_margins(argv: list[str]) -> None:
    """Why SmoothHinge t = 0.001 loses the RBF SVM's locality in `compare`: the test points' margins and
    loss gradients, and how many training points have a loss gradient at all, for t = 1 and t = 0.001."""
    ap = argparse.ArgumentParser(prog="bench_mnist.py svm-margins", description=svm_margins.__doc__)
    ap.add_argument("--pair", default="1,7")
    ap.add_argument("--tests", default="0,49,99,148,199", help="test rows (compare's 5 points on 1 vs 7)")
    ap.add_argument("--temperatures", default="1,0.001")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(machine_info(), flush=True)
    split = zoo.load("mnist", classes=tuple(int(v) for v in a.pair.split(",")))
    idx = [int(v) for v in a.tests.split(",")]
    for t in (float(v) for v in a.temperatures.split(",")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            obj, _ = zoo.rbf_svm(split, temperature=t)
        margin = torch.where(split.y_test[idx] > 0, 1.0, -1.0).to(obj.dtype) * obj.outputs(split.X_test[idx]).reshape(-1)
        g = obj.grads(split.X_test[idx], split.y_test[idx]).norm(dim=1)
        live = int((obj.train_grads(slice(None)).norm(dim=1) > 1e-6).sum())
        print(f"t = {t:g}: test margins y·f(x) {[round(v, 3) for v in margin.tolist()]}; ‖∇θL(z_test)‖ "
              f"{[f'{v:.1e}' for v in g.tolist()]}; training points with ‖∇θL‖ > 1e-6: {live} of {obj.n}", flush=True)


def _attack_shard(job: tuple) -> list[dict]:
    """One worker of attack-all: build the model (seeded, the same in every worker) and attack its targets."""
    model, rows, budgets, seed = job
    cpu = time.process_time()
    torch.set_num_threads(1)
    from whybox.applications import attack as atk

    split = zoo.load("mnist", classes=(1, 7), seed=seed)
    if model == "network":
        obj = zoo.frozen_network(split, zoo.pretrained_extractor(split, (1, 7), seed=seed, dataset="mnist")[0])[0]
    else:
        obj = zoo.pixel_logistic(split)[0]
    one = atk.AttackSettings(step=0.02, epsilon=0.5, iterations=100, integer=False, select="pert")
    settings = atk.SweepSettings(budgets=budgets, second_try=True, cumulative=True, attack=one)
    if rows is None:  # the parent asks which rows to split
        right = obj.predict(split.X_test)[0] == split.y_test
        return [{"correct": torch.nonzero(right).reshape(-1).tolist(), "cpu": time.process_time() - cpu}]
    sweep = atk.attack_each(obj, split.X_test, split.y_test, atk.PixelGrid.from_split(split), settings,
                            progress=False, only=rows)
    return [dict(r.__dict__, cpu=time.process_time() - cpu) for r in sweep.rows]


def attack_all(argv: list[str]) -> None:
    """The paper's protocol and counting on every correctly classified test point of 1 vs 7, the targets
    split over worker processes (one thread each); rows merged (sums, and means weighted by attacks)."""
    import multiprocessing as mp

    ap = argparse.ArgumentParser(prog="bench_mnist.py attack-all", description=attack_all.__doc__)
    ap.add_argument("--model", choices=["network", "logistic"], default="network")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--budgets", default="1,2,10")
    ap.add_argument("--limit", type=int, default=0, help="only the first N correct test points (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(machine_info(), flush=True)
    budgets = tuple(int(v) for v in a.budgets.split(","))
    start, cpu = time.perf_counter(), time.process_time()
    ctx = mp.get_context("spawn")
    with ctx.Pool(a.workers) as pool:
        probe = pool.map(_attack_shard, [(a.model, None, budgets, a.seed)])[0][0]
        correct = probe["correct"]
        if a.limit:
            correct = correct[: a.limit]
        shards = [correct[i :: a.workers] for i in range(a.workers)]
        parts = pool.map(_attack_shard, [(a.model, sh, budgets, a.seed) for sh in shards if sh])
    rows = []
    for k_rows in zip(*parts):
        n_att = sum(r["attacked"] for r in k_rows)
        mean = lambda key: sum(r[key] * r["attacked"] for r in k_rows if r["attacked"]) / n_att if n_att else float("nan")  # noqa: E731
        targets, flipped = sum(r["targets"] for r in k_rows), sum(r["flipped"] for r in k_rows)
        rows.append({"images": k_rows[0]["n_points"], "flipped": f"{flipped}/{targets}", "rate": flipped / targets,
                     "attacks": n_att, "mean L∞": mean("mean_linf"), "mean L2": mean("mean_l2"),
                     "acc others before": mean("acc_others_before"), "acc others after": mean("acc_others_after"),
                     "steps": mean("mean_iterations")})
    print(f"\n## Training-set attack, the paper's protocol and counting: {a.model}, MNIST 1 vs 7, {len(correct)} "
          f"correctly classified test points, each attacked on its own (α 0.02, ±0.5 levels, 100 steps)\n")
    print(markdown_table(rows, ".3g"))
    workers_cpu = probe["cpu"] + sum(part[0]["cpu"] for part in parts)
    print(f"\nwall {time.perf_counter() - start:.0f} s; CPU {time.process_time() - cpu + workers_cpu:.0f} s "
          f"({a.workers} worker processes, each building the model once)")


VERB_DEFAULTS = {  # MNIST defaults of the verbs, sized to run in a few minutes here (docs/mnist.md has the paper's
    # sizes); options given on the command line come after and win
    "attack": ["--dataset", "mnist", "--targets", "5", "--multi", "3", "--out", "whybox-out/mnist/attack"],
    "mislabeled": ["--dataset", "mnist", "--repeats", "2", "--solver", "ekfac", "--n-trusted", "50",
                   "--acc-fractions", "0,0.1,0.2,0.3", "--out", "whybox-out/mnist/mislabeled"],
    "compare": ["--dataset", "mnist", "--n-test", "5", "--out", "whybox-out/mnist/compare"],
}


def main() -> None:
    own = {"fig2": fig2, "attack-why": attack_why, "svm-margins": svm_margins, "attack-all": attack_all}
    if len(sys.argv) < 2 or sys.argv[1] not in (*own, *VERB_DEFAULTS):
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    if command in own:
        own[command](rest)
        return
    sys.path.insert(0, str(Path(__file__).parent))
    from _verb import run_verb

    os.environ.setdefault("COLUMNS", "160")  # the verbs' tables at full width when written to a file
    sys.argv = [sys.argv[0], *VERB_DEFAULTS[command], *rest]
    torch.set_num_threads(1)
    run_verb(command)


if __name__ == "__main__":
    main()
