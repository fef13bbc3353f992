"""Every attributor against retraining on the same work: one table (method × task × metric).

    python benchmarks/bench_attribution.py                                   # digits LR and iris MLP, every method
    python benchmarks/bench_attribution.py --tasks digits_lr digits_mlp digits_cnn --methods influence
    python benchmarks/bench_attribution.py --quick                           # a smoke run
    python benchmarks/bench_attribution.py --scale                           # LDS on the scale task (below)
    python benchmarks/bench_attribution.py --tasks digits_cnn --keep-rows benchmarks/results/attribution.json

``--keep-rows JSON``: the rows of tasks this run does not compute are taken from that file (an earlier
output of this script), and the output says which command and settings produced which rows.

Ground truth (leave-one-out, subset retraining, flipped-label retraining) is cached under --cache,
so a second run prints the table in seconds. Writes the table to benchmarks/results/.

``--scale``: LDS only, on the scale task of ``bench_kfac.py`` (``make_mlp_task``: MLP 256-512-10,
136,714 parameters, float32, 3 epochs of Adam on n = 10,000 Gaussian-mixture points, not at a
minimum). Each subset model is retrained *with that recipe* (``bench_kfac.train_mlp``: same
initialisation seed, same minibatch generator, Adam, 3 epochs) on the kept half, and the test
losses of the retrained models are cached (``subset_ground_truth(train=..., recipe=...)``). The
test points are the task's held-out points. Methods: influence with K-FAC / EK-FAC, projected
influence, TracIn over the run's per-epoch checkpoints (η = Adam's lr), gradient dot/cosine,
representer points, Euclidean nearest neighbours. Writes benchmarks/results/attribution_scale.* and
copies that table to the end of attribution.md (each mode keeps the other's table there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

import whybox
from whybox.evaluation.benchmark import TASKS, BenchmarkSettings, check_methods, run_benchmark
from whybox.study import METHODS
from whybox.utils import machine_info, markdown_table

# influence with each inverse-HVP solver (exact = the default below 5,000 parameters), then every other method
ALL_METHODS = ["influence:exact", "influence:cg", "influence:lissa", "influence:arnoldi", "influence:datainf",
               *(m for m in sorted(METHODS) if m != "influence")]
SCALE_METHODS = ["influence:kfac", "influence:ekfac", "projected", "tracin", "gradient_dot", "gradient_cosine",
                 "representer", "euclidean"]


def main() -> None:
    defaults = BenchmarkSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=defaults.tasks, choices=sorted(TASKS))
    ap.add_argument("--methods", nargs="*", default=None,
                    help=f"from {sorted(METHODS)}, influence:SOLVER, tracin (default: {' '.join(ALL_METHODS)}; "
                         f"with --scale: {' '.join(SCALE_METHODS)})")
    for f in fields(BenchmarkSettings):
        if f.name not in ("tasks", "methods") and f.type in ("int", "float"):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type == "int" else float, default=f.default)
    ap.add_argument("--cache", default=defaults.cache)
    ap.add_argument("--skip-self-scores", nargs="*", default=defaults.skip_self_scores,
                    help="methods whose n self-scores (mislabel columns) are not computed (n iterative solves)")
    ap.add_argument("--quick", action="store_true", help="2 test points, 8 + 8 LOO points, 8 subsets")
    ap.add_argument("--out", default=None, help="output path without suffix (default: benchmarks/results/attribution, "
                                                "with --scale: benchmarks/results/attribution_scale)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--keep-rows", default=None, help="JSON written by an earlier run: keep its rows of the tasks "
                                                      "not run now (see above)")
    ap.add_argument("--scale", action="store_true", help="LDS on the scale task instead (see above)")
    ap.add_argument("--scale-n", type=int, default=10_000, help="--scale: training points")
    ap.add_argument("--scale-tests", type=int, default=50, help="--scale: held-out test points")
    ap.add_argument("--scale-subsets", type=int, default=100, help="--scale: random subsets (each keeps --lds-alpha)")
    ap.add_argument("--scale-damping", type=float, default=1e-3, help="--scale: damping of the influence methods")
    ap.add_argument("--scale-projection-dims", type=int, nargs="*", default=[32, 64],
                    help="--scale: method projected runs once per d (d × d per layer)")
    a = ap.parse_args()
    a.methods = a.methods or (SCALE_METHODS if a.scale else ALL_METHODS)
    if check_methods(a.methods):
        ap.error(f"unknown methods {check_methods(a.methods)}")
    torch.set_num_threads(a.threads)
    if a.scale:
        scale_lds(a)
        return
    a.out = a.out or "benchmarks/results/attribution"
    settings = BenchmarkSettings(**{f.name: getattr(a, f.name) for f in fields(BenchmarkSettings)})
    if a.quick:
        settings.n_test, settings.top_k, settings.random_k, settings.lds_subsets = 2, 8, 8, 8
    kept_runs, kept_rows = _kept(a.keep_rows, settings.tasks)
    facts: dict = {}
    start = time.perf_counter()
    rows = run_benchmark(settings, facts=facts)
    run = {"command": "python benchmarks/bench_attribution.py " + " ".join(sys.argv[1:]), "machine": machine_info(),
           "settings": asdict(settings), "tasks": settings.tasks, "ground_truth": facts,
           "wall_s": time.perf_counter() - start}
    runs, rows = [*kept_runs, run], [*kept_rows, *rows]
    table = markdown_table(rows, ".3f")
    text = "\n\n".join([*(_describe(r) for r in runs), table]) + "\n"
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=1, default=str), encoding="utf-8")
    attach_scale(out.with_suffix(".md"), Path(f"{out}_scale.md"))


def _kept(path: str | None, running: list[str]) -> tuple[list[dict], list[dict]]:
    """The runs and rows of an earlier output (``--keep-rows``) for the tasks not run now."""
    if path is None:
        return [], []
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "runs" not in data:  # written before runs were recorded: one run, its command rebuilt from its settings
        tasks = data["settings"]["tasks"]
        data["runs"] = [{"command": f"python benchmarks/bench_attribution.py --tasks {' '.join(tasks)} (rebuilt from "
                                    "its settings; methods: the defaults then)", "machine": data["machine"],
                         "settings": data["settings"], "tasks": tasks}]
    rows = [r for r in data["rows"] if r["task"] not in running]
    kept = {r["task"] for r in rows}
    runs = []
    for r in data["runs"]:
        tasks = [t for t in r["tasks"] if t in kept]
        if tasks:
            runs.append({**r, "tasks": tasks, "ground_truth": {t: v for t, v in r.get("ground_truth", {}).items() if t in kept}})
    return runs, rows


def _describe(run: dict) -> str:
    """Which command, machine and settings produced which rows, and how their ground truth was computed."""
    lines = [f"Rows of {', '.join(run['tasks'])}: `{run['command']}`"
             + (f" ({run['wall_s'] / 60:.1f} min wall)" if "wall_s" in run else ""),
             run["machine"], f"settings: {run['settings']}"]
    for task, fact in run.get("ground_truth", {}).items():
        lines.append(f"ground truth of {task}: " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in fact.items()))
    return "\n\n".join(lines)


SCALE_SECTION = "\n## Scale task (LDS only)\n\n"


def attach_scale(main_md: Path, scale_md: Path) -> None:
    """Carry the scale table (written by --scale) at the end of the main table's file, replacing an older copy."""
    if main_md.exists() and scale_md.exists():
        text = main_md.read_text(encoding="utf-8").split(SCALE_SECTION)[0].rstrip("\n") + "\n"
        main_md.write_text(text + SCALE_SECTION + scale_md.read_text(encoding="utf-8"), encoding="utf-8")


def scale_lds(a: argparse.Namespace) -> None:
    """LDS of every method on ``bench_kfac.make_mlp_task`` against retraining with its own recipe."""
    import warnings

    import numpy as np
    from bench_kfac import HIDDEN, N_CLASSES, N_FEATURES, make_data, make_mlp_task, train_mlp
    from scipy.stats import spearmanr

    from whybox.attribution import CheckpointRecorder
    from whybox.evaluation import lds_from_scores, random_subsets, subset_ground_truth
    from whybox.evaluation.benchmark import _make, _short
    from whybox.study import MethodSettings, make_attributor

    n, m, seed = a.scale_n, a.scale_tests, a.seed
    subsets = 8 if a.quick else a.scale_subsets
    record = CheckpointRecorder()
    task = make_mlp_task(n, m, seed, record=record)
    model = torch.nn.Sequential(torch.nn.Linear(N_FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, N_CLASSES))
    model.load_state_dict(task["state"])
    model.eval()
    X, y = task["X"][:n], task["y"][:n]
    Xt, yt = task["X"][n:], task["y"][n:]
    obj = whybox.Objective(model, "cross_entropy", X, y, weight_decay=1e-3)

    def recipe(mask: np.ndarray) -> dict:
        Xa, ya, gen = make_data(n, m, seed)  # the generator in the state the original training started from
        return train_mlp(Xa[:n][mask], ya[:n][mask], gen, seed).state_dict()

    start = time.perf_counter()
    again = recipe(np.ones(n, dtype=bool))
    retrain_s = time.perf_counter() - start
    drift = max(float((again[k] - task["state"][k]).abs().max()) for k in again)
    masks = random_subsets(n, subsets, a.lds_alpha, seed)
    start = time.perf_counter()
    actual = subset_ground_truth(obj, Xt, yt, masks, cache=a.cache, train=recipe,
                                 recipe=f"bench_kfac.train_mlp(seed={seed}) n={n} m={m}")
    truth_s = time.perf_counter() - start

    def other_seed(mask: np.ndarray) -> dict:  # the same data, another initialisation and minibatch order
        Xa, ya, _ = make_data(n, m, seed)
        return train_mlp(Xa[:n][mask], ya[:n][mask], torch.Generator().manual_seed(seed + 1000), seed + 1).state_dict()

    other = subset_ground_truth(obj, Xt, yt, masks, cache=a.cache, train=other_seed,
                                recipe=f"bench_kfac.train_mlp(seed={seed + 1}, order seed {seed + 1000}) n={n} m={m}")
    seed_agreement = float(np.mean([spearmanr(actual[:, t], other[:, t])[0] for t in range(m)]))
    rows = []
    methods = [x for m in a.methods for x in ([f"projected:{d}" for d in a.scale_projection_dims] if m == "projected" else [m])]
    for method in methods:
        row = {"method": method}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                t0 = time.perf_counter()
                if method == "tracin":  # the run's own checkpoints, with Adam's learning rate
                    att = whybox.TracIn(obj, record.checkpoints, record.learning_rates).fit()
                elif method.startswith("projected:"):  # d × d per layer
                    settings = MethodSettings(method="projected", projection_dim=int(method.split(":")[1]),
                                              damping=a.scale_damping)
                    att = make_attributor(obj, settings)
                else:
                    att = _make(obj, method, a.scale_damping)
                fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                scores = att.scores(Xt, yt)
                score_s = time.perf_counter() - t0
                per_test = lds_from_scores(scores, masks, actual)
                row.update(lds=float(np.mean(per_test)), lds_sem=float(np.std(per_test, ddof=1) / np.sqrt(m)),
                           lds_min=float(np.min(per_test)), lds_max=float(np.max(per_test)), fit_s=fit_s, score_s=score_s)
                row["note"] = _short(caught[0].message) if caught else ""
            except (ValueError, RuntimeError) as err:
                row.update(dict.fromkeys(("lds", "lds_sem", "lds_min", "lds_max", "fit_s", "score_s"), float("nan")))
                row["note"] = f"{type(err).__name__}: {_short(err)}"
        print(f"{method}: lds {row['lds']:.3f}", flush=True)
        rows.append(row)
    header = machine_info()
    about = (f"task: bench_kfac.make_mlp_task(n={n:,}, n_test={m}, seed={seed}): MLP {N_FEATURES}-{HIDDEN}-{N_CLASSES} "
             f"(ReLU, float32, p = {obj.p:,}), 3 epochs of Adam (lr 1e-3, L2 1e-3, batch 256), test accuracy "
             f"{task['test_accuracy']:.3f}, ‖∇R(θ̂)‖ = {float(obj.risk_grad().norm()):.2e}\n"
             f"ground truth: {subsets} random subsets keeping {a.lds_alpha:g} of the training points, each retrained "
             f"from scratch with the same recipe (one retrain on all n: {retrain_s:.1f} s, reproduces θ̂ to "
             f"max |Δθ| = {drift:.1e}; ground truth {truth_s:.0f} s this run, cached); retraining noise: the same "
             f"subsets retrained with another initialisation and minibatch order rank the test losses with Spearman "
             f"{seed_agreement:.3f} against these (mean over test points); LDS = Spearman over subsets "
             f"per test point, mean over {m} test points (sem = its standard error); damping {a.scale_damping:g}; "
             f"TracIn: {len(record)} checkpoints (after each epoch), η = {record.learning_rates[0]:g}")
    table = markdown_table(rows, ".3f")
    print(header)
    print(about)
    print(table)
    out = Path(a.out or "benchmarks/results/attribution_scale")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_attribution.py --scale" + (" --quick" if a.quick else "")
    out.with_suffix(".md").write_text(f"`{command}`\n\n{header}\n\n{about}\n\n{table}\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"machine": header, "about": about, "rows": rows}, indent=1,
                                                   default=str), encoding="utf-8")
    if out.name.endswith("_scale"):
        attach_scale(out.with_name(out.name[: -len("_scale")]).with_suffix(".md"), out.with_suffix(".md"))


if __name__ == "__main__":
    main()
