"""K-FAC / EK-FAC / projected influence at scale: time in epochs of forward+backward, memory, agreement.

    python benchmarks/bench_kfac.py                    # MLP 256-512-10 (136,714 params), n = 10,000
    python benchmarks/bench_kfac.py --n 10000 50000    # and n = 50,000
    python benchmarks/bench_kfac.py --methods projected --proj-dim 32   # only the projected method
    python benchmarks/bench_kfac.py --quick            # n = 2,000, 20 test points (a smoke run)

Synthetic data (a 10-class Gaussian mixture in 256 dimensions, no downloads), a ReLU MLP trained
for a few epochs with Adam in float32 (not at a minimum: the Gauss-Newton curvature is PSD anyway).
Each method runs in a fresh process (its own peak RSS):

* total = ``KFACInfluence(obj, KFAC()/EKFAC()).fit()`` + ``scores`` of the test points against all
  n training points (factored: layer inputs and output gradients, no per-example gradients),
  timed after torch.func's once-per-process warm-up (reported apart: its first vmap of the loss
  imports sympy through torch's decompositions);
* epoch = one pass of forward+backward over the n training points in the same chunks (best of 3);
* agreement (1 − Pearson r, and the relative error) = the same curvature the slow way, ``InfluenceFunction(obj, curvature)`` (per-example
  gradients by vmap, ``curvature.solve`` on flat vectors), on ``--check-rows`` training rows.
* projected (``ProjectedInfluence(obj, dim_in=d, dim_out=d)``, empirical Fisher, d = ``--proj-dim``):
  the slow way is exact influence in the same projected space built from explicit per-example
  gradients of all n training points (vmap), projected with ``project_flat``; the projected
  curvature P(F + λI)Pᵀ is formed from them and from the columns of P (``project_flat`` of identity
  blocks), Cholesky-solved in float64, and scored on ``--check-rows`` rows ("curvature rel. error"
  compares the two projected curvatures). "2nd query s": scores of the same 100 test points again
  after fitting (the projected training gradients are cached: test projection + one GEMM).

Prints a markdown table headed by the machine and versions; writes it as JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import whybox
from whybox.utils import machine_info, markdown_table

N_FEATURES, HIDDEN, N_CLASSES = 256, 512, 10


def make_data(n: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """``n + n_test`` rows of a 10-class Gaussian mixture in 256 dimensions, and the generator in the
    state training continues from (its minibatch order)."""
    gen = torch.Generator().manual_seed(seed)
    means = 0.15 * torch.randn(N_CLASSES, N_FEATURES, generator=gen)
    y = torch.randint(0, N_CLASSES, (n + n_test,), generator=gen)
    X = means[y] + torch.randn(n + n_test, N_FEATURES, generator=gen)
    return X, y, gen


def train_mlp(X: torch.Tensor, y: torch.Tensor, gen: torch.Generator, seed: int = 0, record=None) -> nn.Module:
    """The ReLU MLP trained on (X, y) for 3 epochs of Adam (lr 1e-3, L2 1e-3, batches of 256), its
    initialisation seeded by ``seed`` and its minibatch order drawn from ``gen``; ``record``
    (a ``whybox.CheckpointRecorder``) receives the parameters after every epoch."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(3):
        for i in torch.randperm(len(X), generator=gen).split(256):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i]), y[i]).backward()
            opt.step()
        if record is not None:
            record.record(model, lr=opt.param_groups[0]["lr"])
    model.eval()
    return model


def make_task(n: int, n_test: int, seed: int = 0, record=None) -> dict:
    """Gaussian-mixture data and a ReLU MLP trained on its first n rows for 3 epochs (float32)."""
    X, y, gen = make_data(n, n_test, seed)
    model = train_mlp(X[:n], y[:n], gen, seed, record)
    with torch.no_grad():
        acc = (model(X[n:]).argmax(1) == y[n:]).float().mean().item()
    return {"state": model.state_dict(), "X": X, "y": y, "n": n, "test_accuracy": acc}


def epoch_seconds(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """One pass of forward+backward over (X, y) in chunks of ``batch`` rows, best of 3."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, len(X), batch):
            model.zero_grad()
            nn.functional.cross_entropy(model(X[i : i + batch]), y[i : i + batch]).backward()
        times.append(time.perf_counter() - start)
    return min(times)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def projected_slow_way(fast: whybox.ProjectedInfluence, Xt, yt, rows) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact influence in the same projected space, from explicit per-example gradients (see the module text).
    Returns the scores ``[m, len(rows)]`` and the projected curvature (float64)."""
    obj = fast.objective
    k = fast.dim
    F = torch.zeros(k, k, dtype=torch.float64)
    for _, g in obj.iter_grads(obj.X, obj.y):
        gt = fast.project_flat(g).double()
        F += gt.T @ gt
    F /= obj.n
    # P diag(decay + damping) Pᵀ row by row: row (a, b) of a layer's P_out ⊗ P_in is the layer matrix
    # outer(P_out[a], P_in[b]); scaled by the decay and projected, it gives one row of the matrix
    if fast.left_projection is not None:
        raise NotImplementedError("the slow way here covers factored layers only")
    decay = obj.decay + fast.damping
    for pl in fast.projections:
        P_out = torch.eye(pl.layer.d_out, dtype=obj.dtype) if pl.P_out is None else pl.P_out
        P_in = torch.eye(pl.layer.d_in, dtype=obj.dtype) if pl.P_in is None else pl.P_in
        pairs = torch.cartesian_prod(torch.arange(pl.k_out), torch.arange(pl.k_in))
        for chunk in pairs.split(64):
            V = torch.zeros(len(chunk), obj.p, dtype=obj.dtype)
            V[:, pl.layer.index] = (P_out[chunk[:, 0], :, None] * P_in[chunk[:, 1], None, :]).reshape(len(chunk), -1)
            rows_of = pl.offset + chunk[:, 0] * pl.k_in + chunk[:, 1]
            F[rows_of] += fast.project_flat(V * decay).double()
    chol = torch.linalg.cholesky(F)
    S = torch.cholesky_solve(fast.project_flat(obj.grads(Xt, yt)).double().T, chol).T
    return S @ fast.project_flat(obj.grads(obj.X[rows], obj.y[rows])).double().T / obj.n, F


def run_method(path: str, method: str, args: argparse.Namespace, queue) -> None:
    """In a fresh process: time fit + scores, peak RSS, then agreement with the flat route."""
    torch.set_num_threads(args.threads)
    task = torch.load(path, weights_only=False)
    n = task["n"]
    model = nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))
    model.load_state_dict(task["state"])
    model.eval()
    X, y, Xt, yt = task["X"][:n], task["y"][:n], task["X"][n:], task["y"][n:]
    obj = whybox.Objective(model, "cross_entropy", X, y, weight_decay=1e-3)
    start = time.perf_counter()
    obj.losses(X[:2], y[:2])  # torch.func's once-per-process warm-up (vmap of the loss), reported apart
    warm_up = time.perf_counter() - start
    epoch = epoch_seconds(model, X, y, obj.batch_size)
    for p in model.parameters():
        p.grad = None
    base = rss_mib()
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: args.check_rows]
    second, curvature_error = "n/a", "n/a"
    if method == "projected":
        start = time.perf_counter()
        fast = whybox.ProjectedInfluence(obj, dim_in=args.proj_dim, dim_out=args.proj_dim, damping=args.damping).fit()
        fitted = time.perf_counter()
        scores = fast.scores(Xt, yt)
        done = time.perf_counter()
        second = -time.perf_counter()
        fast.scores(Xt, yt)
        second += time.perf_counter()
        peak = rss_mib()
        start_slow = time.perf_counter()
        slow, F_slow = projected_slow_way(fast, Xt, yt, rows)
        slow_s = time.perf_counter() - start_slow
        curvature_error = float((fast.curvature.dense() - F_slow).norm() / F_slow.norm())
        label = f"projected {args.proj_dim}x{args.proj_dim} (k = {fast.dim}, empirical)"
    else:
        curvature = {"KFAC": whybox.KFAC, "EKFAC": whybox.EKFAC}[method](damping=args.damping)
        start = time.perf_counter()
        fast = whybox.KFACInfluence(obj, curvature).fit()
        fitted = time.perf_counter()
        scores = fast.scores(Xt, yt)
        done = time.perf_counter()
        peak = rss_mib()
        start_slow = time.perf_counter()
        slow = whybox.InfluenceFunction(obj, curvature).fit().scores(Xt, yt, rows).double()
        slow_s = time.perf_counter() - start_slow
        label = f"{method} ({curvature.fisher})"
    ours = scores[:, rows].double()
    per_test = [float(np.corrcoef(ours[j], slow[j])[0, 1]) for j in range(len(slow))]
    queue.put({
        "n": n, "method": label, "fit s": fitted - start, "scores s": done - fitted,
        "total s": done - start, "epoch s": epoch, "total / epoch": (done - start) / epoch,
        "process warm-up s": warm_up, "peak RSS MiB": peak, "peak RSS before fit MiB": base,
        "1 - pearson (all pairs)": 1 - float(np.corrcoef(ours.reshape(-1), slow.reshape(-1))[0, 1]),
        "1 - min pearson (per test)": 1 - min(per_test),
        "rel. error": float((ours - slow).norm() / slow.norm()),
        f"slow way s ({len(rows)} rows)": slow_s,
        "2nd query s": second, "curvature rel. error": curvature_error,
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[10_000], help="training-set sizes")
    ap.add_argument("--tests", type=int, default=100, help="test points")
    ap.add_argument("--methods", nargs="*", default=["KFAC", "EKFAC", "projected"], choices=["KFAC", "EKFAC", "projected"])
    ap.add_argument("--proj-dim", type=int, default=32, help="projected method: dim_in = dim_out per layer")
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    ap.add_argument("--check-rows", type=int, default=500, help="training rows for the slow-way agreement")
    ap.add_argument("--quick", action="store_true", help="n = 2,000 and 20 test points")
    ap.add_argument("--out", default="whybox-out/bench_kfac")
    args = ap.parse_args()
    if args.quick:
        args.n, args.tests, args.check_rows = [2000], 20, 200
    torch.set_num_threads(args.threads)
    print(machine_info())
    print(f"MLP {N_FEATURES}-{HIDDEN}-{N_CLASSES} (ReLU, float32, {N_FEATURES * HIDDEN + HIDDEN + HIDDEN * N_CLASSES + N_CLASSES:,} "
          f"params), {args.tests} test points, weight decay 1e-3, damping {args.damping:g}, {args.threads} thread(s)")
    ctx = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            task = make_task(n, args.tests)
            print(f"n = {n:,}: trained, test accuracy {task['test_accuracy']:.3f}", flush=True)
            path = str(Path(tmp) / f"task{n}.pt")
            torch.save(task, path)
            for method in args.methods:
                queue = ctx.Queue()
                proc = ctx.Process(target=run_method, args=(path, method, args, queue))
                proc.start()
                rows.append(queue.get())
                proc.join()
                print(markdown_table(rows[-1:]), flush=True)
    print()
    print(markdown_table(rows))
    sizes = sorted({r["n"] for r in rows})
    if len(sizes) > 1:
        for method in dict.fromkeys(r["method"].split(" (")[0] for r in rows):
            by_n = {r["n"]: r for r in rows if r["method"].split(" (")[0] == method}
            if sizes[0] in by_n and sizes[-1] in by_n:
                a, b = by_n[sizes[0]], by_n[sizes[-1]]
                slope = np.log(b["total s"] / a["total s"]) / np.log(sizes[-1] / sizes[0])
                print(f"{method}: log-log slope of total time in n ({sizes[0]} -> {sizes[-1]}) = {slope:.2f}; "
                      f"peak RSS {a['peak RSS MiB']:.0f} -> {b['peak RSS MiB']:.0f} MiB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_kfac.json").write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
