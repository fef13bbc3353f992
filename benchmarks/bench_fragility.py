"""Fragility of influence in networks (Basu, Pope, Feizi 2021): leave-one-out correlation as depth,
width and weight decay vary, with the Hessian's top eigenvalue.

    python benchmarks/bench_fragility.py            # the default grid, digits subset (see below)
    python benchmarks/bench_fragility.py --quick    # 1 test point, top 8

Protocol (Basu et al.'s): tanh MLPs and the zoo's small CNN trained with full-batch L-BFGS on a
stratified subset of digits; the ``n_test`` highest-loss test points; for each, the ``top_k``
training points with the largest |influence| (``InfluenceFunction`` with ``CG(damping)``) are each
removed and the model retrained from θ̂ (same L-BFGS budget as a baseline retrain with nothing removed
when θ̂ is not a minimum, so optimiser drift cancels); Pearson/Spearman between predicted and actual
test-loss change, averaged over test points. λ_max(H) by Lanczos on the Hessian-vector product.
Retrainings are cached on disk. Writes benchmarks/results/fragility.md and fragility.png.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import whybox
from whybox import zoo
from whybox.curvature.base import lanczos
from whybox.evaluation import rowwise_correlations
from whybox.evaluation.cache import cached_rows, problem_key
from whybox.utils import machine_info, markdown_table
from whybox.zoo.train import fit, retrain

# Basu et al. 2021, Table 1 (small CNN, 10 % of MNIST, highest-loss test point, top influential points)
PAPER = "Basu et al. 2021, small CNN on MNIST: Pearson 0.95 / Spearman 0.87 with weight decay, 0.41 / 0.35 without"


@dataclass
class Config:
    axis: str  # what this row varies: depth, width, weight decay
    model: str  # "mlp" or "cnn"
    hidden: tuple[int, ...] = (16,)
    weight_decay: float = 0.01

    @property
    def name(self) -> str:
        arch = "CNN" if self.model == "cnn" else "MLP " + "-".join(map(str, (64, *self.hidden, 10)))
        return f"{arch}, wd {self.weight_decay:g}"


def default_grid(mlp_decays=(0.0, 1e-4, 1e-3, 1e-2), cnn_decays=(0.0, 1e-2)) -> list[Config]:
    return ([Config("depth", "mlp", (16,) * d) for d in (1, 2, 3)]
            + [Config("width", "mlp", (w,)) for w in (8, 16, 64)]
            + [Config("weight decay", "mlp", (16,), wd) for wd in mlp_decays]
            + [Config("weight decay (CNN)", "cnn", (), wd) for wd in cnn_decays])


def subset(d: zoo.Split, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stratified subset of ``n`` training rows."""
    from sklearn.model_selection import train_test_split

    if n >= len(d.y_train):
        return d.X_train, d.y_train
    idx, _ = train_test_split(np.arange(len(d.y_train)), train_size=n, stratify=d.y_train.numpy(), random_state=seed)
    idx = np.sort(idx)
    return d.X_train[idx], d.y_train[idx]


def run_config(c: Config, d: zoo.Split, X: torch.Tensor, y: torch.Tensor, a: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    if c.model == "cnn":
        model = zoo.cnn(d.n_classes)
        X, X_test = X.reshape(-1, *d.image_shape), d.X_test.reshape(-1, *d.image_shape)
    else:
        model = zoo.mlp(d.n_features, d.n_classes, hidden=c.hidden)
        X_test = d.X_test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # not reaching tol is reported as ‖∇R‖
        obj, res = zoo.train(model, "cross_entropy", X, y, weight_decay=c.weight_decay, tol=a.tol, max_iter=a.max_iter)
        for _ in range(5):  # L-BFGS stops when one round of 100 iterations does not lower ‖∇R‖: restart it
            more = fit(obj, tol=a.tol, max_iter=a.max_iter)
            if not more.grad_norm < 0.5 * res.grad_norm:
                break
            obj, res = obj.with_theta(more.theta), more
    top_eig = lanczos(obj.hvp, obj.p, obj.theta, ends="largest").largest
    test_loss = obj.losses(X_test, d.y_test)
    test = test_loss.topk(a.n_test).indices.tolist()
    Xt, yt = X_test[test], d.y_test[test]
    damping, note = a.damping, ""
    for _ in range(4):  # the smallest damping (×10 steps) at which CG finds H + λI positive definite
        try:
            inf = whybox.InfluenceFunction(obj, whybox.CG(damping=damping, rtol=1e-8)).fit()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                pred = inf.scores(Xt, yt)
            break
        except whybox.NotPositiveDefiniteError:
            note = f"H + {damping:g}·I not positive definite: damping raised"
            damping *= 10
    else:
        raise RuntimeError(f"{c.name}: H + λI not positive definite up to λ = {damping / 10:g}")
    top = pred.abs().topk(a.top_k, dim=1).indices  # [m, k]
    union = sorted(set(top.flatten().tolist()))
    stationary = res.grad_norm <= a.tol
    removals = [None, *union]  # None: the baseline retrain with nothing removed (its drift cancels)

    def losses_without(j: int) -> np.ndarray:
        r = removals[j]
        if r is None and stationary:
            return obj.losses(Xt, yt).cpu().numpy()
        theta = retrain(obj, remove=[] if r is None else [r], tol=a.tol, max_iter=a.retrain_iter).theta
        return obj.losses(Xt, yt, theta=theta).cpu().numpy()

    key = problem_key(obj, Xt, yt, np.asarray(union), a.tol, a.retrain_iter)
    losses = cached_rows(a.cache, f"fragility-{key}", len(removals), len(test), losses_without,
                         f"retraining {c.name}")  # [1 + |union|, m]
    col = {r: i + 1 for i, r in enumerate(union)}
    actual = torch.stack([torch.as_tensor(losses[[col[r] for r in top[t].tolist()], t] - losses[0, t])
                          for t in range(len(test))])
    predicted = torch.gather(pred, 1, top)
    corr = np.nanmean(rowwise_correlations(predicted, actual), axis=0)
    acc = (obj.outputs(X_test).argmax(1) == d.y_test).double().mean().item()
    if res.risk < 1e-6:
        note = f"training loss {res.risk:.0e}: the model interpolates (no minimum without decay)" + (
            ", retraining does not move θ, so the correlation is undefined" if not np.isfinite(corr).all() else
            f"; retraining moves the test losses by at most {float(actual.abs().max()):.0e}, and influence at θ̂ "
            "has no minimum to linearise around")
    return {
        "axis": c.axis, "model": c.name, "depth": len(c.hidden) if c.model == "mlp" else 2,
        "width": max(c.hidden) if c.hidden else 16, "weight_decay": c.weight_decay, "p": obj.p,
        "‖∇R‖": f"{res.grad_norm:.1e}", "train_risk": res.risk, "λ_max(H)": top_eig, "damping": damping, "test_acc": acc,
        "pearson": float(corr[0]), "spearman": float(corr[1]),
        "max|actual|": float(actual.abs().max()), "seconds": time.perf_counter() - t_start, "note": note,
    }


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    axes_spec = [("depth", "depth", "hidden layers (width 16)"), ("width", "width", "hidden units (1 layer)"),
                 ("weight decay", "weight_decay", "weight decay (MLP 64-16-10)"),
                 ("weight decay (CNN)", "weight_decay", "weight decay (CNN)")]
    fig = Figure(figsize=(14, 3.6), layout="constrained")
    panels = fig.subplots(1, len(axes_spec))
    for ax, (axis, key, label) in zip(panels, axes_spec):
        part = [r for r in rows if r["axis"] == axis]
        if not part:
            ax.set_visible(False)
            continue
        xs = list(range(len(part)))
        ax.plot(xs, [r["pearson"] for r in part], "o-", label="Pearson")
        ax.plot(xs, [r["spearman"] for r in part], "s--", label="Spearman")
        ax.set_xticks(xs, [f"{r[key]:g}" for r in part])
        ax.set_ylim(-0.2, 1.05)
        ax.set_xlabel(label)
        ax.set_ylabel("LOO correlation")
        for x, r in zip(xs, part):
            if not np.isfinite(r["pearson"]):
                ax.annotate("undefined:\ntraining loss ≈ 0", (x, 0.0), ha="center", fontsize=7, color="firebrick")
        twin = ax.twinx()
        twin.plot(xs, [r["λ_max(H)"] for r in part], "^:", color="grey", label="λ_max(H)")
        twin.set_ylabel("λ_max(H)", color="grey")
        if ax is panels[0]:
            ax.legend(loc="lower left", fontsize=8)
    fig.suptitle("Influence vs leave-one-out retraining on digits (Basu et al. 2021 protocol)")
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=400, help="stratified digits training subset")
    ap.add_argument("--n-test", type=int, default=2, help="highest-loss test points")
    ap.add_argument("--top-k", type=int, default=15, help="training points by |influence| per test point")
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--tol", type=float, default=1e-8, help="‖∇R‖ that training and retraining aim for")
    ap.add_argument("--max-iter", type=int, default=3000, help="L-BFGS iterations to train each model")
    ap.add_argument("--retrain-iter", type=int, default=1000, help="L-BFGS iterations per retraining")
    ap.add_argument("--axes", nargs="*", default=None, help="only these axes (depth, width, 'weight decay', ...)")
    ap.add_argument("--mlp-decays", type=float, nargs="*", default=[0.0, 1e-4, 1e-3, 1e-2])
    ap.add_argument("--cnn-decays", type=float, nargs="*", default=[0.0, 1e-2], help="each CNN costs ~7 min here")
    ap.add_argument("--cache", default="whybox-out/cache")
    ap.add_argument("--quick", action="store_true", help="1 test point, top 8")
    ap.add_argument("--out", default="benchmarks/results/fragility")
    a = ap.parse_args()
    if a.quick:
        a.n_test, a.top_k = 1, 8
    torch.set_num_threads(1)
    d = zoo.load("digits")
    X, y = subset(d, a.n_train, seed=0)
    grid = [c for c in default_grid(a.mlp_decays, a.cnn_decays) if a.axes is None or c.axis in a.axes]
    rows, done = [], {}
    for c in grid:
        key = (c.model, c.hidden, c.weight_decay)
        if key not in done:  # the shared configuration of several axes is trained once
            done[key] = run_config(c, d, X, y, a)
            r = done[key]
            print(f"{r['model']}: pearson {r['pearson']:.3f} spearman {r['spearman']:.3f} λ_max {r['λ_max(H)']:.3g} "
                  f"‖∇R‖ {r['‖∇R‖']} ({r['seconds']:.0f} s)", flush=True)
        rows.append({**done[key], "axis": c.axis})
    header = machine_info()
    setup = (f"digits, stratified training subset n = {len(y)}, {a.n_test} highest-loss test points, top {a.top_k} "
             f"training points by |influence| each; CG(damping={a.damping:g}) unless noted; training ≤ {a.max_iter} and "
             f"each retraining ≤ {a.retrain_iter} L-BFGS iterations toward ‖∇R‖ ≤ {a.tol:g}")
    table = markdown_table(rows, ".3g")
    text = f"{header}\n\n{setup}\n\n{table}\n\nReference: {PAPER}.\n"
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
