"""What block CG, preconditioning and the kept-graph products each buy: iterations, HVPs and time to one rtol.

    python benchmarks/bench_cg.py                                   # digits LR, MLP, CNN at rtol 1e-4
    python benchmarks/bench_cg.py --tasks digits_mlp --rtol 1e-2

For the 5 test points of ``benchmarks/peers/bench_small.py`` (same models, damping, data), each row solves
(H + λI)X = V to the same relative residual ``--rtol``:

* ``per column``: 5 separate CG runs (one right-hand side each, no preconditioner): plain CG;
* ``block``: one block CG run over all 5 (``preconditioner=None``);
* ``block + gradients``: the default preconditioner (training gradients, Woodbury);
* ``block + K-FAC``: ``preconditioner=KFAC(damping)`` (its fit included in the time).

Columns: iterations (the sum over runs for ``per column``), HVPs (vectors multiplied by H), seconds (best
of ``--repeats``: fit + solve + the training gradients that scoring needs, their cache cleared before
each; the ``gradients`` preconditioner computes them in its fit), the true relative residual, and
1 − |r| of the 5 × n scores against ``Exact``.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch

import whybox
from whybox.evaluation.benchmark import TASKS
from whybox.utils import machine_info, markdown_table


def solve(obj, task, V, rtol, preconditioner, per_column):
    columns = [V[i : i + 1] for i in range(len(V))] if per_column else [V]
    out, its, hvps, res = [], 0, 0, 0.0
    for B in columns:
        cg = whybox.CG(damping=task.damping, rtol=rtol, preconditioner=preconditioner).fit(obj)
        out.append(cg.solve(B))
        d = cg.diagnostics
        its, hvps, res = its + d["iterations"], hvps + d["hvps"], max(res, d["relative_residual"])
    return torch.cat(out), its, hvps, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["digits_lr", "digits_mlp", "digits_cnn"])
    ap.add_argument("--rtol", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    for name in args.tasks:
        task = TASKS[name]
        obj, X_test, y_test, _, _ = task.train()
        X, y = X_test[:5], y_test[:5]
        V = obj.grads(X, y)
        G = obj.grads()
        reference = (whybox.Exact(damping=task.damping).fit(obj).solve(V) @ G.T).reshape(-1).numpy()
        configs = {
            "per column": (None, True),
            "block": (None, False),
            "block + gradients": ("gradients", False),
            "block + K-FAC": (lambda: whybox.KFAC(damping=task.damping), False),
        }
        for label, (pre, per_column) in configs.items():
            best = float("inf")
            for _ in range(args.repeats):
                obj._train_grads = obj._head_cache = None
                start = time.perf_counter()
                S, its, hvps, res = solve(obj, task, V, args.rtol, pre() if callable(pre) else pre, per_column)
                obj.train_grads(slice(None))  # what scoring needs (the gradients preconditioner computed them already)
                best = min(best, time.perf_counter() - start)
            r = abs(np.corrcoef((S @ G.T).reshape(-1).numpy(), reference)[0, 1])
            rows.append({"task": name, "p": obj.p, "solver": label, "iterations": its, "HVPs": hvps,
                         "seconds": best, "relative residual": res, "1 − |r| vs Exact": 1 - r})
    print(machine_info())
    print(f"rtol {args.rtol:g}; load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(markdown_table(rows, floatfmt=".3g"))


if __name__ == "__main__":
    main()
