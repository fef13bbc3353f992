"""Every attributor against retraining on the same work: one table (method × task × metric).

    python benchmarks/bench_attribution.py                                   # digits LR and iris MLP, every method
    python benchmarks/bench_attribution.py --tasks digits_lr digits_mlp digits_cnn --methods influence
    python benchmarks/bench_attribution.py --quick                           # a smoke run

Ground truth (leave-one-out, subset retraining, flipped-label retraining) is cached under --cache,
so a second run prints the table in seconds. Writes the table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from whybox.evaluation.benchmark import TASKS, BenchmarkSettings, check_methods, run_benchmark
from whybox.study import METHODS
from whybox.utils import machine_info, markdown_table

# influence with each inverse-HVP solver (exact = the default below 5,000 parameters), then every other method
ALL_METHODS = ["influence:exact", "influence:cg", "influence:lissa", "influence:arnoldi",
               *(m for m in sorted(METHODS) if m != "influence"), "tracin"]


def main() -> None:
    defaults = BenchmarkSettings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="*", default=defaults.tasks, choices=sorted(TASKS))
    ap.add_argument("--methods", nargs="*", default=ALL_METHODS,
                    help=f"from {sorted(METHODS)}, influence:SOLVER, tracin (default: {' '.join(ALL_METHODS)})")
    for f in fields(BenchmarkSettings):
        if f.name not in ("tasks", "methods") and f.type in ("int", "float"):
            ap.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.type == "int" else float, default=f.default)
    ap.add_argument("--cache", default=defaults.cache)
    ap.add_argument("--skip-self-scores", nargs="*", default=defaults.skip_self_scores,
                    help="methods whose n self-scores (mislabel columns) are not computed (n iterative solves)")
    ap.add_argument("--quick", action="store_true", help="2 test points, 8 + 8 LOO points, 8 subsets")
    ap.add_argument("--out", default="benchmarks/results/attribution")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args()
    if check_methods(a.methods):
        ap.error(f"unknown methods {check_methods(a.methods)}")
    torch.set_num_threads(a.threads)
    settings = BenchmarkSettings(**{f.name: getattr(a, f.name) for f in fields(BenchmarkSettings)})
    if a.quick:
        settings.n_test, settings.top_k, settings.random_k, settings.lds_subsets = 2, 8, 8, 8
    rows = run_benchmark(settings)
    header = machine_info()
    table = markdown_table(rows, ".3f")
    print(header)
    print(f"settings: {asdict(settings)}")
    print(table)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(f"{header}\n\nsettings: {asdict(settings)}\n\n{table}\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps({"machine": header, "settings": asdict(settings), "rows": rows},
                                                   indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
