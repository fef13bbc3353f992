"""Scoring into the zarr store in this process vs on a local Dask cluster of 1 and 2 worker processes.

    python benchmarks/bench_dask.py                 # digits MLP (p = 2,410), training set tiled to n = 120,000
    python benchmarks/bench_dask.py --tile 20 --test 32

The work is ``score_to_store`` of an ``InfluenceFunction`` (CG, damping 0.01) on a digits MLP whose
training set is tiled ``--tile`` times (the scoring cost is per-example gradients of every training
row, so n sets it; s_test is solved once up front). Every run writes a fresh store; the times include
the cluster's start-up (worker processes importing torch, a few seconds). Every variant's matrix is compared with the in-process one.
Ratios are measured in one run on a shared machine: with 2 cores and other load the 2-worker
speed-up is bounded by the cores actually free.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import torch

import whybox
from whybox import zoo
from whybox.engine import score_to_store
from whybox.utils import machine_info, markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=100, help="copies of the 1,200 digits training rows")
    ap.add_argument("--test", type=int, default=64, help="test points")
    ap.add_argument("--train-chunk", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)

    d = zoo.load("digits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        obj, _ = zoo.train(zoo.mlp(d.n_features, d.n_classes), "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    X, y = d.X_train.repeat(args.tile, 1), d.y_train.repeat(args.tile)
    obj = obj.with_data(X, y)
    inf = whybox.InfluenceFunction(obj, whybox.CG(damping=0.01)).fit()
    X_test, y_test = d.X_test[: args.test], d.y_test[: args.test]
    inf.s_test(X_test, y_test)  # solve once up front (one test chunk = these rows): every variant times scoring alone

    rows, reference = [], None
    for label, scheduler, workers in [("in process", None, 1), ("dask, 1 worker", "distributed", 1),
                                      ("dask, 2 workers", "distributed", 2)]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            arr = score_to_store(inf, X_test, y_test, f"{tmp}/s.zarr", test_chunk=args.test, train_chunk=args.train_chunk,
                                 scheduler=scheduler, workers=workers, progress=False)
            total = time.perf_counter() - start
            scores = arr[:]
        reference = scores if reference is None else reference
        rows.append({"backend": label, "n": obj.n, "test points": args.test, "seconds (incl. cluster start)": total,
                     "max |Δ| vs in process": float(np.abs(scores - reference).max())})
    for r in rows:
        r["speed-up vs 1 worker"] = rows[1]["seconds (incl. cluster start)"] / r["seconds (incl. cluster start)"]
    print(machine_info())
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
