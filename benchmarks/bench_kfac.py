"""K-FAC / EK-FAC / projected influence at scale: time in epochs of forward+backward, memory, agreement.

    python benchmarks/bench_kfac.py                    # MLP 256-512-10 (136,714 params), n = 10,000
    python benchmarks/bench_kfac.py --n 10000 50000    # and n = 50,000
    python benchmarks/bench_kfac.py --methods projected --proj-dim 32   # only the projected method
    python benchmarks/bench_kfac.py --quick            # n = 2,000, 20 test points (a smoke run)
    python benchmarks/bench_kfac.py --methods EKFAC --ekfac-rank-tolerance 0 0.03 0.01   # EK-FAC scoring routes
    python benchmarks/bench_kfac.py --task transformer --proj-dim 16 --check-rows 300
                                                       # the zoo's transformer text classifier, n = 10,000

Tasks (synthetic, built in code, no downloads; trained for a few epochs with Adam in float32, not
at a minimum: the Gauss-Newton curvature is PSD anyway):

* ``mlp``: a 10-class Gaussian mixture in 256 dimensions, a ReLU MLP 256-512-10 (136,714 params),
  all parameters explained, chunks of 2,048 rows.
* ``transformer``: ``zoo.make_token_sequences`` (vocab 1,000, length 32, 4 classes: the class is
  the marker bigram a sequence contains) and ``zoo.transformer_classifier`` (4 post-norm encoder
  layers, d_model 128, 4 heads, feed-forward 512: 925,700 params), trained ``--train-epochs``
  epochs; explained: the 527,364 parameters of its Linear layers, ``params=whybox.factorable_params(model)``
  (attention projections, embeddings and LayerNorms frozen), chunks of 256 rows. The trained task
  is kept in ``--out`` and reused by later runs with the same sizes.

Each method runs in a fresh process. Memory: "RSS at start" holds the data, the model and the
libraries; "peak RSS" is the high-water mark of fit + scores alone (reset after the set-up through
/proc/self/clear_refs, ``whybox.utils.reset_peak_rss``), and "peak above start" their difference:
what the method itself needs, the number that must stay flat in n.

* total = ``KFACInfluence(obj, KFAC()/EKFAC()).fit()`` + ``scores`` of the test points against all
  n training points (factored: layer inputs and output gradients, no per-example gradients; EK-FAC
  with ``rank_tolerance`` = each of ``--ekfac-rank-tolerance``, 0 = ``scoring="dense"``; its
  ranks per layer, the largest estimated error and the error measured on 16 rows are reported),
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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import whybox
from whybox.utils import machine_info, markdown_table, peak_rss_mib, reset_peak_rss, rss_mib

N_FEATURES, HIDDEN, N_CLASSES = 256, 512, 10
TRANSFORMER_DECAY, TRANSFORMER_BATCH = 1e-4, 256


def make_task(task: str, n: int, n_test: int, seed: int = 0, train_epochs: int = 3) -> dict:
    """The task's data and trained model (see the module text)."""
    if task == "mlp":
        return make_mlp_task(n, n_test, seed)
    from whybox import zoo

    d = zoo.make_token_sequences(n_train=n, n_test=n_test, seed=seed)
    model = zoo.transformer_classifier(seed=seed)
    history = zoo.train_adam(model, d.X_train, d.y_train, epochs=train_epochs, lr=1e-3, batch_size=TRANSFORMER_BATCH,
                             weight_decay=TRANSFORMER_DECAY, seed=seed)
    with torch.no_grad():
        acc = (model(d.X_test).argmax(1) == d.y_test).float().mean().item()
    return {"task": task, "state": model.state_dict(), "X": torch.cat([d.X_train, d.X_test]),
            "y": torch.cat([d.y_train, d.y_test]), "n": n, "test_accuracy": acc, "train_losses": history}


def build(task: dict) -> tuple[nn.Module, dict]:
    """The trained model and the Objective's keyword arguments of a task."""
    if task.get("task", "mlp") == "mlp":
        model = nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))
        kw = {"weight_decay": 1e-3}
    else:
        from whybox import zoo

        model = zoo.transformer_classifier()
        kw = {"weight_decay": TRANSFORMER_DECAY, "params": whybox.factorable_params(model), "batch_size": TRANSFORMER_BATCH}
    model.load_state_dict(task["state"])
    model.eval()
    return model, kw


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


def make_mlp_task(n: int, n_test: int, seed: int = 0, record=None) -> dict:
    """Gaussian-mixture data and a ReLU MLP trained on its first n rows for 3 epochs (float32)."""
    X, y, gen = make_data(n, n_test, seed)
    model = train_mlp(X[:n], y[:n], gen, seed, record)
    with torch.no_grad():
        acc = (model(X[n:]).argmax(1) == y[n:]).float().mean().item()
    return {"task": "mlp", "state": model.state_dict(), "X": X, "y": y, "n": n, "test_accuracy": acc}


def epoch_seconds(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int, repeats: int = 3) -> float:
    """One pass of forward+backward over (X, y) in chunks of ``batch`` rows, best of ``repeats``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(X), batch):
            model.zero_grad()
            nn.functional.cross_entropy(model(X[i : i + batch]), y[i : i + batch]).backward()
        times.append(time.perf_counter() - start)
    return min(times)


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
    model, kw = build(task)
    X, y, Xt, yt = task["X"][:n], task["y"][:n], task["X"][n:], task["y"][n:]
    obj = whybox.Objective(model, "cross_entropy", X, y, **kw)
    start = time.perf_counter()
    obj.losses(X[:2], y[:2])  # torch.func's once-per-process warm-up (vmap of the loss), reported apart
    warm_up = time.perf_counter() - start
    epoch = epoch_seconds(model, X, y, obj.batch_size, args.epoch_repeats)
    for p in model.parameters():
        p.grad = None
    base = rss_mib()  # data, model, libraries: what the method starts from
    reset_peak_rss()  # the peak below is the method's own phase (Linux; else the process's peak)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: args.check_rows]
    second, curvature_error = "n/a", "n/a"
    ranks, estimated, measured = "n/a", "n/a", "n/a"
    if method == "projected":
        start = time.perf_counter()
        fast = whybox.ProjectedInfluence(obj, dim_in=args.proj_dim, dim_out=args.proj_dim, damping=args.damping).fit()
        fitted = time.perf_counter()
        scores = fast.scores(Xt, yt)
        done = time.perf_counter()
        second = -time.perf_counter()
        fast.scores(Xt, yt)
        second += time.perf_counter()
        peak = peak_rss_mib()
        start_slow = time.perf_counter()
        slow, F_slow = projected_slow_way(fast, Xt, yt, rows)
        slow_s = time.perf_counter() - start_slow
        curvature_error = float((fast.curvature.dense() - F_slow).norm() / F_slow.norm())
        label = f"projected {args.proj_dim}x{args.proj_dim} (k = {fast.dim}, empirical)"
    else:
        method, _, tol = method.partition(":")
        curvature = {"KFAC": whybox.KFAC, "EKFAC": whybox.EKFAC}[method](damping=args.damping)
        scoring = {"scoring": "dense"} if tol and float(tol) == 0 else {"rank_tolerance": float(tol)} if tol else {}
        start = time.perf_counter()
        fast = whybox.KFACInfluence(obj, curvature, **scoring).fit()
        fitted = time.perf_counter()
        scores = fast.scores(Xt, yt)
        done = time.perf_counter()
        peak = peak_rss_mib()
        start_slow = time.perf_counter()
        slow = whybox.InfluenceFunction(obj, curvature).fit().scores(Xt, yt, rows).double()
        slow_s = time.perf_counter() - start_slow
        route = "" if method == "KFAC" else ", dense" if "scoring" in scoring else f", low rank {tol}"
        label = f"{method} ({curvature.fisher}{route})"
        layers = fast.diagnostics.get("low_rank_layers", {})
        ranks = " / ".join(f"{v['rank']}{'' if v['route'] == 'low_rank' else ' (dense)'}" for v in layers.values()) or "n/a"
        estimated = max((v["estimated_error"] for v in layers.values() if v["route"] == "low_rank"), default="n/a")
        measured = fast.diagnostics.get("low_rank_measured_error", "n/a")
    ours = scores[:, rows].double()
    per_test = [float(np.corrcoef(ours[j], slow[j])[0, 1]) for j in range(len(slow))]
    queue.put({
        "n": n, "method": label, "fit s": fitted - start, "scores s": done - fitted,
        "total s": done - start, "epoch s": epoch, "total / epoch": (done - start) / epoch,
        "process warm-up s": warm_up, "RSS at start MiB": base, "peak RSS MiB": peak, "peak above start MiB": peak - base,
        "1 - pearson (all pairs)": 1 - float(np.corrcoef(ours.reshape(-1), slow.reshape(-1))[0, 1]),
        "1 - min pearson (per test)": 1 - min(per_test),
        "rel. error": float((ours - slow).norm() / slow.norm()),
        f"slow way s ({len(rows)} rows)": slow_s,
        "2nd query s": second, "curvature rel. error": curvature_error,
        "EK-FAC rank per layer": ranks, "est. error": estimated, "measured error (16 rows)": measured,
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[10_000], help="training-set sizes")
    ap.add_argument("--tests", type=int, default=100, help="test points")
    ap.add_argument("--methods", nargs="*", default=["KFAC", "EKFAC", "projected"], choices=["KFAC", "EKFAC", "projected"])
    ap.add_argument("--ekfac-rank-tolerance", type=float, nargs="*", default=[1e-2],
                    help="EKFAC: KFACInfluence(rank_tolerance=...), one run each; 0 = scoring='dense'")
    ap.add_argument("--proj-dim", type=int, default=32, help="projected method: dim_in = dim_out per layer")
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    ap.add_argument("--check-rows", type=int, default=500, help="training rows for the slow-way agreement")
    ap.add_argument("--quick", action="store_true", help="n = 2,000 and 20 test points")
    ap.add_argument("--task", choices=["mlp", "transformer"], default="mlp", help="see the module text")
    ap.add_argument("--train-epochs", type=int, default=3, help="transformer: epochs of Adam")
    ap.add_argument("--epoch-repeats", type=int, default=3, help="the epoch time is the best of this many passes")
    ap.add_argument("--out", default="whybox-out/bench_kfac")
    args = ap.parse_args()
    if args.quick:
        args.n, args.tests, args.check_rows = [2000], 20, 200
    torch.set_num_threads(args.threads)
    print(machine_info())
    if args.task == "mlp":
        print(f"MLP {N_FEATURES}-{HIDDEN}-{N_CLASSES} (ReLU, float32, {N_FEATURES * HIDDEN + HIDDEN + HIDDEN * N_CLASSES + N_CLASSES:,} "
              f"params), {args.tests} test points, weight decay 1e-3, damping {args.damping:g}, {args.threads} thread(s)")
    else:
        from whybox import zoo

        model = zoo.transformer_classifier()
        explained = sum(p.numel() for name, p in model.named_parameters() if name in whybox.factorable_params(model))
        print(f"transformer classifier (zoo.transformer_classifier: 4 layers, d_model 128, float32, "
              f"{sum(p.numel() for p in model.parameters()):,} params, {explained:,} explained: its Linear layers), "
              f"sequences of 32 tokens, {args.tests} test points, weight decay {TRANSFORMER_DECAY:g}, damping "
              f"{args.damping:g}, {args.threads} thread(s), chunks of {TRANSFORMER_BATCH}")
    ctx = mp.get_context("spawn")
    rows = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            kept = out / f"task_{args.task}_n{n}_m{args.tests}_e{args.train_epochs}.pt"
            if args.task == "transformer" and kept.exists():
                path, task = str(kept), torch.load(kept, weights_only=False)
                print(f"n = {n:,}: trained task reused from {kept}", end="")
            else:
                start = time.perf_counter()
                task = make_task(args.task, n, args.tests, train_epochs=args.train_epochs)
                print(f"n = {n:,}: trained in {time.perf_counter() - start:.0f} s", end="")
                path = str(kept if args.task == "transformer" else Path(tmp) / f"task{n}.pt")
                torch.save(task, path)
            losses = ", ".join(f"{v:.3f}" for v in task.get("train_losses", []))
            print(f", test accuracy {task['test_accuracy']:.3f}" + (f", training loss by epoch {losses}" if losses else ""), flush=True)
            for method in [f"EKFAC:{t:g}" if m == "EKFAC" else m for m in args.methods
                           for t in (args.ekfac_rank_tolerance if m == "EKFAC" else [None])]:
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
        for method in dict.fromkeys(r["method"] for r in rows):
            by_n = {r["n"]: r for r in rows if r["method"] == method}
            if sizes[0] in by_n and sizes[-1] in by_n:
                a, b = by_n[sizes[0]], by_n[sizes[-1]]
                slope = np.log(b["total s"] / a["total s"]) / np.log(sizes[-1] / sizes[0])
                print(f"{method}: log-log slope of total time in n ({sizes[0]} -> {sizes[-1]}) = {slope:.2f}; "
                      f"peak above start {a['peak above start MiB']:.0f} -> {b['peak above start MiB']:.0f} MiB "
                      f"(RSS at start {a['RSS at start MiB']:.0f} -> {b['RSS at start MiB']:.0f} MiB)")
    name = "bench_kfac.json" if args.task == "mlp" else f"bench_kfac_{args.task}.json"
    (out / name).write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
