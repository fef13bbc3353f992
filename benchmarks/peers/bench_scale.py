"""Scale tasks side by side with the other libraries: time in epochs, peak RSS, agreement.

    .venv-bench/bin/python benchmarks/peers/bench_scale.py                      # MLP 137k, n = 10,000
    ... bench_scale.py --n 10000 50000                                          # and n = 50,000
    ... bench_scale.py --task cnn --n 20000                                     # CNN ~105k params
    ... bench_scale.py --task transformer                                       # transformer 926k, n = 10,000
    ... bench_scale.py --quick                                                  # n = 2,000, 20 test points
    ... bench_scale.py --methods "whybox KFAC" "Kronfluence EK-FAC" --limit 300

Tasks (no downloads): ``mlp`` is ``benchmarks/bench_kfac.py``'s ``make_mlp_task`` (a ReLU MLP 256-512-10,
136,714 parameters, on a 10-class Gaussian mixture, 3 epochs of Adam, float32); ``cnn`` is a small
ReLU CNN (two 3×3 convolutions, max-pooling, two Linear layers; 105,514 parameters) on synthetic
3×16×16 images (a smooth random template per class plus noise), trained the same way;
``transformer`` is ``bench_kfac.py --task transformer``'s task (its ``make_task``):
``zoo.transformer_classifier`` (4 post-norm ``nn.TransformerEncoder`` layers, d_model 128, 925,700
parameters) on ``zoo.make_token_sequences`` (32 tokens, 4 classes), 3 epochs of Adam with weight decay
1e-4, batches of 256.

Which parameters are explained: all of them for ``mlp`` and ``cnn``; for ``transformer`` the 527,364
parameters of its ``nn.Linear`` modules (``whybox.factorable_params``: each layer's two feed-forward
Linears and the head; the attention in- and out-projections, embeddings and LayerNorms are held fixed),
and every library is pointed at that same set: whybox ``Objective(params=...)``, Kronfluence
``Task.get_influence_tracked_modules``, Captum ``TracInCP(layers=...)``, dattri ``module_name`` /
``layer_names``, pyDVL by ``requires_grad=False`` on the rest (its way of choosing layers;
"pyDVL EK-FAC (all parameters)" is the same call without that, to show what it does with the rest;
pyDVL runs the transformer in train mode, the same function with dropout 0: "pyDVL EK-FAC (eval mode)"
shows why).

Every method runs in a fresh process on the same trained model,
the same ``--tests`` test points and all n training points, with a wall-clock limit (``--limit``;
past it the process is killed and the table says so). Time = the method's fit + scores of every
test point against every training point, from a cold process after the imports (each library's
one-off warm-ups count). One epoch = one forward+backward pass over the n training points in
batches of ``--batch`` (best of 3), measured in the same process; the peers get the same batch size.
Memory: "peak RSS" is the high-water mark of the timed method alone (reset once the data, model and
imports are in place, ``whybox.utils.reset_peak_rss``); "peak above start" subtracts what the process
held then (the 100 × n answer included): what the method itself needs, which should stay flat in n.

The same curvature for everyone as far as each API allows: λ = weight decay + damping (1e-3 + 1e-3;
transformer 1e-4 + 1e-3) added to the curvature. Which Fisher each method uses (sampled = the true Fisher with one target
drawn from the model per example; empirical = the observed labels) is in the "curvature" column.

Agreement (Pearson r; one sign per method, fixed by the all-pairs r, since libraries differ in sign):
* "vs same curvature": with whybox's ``InfluenceFunction(obj, curvature)`` -- per-example gradients
  by vmap, ``curvature.solve`` on flat vectors: the slow way -- on ``--check-rows`` training rows,
  for the curvature closest to the method's (column "reference"); for Captum's TracIn the reference
  is the plain gradient dot product (identity curvature, one checkpoint);
* "vs Kronfluence EK-FAC": with Kronfluence's EK-FAC scores on all n training points.
"all" = all pairs, "min/test" = the smallest r over test points.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for bench_kfac
from bench_kfac import (  # noqa: E402
    HIDDEN,
    N_CLASSES,
    N_FEATURES,
    TRANSFORMER_BATCH,
    TRANSFORMER_DECAY,
    epoch_seconds,
    make_mlp_task,
    make_task,
)

DAMPING = 1e-3
WEIGHT_DECAY = {"mlp": 1e-3, "cnn": 1e-3, "transformer": TRANSFORMER_DECAY}  # each task's training decay


# ---------------------------------------------------------------------------- tasks
def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 192), nn.ReLU(), nn.Linear(192, N_CLASSES),
    )


def transformer() -> nn.Module:
    from whybox import zoo

    return zoo.transformer_classifier()


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer}


def explained(model: nn.Module, task: str) -> tuple[list[str] | None, list[str] | None]:
    """The explained parameter names and the modules that own them (None, None: all parameters, each
    library's default layers); for the transformer its Linear layers (``whybox.factorable_params``)."""
    if task != "transformer":
        return None, None
    import whybox

    params = whybox.factorable_params(model)
    modules = [name for name, m in model.named_modules()
               if any(f"{name}.{p}" in params for p, _ in m.named_parameters(recurse=False))]
    return params, modules


def make_transformer_task(n: int, n_test: int, seed: int = 0) -> dict:
    """``bench_kfac.make_task("transformer", ...)``: token sequences and the trained transformer."""
    return make_task("transformer", n, n_test, seed)


def make_cnn_task(n: int, n_test: int, seed: int = 0) -> dict:
    """Synthetic 3×16×16 images: a smooth random template per class, scaled, plus pixel noise; the
    CNN trained for 3 epochs of Adam (float32), as ``make_mlp_task`` trains the MLP."""
    gen = torch.Generator().manual_seed(seed)
    templates = nn.functional.interpolate(torch.randn(N_CLASSES, 3, 4, 4, generator=gen), size=16, mode="bilinear")
    y = torch.randint(0, N_CLASSES, (n + n_test,), generator=gen)
    scale = 0.5 + torch.rand(n + n_test, 1, 1, 1, generator=gen)
    X = 0.2 * scale * templates[y] + torch.randn(n + n_test, 3, 16, 16, generator=gen)
    torch.manual_seed(seed)
    model = cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=WEIGHT_DECAY["cnn"])
    for _ in range(3):
        for i in torch.randperm(n, generator=gen).split(256):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[i]), y[i]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(X[n:]).argmax(1) == y[n:]).float().mean().item()
    return {"state": model.state_dict(), "X": X, "y": y, "n": n, "test_accuracy": acc}


def load(path: str):
    task = torch.load(path, weights_only=False)
    model = MODELS[task["model"]]()
    model.load_state_dict(task["state"])
    model.eval()
    n = task["n"]
    return task, model, task["X"][:n], task["y"][:n], task["X"][n:], task["y"][n:]


# ---------------------------------------------------------------------------- methods
# each: (model, X, y, Xt, yt, args, tmp) -> scores [tests, n]; METHODS holds (run, curvature, reference, note)
def whybox_factored(kind: str, fisher: str):
    def run(model, X, y, Xt, yt, args, tmp):
        import whybox

        obj = whybox.Objective(model, "cross_entropy", X, y, **args.objective)
        curvature = {"KFAC": whybox.KFAC, "EKFAC": whybox.EKFAC}[kind](damping=DAMPING, fisher=fisher)
        return whybox.KFACInfluence(obj, curvature).fit().scores(Xt, yt)
    return run


def whybox_projected(model, X, y, Xt, yt, args, tmp):
    import whybox

    obj = whybox.Objective(model, "cross_entropy", X, y, **args.objective)
    return whybox.ProjectedInfluence(obj, dim_in=args.proj_dim, dim_out=args.proj_dim, damping=DAMPING).fit().scores(Xt, yt)


def kronfluence(strategy: str):
    def run(model, X, y, Xt, yt, args, tmp):
        from _kronfluence import classify_task
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments

        task_ = classify_task(args.modules)

        model = prepare_model(model, task_)
        analyzer = Analyzer("scale", model, task_, cpu=True, disable_tqdm=True, output_dir=tmp)
        train = TensorDataset(X, y)
        analyzer.fit_all_factors("f", train, per_device_batch_size=args.batch,
                                 factor_args=FactorArguments(strategy=strategy), overwrite_output_dir=True)
        analyzer.compute_pairwise_scores("s", "f", TensorDataset(Xt, yt), train, per_device_query_batch_size=len(Xt),
                                         per_device_train_batch_size=args.batch, overwrite_output_dir=True,
                                         score_args=ScoreArguments(damping_factor=args.lam))
        return analyzer.load_pairwise_scores("s")["all_modules"]
    return run


def pydvl_ekfac(freeze: bool, train_mode: bool):
    def run(model, X, y, Xt, yt, args, tmp):
        from pydvl.influence import SequentialInfluenceCalculator
        from pydvl.influence.torch import EkfacInfluence
        from pydvl.influence.torch.util import NestedTorchCatAggregator

        if freeze and args.params is not None:  # pyDVL explains the leaf modules whose parameters require grad
            for name, t in model.named_parameters():
                t.requires_grad_(name in args.params)
        if train_mode and args.task == "transformer":
            # in eval mode, with the attention weights frozen, PyTorch's fused attention (no derivative) runs
            # under pyDVL's torch.func gradients; train mode avoids it and is the same function (dropout 0)
            assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
            model.train()
        train = DataLoader(TensorDataset(X, y), batch_size=args.batch)
        infl = EkfacInfluence(model, update_diagonal=True, hessian_regularization=args.lam).fit(train)
        lazy = SequentialInfluenceCalculator(infl).influences(DataLoader(TensorDataset(Xt, yt), batch_size=len(Xt)), train)
        return lazy.compute(aggregator=NestedTorchCatAggregator())
    return run


def captum_tracincp(model, X, y, Xt, yt, args, tmp):
    from captum.influence import TracInCP

    path = str(Path(tmp) / "checkpoint.pt")
    torch.save(model.state_dict(), path)

    def load_checkpoint(m, p):
        m.load_state_dict(torch.load(p))
        return 1.0  # learning rate: one checkpoint, unit weight

    tracin = TracInCP(model, TensorDataset(X, y), [path], checkpoints_load_func=load_checkpoint,
                      loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=args.batch, sample_wise_grads_per_batch=True,
                      layers=args.modules)
    return tracin.influence((Xt, yt))


def _dattri_task(model):
    from dattri.task import AttributionTask

    def loss(params, data):
        x, t = data
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, x), t)

    return AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())


def dattri_if(kind: str):
    def run(model, X, y, Xt, yt, args, tmp):
        from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorEKFAC

        task = _dattri_task(model)
        if kind == "ekfac":
            att = IFAttributorEKFAC(task=task, module_name=args.modules, damping=args.lam)
        else:
            att = IFAttributorCG(task=task, layer_name=args.params, regularization=args.lam)
        train = DataLoader(TensorDataset(X, y), batch_size=args.batch)
        att.cache(train)
        with torch.no_grad():
            return att.attribute(train, DataLoader(TensorDataset(Xt, yt), batch_size=len(Xt))).T
    return run


def dattri_logra(model, X, y, Xt, yt, args, tmp):
    from dattri.algorithm.logra import LoGraAttributor
    from dattri.task import AttributionTask
    from torch.utils.data import default_collate

    def loss(m, batch, device):
        x, t = batch
        return nn.functional.cross_entropy(m(x[0].to(device)), t.to(device), reduction="sum")

    def collate(items):
        # dattri 0.3.0's compressor set-up runs the model on ``batch[0][0]`` (one example, no batch
        # dimension, which breaks its Linear set-up); an extra leading axis makes that the whole batch
        x, t = default_collate(items)
        return x[None], t

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    # cache_dir: its batch metadata file (default: the working directory, reused by a later run with
    # the same number of batches, which then returns scores of the wrong size)
    att = LoGraAttributor(task=task, layer_names=args.modules, proj_dim=args.proj_dim**2, offload="cpu", cache_dir=tmp)
    train = DataLoader(TensorDataset(X, y), batch_size=args.batch, collate_fn=collate)
    att.cache(train)
    return att.attribute(train, DataLoader(TensorDataset(Xt, yt), batch_size=len(Xt))).T


KS, KE, EE, ID = "KFAC (sampled)", "EKFAC (sampled)", "EKFAC (empirical)", "identity"
METHODS = {
    # name: (run, curvature, reference in the slow way, note)
    "whybox KFAC": (whybox_factored("KFAC", "sampled"), "K-FAC, true Fisher (sampled), factored Tikhonov λ", KS, ""),
    "whybox EKFAC": (whybox_factored("EKFAC", "sampled"), "EK-FAC, true Fisher (sampled), +λ", KE, ""),
    "whybox EKFAC (empirical)": (whybox_factored("EKFAC", "empirical"), "EK-FAC, empirical Fisher, +λ", EE, ""),
    "whybox projected": (whybox_projected, "projected d×d per layer, empirical Fisher, +λ", EE,
                         "approximation; its own slow way (exact in the projected space): bench_kfac.py"),
    "Kronfluence EK-FAC": (kronfluence("ekfac"), "EK-FAC, true Fisher (sampled), +λ", KE,
                           "its own sampled targets (not whybox's)"),
    "Kronfluence K-FAC": (kronfluence("kfac"), "K-FAC, true Fisher (sampled), λ added to eigenvalues", KS,
                          "damping differs: λ on G⊗A's eigenvalues, whybox factored Tikhonov"),
    "pyDVL EK-FAC": (pydvl_ekfac(True, True), "EK-FAC, G from ∇ of Σ_c √p_c log p_c, +λ", KE,
                     "pyDVL's Fisher: one backward of Σ_c √p_c log p_c (neither sampled nor empirical); Linear layers "
                     "only; transformer: the rest frozen, model in train mode (dropout 0: the same function)"),
    "pyDVL EK-FAC (eval mode)": (pydvl_ekfac(True, False), "EK-FAC, G from ∇ of Σ_c √p_c log p_c, +λ", KE,
                                 "as pyDVL EK-FAC, the model left in eval mode"),
    "pyDVL EK-FAC (all parameters)": (pydvl_ekfac(False, True), "EK-FAC, G from ∇ of Σ_c √p_c log p_c, +λ", KE,
                                      "every parameter requires grad (not frozen to the explained set)"),
    "Captum TracInCP": (captum_tracincp, "none (gradient dot product, 1 checkpoint)", ID, ""),
    "dattri EK-FAC": (dattri_if("ekfac"), "EK-FAC, empirical Fisher, +λ", EE, "Linear layers only"),
    "dattri LoGra": (dattri_logra, "projected d×d per layer, empirical Fisher, λ relative", EE,
                     "approximation; damping 1e-5·mean eigenvalue per layer block (its default; not settable to an absolute λ)"),
    "dattri CG": (dattri_if("cg"), "Hessian (not Gauss-Newton), CG 10 iterations (default), +λ", KE,
                  "Hessian, not GN: no matching slow way; compared with EK-FAC"),
}


PRELOAD = {
    "whybox": ["whybox"],
    "Kronfluence": ["kronfluence.analyzer", "kronfluence.arguments", "kronfluence.task"],
    "pyDVL": ["pydvl.influence", "pydvl.influence.torch", "pydvl.influence.torch.util"],
    "Captum": ["captum.influence"],
    "dattri": ["dattri.algorithm.influence_function", "dattri.algorithm.logra", "dattri.task"],
}


def run_method(path: str, method: str, args: argparse.Namespace, tmp: str) -> None:
    """In a fresh process: imports, epoch, then the timed method; scores and a JSON line to ``tmp``."""
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import importlib

    from whybox.utils import peak_rss_mib, reset_peak_rss, rss_mib

    try:
        for module in PRELOAD[method.split()[0]]:
            importlib.import_module(module)  # imports are not timed
    except Exception as err:
        (Path(tmp) / "error.txt").write_text(f"{type(err).__name__}: {err}")
        raise
    task, model, X, y, Xt, yt = load(path)
    epoch = epoch_seconds(model, X, y, args.batch)
    model.zero_grad(set_to_none=True)
    base = rss_mib()  # data, model, libraries
    reset_peak_rss()  # the peak below is the method's own phase (Linux; else the process's peak)
    start = time.perf_counter()
    try:
        scores = METHODS[method][0](model, X, y, Xt, yt, args, tmp)
    except Exception as err:  # the table names the failure
        (Path(tmp) / "error.txt").write_text(f"{type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''}")
        raise
    total = time.perf_counter() - start
    scores = torch.as_tensor(scores).detach().float()
    if scores.numel() != len(Xt) * len(X):
        (Path(tmp) / "error.txt").write_text(f"returned scores of shape {tuple(scores.shape)}, not ({len(Xt)}, {len(X)})")
        raise ValueError("wrong number of scores")
    scores = scores.reshape(len(Xt), len(X))
    torch.save(scores, Path(tmp) / "scores.pt")
    (Path(tmp) / "row.json").write_text(json.dumps({"total s": total, "epoch s": epoch, "peak RSS MiB": peak_rss_mib(),
                                                    "RSS at start MiB": base}))


def run_reference(path: str, args: argparse.Namespace, tmp: str) -> None:
    """The slow way for each reference curvature on the check rows (flat per-example gradients)."""
    import whybox

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    task, model, X, y, Xt, yt = load(path)
    obj = whybox.Objective(model, "cross_entropy", X, y, **args.objective)
    rows = torch.load(Path(tmp) / "rows.pt")
    refs, seconds = {}, {}
    for name, curvature in [(KS, whybox.KFAC(damping=DAMPING, fisher="sampled")),
                            (KE, whybox.EKFAC(damping=DAMPING, fisher="sampled")),
                            (EE, whybox.EKFAC(damping=DAMPING, fisher="empirical"))]:
        start = time.perf_counter()
        refs[name] = whybox.InfluenceFunction(obj, curvature).fit().scores(Xt, yt, rows).double()
        seconds[name] = time.perf_counter() - start
    start = time.perf_counter()
    refs[ID] = (obj.grads(Xt, yt).double() @ obj.grads(X[rows], y[rows]).double().T)
    seconds[ID] = time.perf_counter() - start
    torch.save(refs, Path(tmp) / "refs.pt")
    (Path(tmp) / "row.json").write_text(json.dumps(seconds))


def in_process(target, args_: tuple, limit: float) -> bool:
    """Run ``target(*args_)`` in a fresh spawned process; False if it ran past ``limit`` (killed) or failed."""
    proc = mp.get_context("spawn").Process(target=target, args=args_)
    proc.start()
    proc.join(limit)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return False
    return proc.exitcode == 0


def agreement(scores: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Pearson r of all pairs and the smallest per-test r, after one sign for the whole matrix."""
    a, b = scores.double().numpy(), ref.double().numpy()
    r = float(np.corrcoef(a.reshape(-1), b.reshape(-1))[0, 1])
    sign = 1.0 if r >= 0 else -1.0
    per_test = [float(np.corrcoef(sign * a[j], b[j])[0, 1]) for j in range(len(a))]
    return abs(r), min(per_test)


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=list(MODELS), default="mlp")
    ap.add_argument("--n", type=int, nargs="*", default=None,
                    help="training-set sizes (default: mlp 10,000; cnn 20,000; transformer 10,000)")
    ap.add_argument("--tests", type=int, default=100, help="test points")
    ap.add_argument("--methods", nargs="*", default=None, choices=list(METHODS),
                    help="default: all but the pyDVL variants (eval mode) and (all parameters) (transformer: all but 'dattri CG')")
    ap.add_argument("--limit", type=float, default=900, help="seconds per method before it is stopped")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch size of the epoch and of the peers' data loaders (default 512; transformer 256, "
                         "also whybox's chunks there)")
    ap.add_argument("--proj-dim", type=int, default=None,
                    help="projected methods: d per side of each layer (default 32; transformer 16: at 32 its "
                         "9 layers exceed whybox's max_dim=8192)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    ap.add_argument("--check-rows", type=int, default=None,
                    help="training rows for the slow-way agreement (default 500; transformer 300)")
    ap.add_argument("--quick", action="store_true", help="n = 2,000 and 20 test points")
    ap.add_argument("--out", default="benchmarks/results/peers_scale.md", help="markdown file to append the table to")
    args = ap.parse_args()
    big = args.task == "transformer"
    if args.n is None:
        args.n = [20_000] if args.task == "cnn" else [10_000]
    if args.methods is None:
        variants = ["pyDVL EK-FAC (eval mode)", "pyDVL EK-FAC (all parameters)"]
        args.methods = [m for m in METHODS if m not in (["dattri CG"] if big else variants)]
    if args.proj_dim is None:
        args.proj_dim = 16 if big else 32
    if args.batch is None:
        args.batch = TRANSFORMER_BATCH if big else 512
    if args.check_rows is None:
        args.check_rows = 300 if big else 500
    args.decay = WEIGHT_DECAY[args.task]
    args.lam = args.decay + DAMPING
    args.params, args.modules = explained(MODELS[args.task](), args.task)
    args.objective = {"weight_decay": args.decay, "params": args.params} | ({"batch_size": args.batch} if big else {})
    if args.quick:
        args.n, args.tests, args.check_rows = [2000], 20, 200
    torch.set_num_threads(args.threads)
    os.environ["TQDM_DISABLE"] = "1"  # the peers' progress bars, in the spawned processes
    from importlib.metadata import version

    from whybox.utils import machine_info, markdown_table

    libs = ", ".join(f"{lib} {version(lib)}" for lib in ("kronfluence", "pyDVL", "captum", "dattri"))
    model = MODELS[args.task]()
    p = sum(x.numel() for x in model.parameters())
    chosen = "all explained" if args.params is None else (
        f"{sum(x.numel() for name, x in model.named_parameters() if name in args.params):,} explained: the "
        f"Linear modules {', '.join(args.modules)}")
    header = [machine_info() + f"; {libs}",
              f"task {args.task} ({p:,} params, {chosen}; float32), {args.tests} test points, weight decay "
              f"{args.decay:g} + damping {DAMPING:g} = λ {args.lam:g}, batch {args.batch}, projection {args.proj_dim}×{args.proj_dim} "
              f"per layer, limit {args.limit:g} s per method, {args.threads} thread(s); load average at start {load_average()}"]
    print("\n".join(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            task = {"mlp": make_mlp_task, "cnn": make_cnn_task, "transformer": make_transformer_task}[args.task](n, args.tests)
            task["model"] = args.task
            print(f"n = {n:,}: trained, test accuracy {task['test_accuracy']:.3f}", flush=True)
            path = str(Path(tmp) / f"task{n}.pt")
            torch.save(task, path)
            check = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: args.check_rows]
            ref_dir = Path(tmp) / f"ref{n}"
            ref_dir.mkdir()
            torch.save(check, ref_dir / "rows.pt")
            if not in_process(run_reference, (path, args, str(ref_dir)), 3 * args.limit):
                raise RuntimeError("the slow-way references did not finish")
            refs = torch.load(ref_dir / "refs.pt")
            print(f"slow-way references on {len(check)} rows: {json.loads((ref_dir / 'row.json').read_text())}", flush=True)
            kron = None
            order = sorted(args.methods, key=lambda m: m != "Kronfluence EK-FAC")  # its scores are a reference
            for method in order:
                _, curvature, ref_name, note = METHODS[method]
                out = Path(tmp) / f"{n}-{method.replace(' ', '_')}"
                out.mkdir()
                start = time.perf_counter()
                in_process(run_method, (path, method, args, str(out)), args.limit)
                row = {"n": n, "method": method, "total s": math.nan, "epoch s": math.nan, "total / epoch": math.nan,
                       "peak RSS MiB": math.nan, "peak above start MiB": math.nan, "curvature": curvature, "reference": ref_name,
                       "r all (same curv.)": math.nan, "r min/test (same curv.)": math.nan,
                       "r all (Kronfluence EK-FAC)": math.nan, "r min/test (Kronfluence EK-FAC)": math.nan, "note": note}
                if not (out / "row.json").exists():
                    wall = time.perf_counter() - start
                    error = (out / "error.txt").read_text() if (out / "error.txt").exists() else "failed (see the log)"
                    row["note"] = (f"did not finish in {args.limit:g} s" if wall >= args.limit else error) + (
                        f"; {note}" if note else "")
                    rows.append(row)
                    print(markdown_table(rows[-1:]), flush=True)
                    continue
                row.update(json.loads((out / "row.json").read_text()))
                row["peak above start MiB"] = row["peak RSS MiB"] - row.pop("RSS at start MiB")
                row["total / epoch"] = row["total s"] / row["epoch s"]
                scores = torch.load(out / "scores.pt")
                row["r all (same curv.)"], row["r min/test (same curv.)"] = agreement(scores[:, check], refs[ref_name])
                if method == "Kronfluence EK-FAC":
                    kron = scores
                if kron is not None:
                    row["r all (Kronfluence EK-FAC)"], row["r min/test (Kronfluence EK-FAC)"] = agreement(scores, kron)
                rows.append(row)
                print(markdown_table(rows[-1:]), flush=True)
    table = markdown_table(rows)
    print()
    print(table)
    sizes = sorted({r["n"] for r in rows})
    lines = []
    if len(sizes) > 1:
        for method in dict.fromkeys(r["method"] for r in rows):
            by_n = {r["n"]: r for r in rows if r["method"] == method and not math.isnan(r["total s"])}
            if sizes[0] in by_n and sizes[-1] in by_n:
                a, b = by_n[sizes[0]], by_n[sizes[-1]]
                slope = np.log(b["total s"] / a["total s"]) / np.log(sizes[-1] / sizes[0])
                lines.append(f"{method}: log-log slope of total time in n ({sizes[0]} -> {sizes[-1]}) = {slope:.2f}; "
                             f"peak RSS {a['peak RSS MiB']:.0f} -> {b['peak RSS MiB']:.0f} MiB, above the start "
                             f"{a['peak above start MiB']:.0f} -> {b['peak above start MiB']:.0f} MiB")
        print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "bench_scale.py " + shlex.join(sys.argv[1:])
        with out.open("a") as f:
            f.write(f"\n## `{command}` ({time.strftime('%Y-%m-%d %H:%M')}; load average at end {load_average()})\n\n"
                    + "\n\n".join(header) + "\n\n" + table + "\n" + ("\n" + "\n".join(lines) + "\n" if lines else ""))


if __name__ == "__main__":
    main()
