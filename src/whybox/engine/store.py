"""Chunked, resumable attribution scores in a zarr store, computed by Dask tasks.

The [m, n] score matrix of any ``whybox.Attributor`` is cut into (test chunk × train chunk)
blocks. The attributor's test factors (influence: s_test) are computed once per test chunk and
broadcast; each block is one task that scores its training rows (``score_chunk``), writes its zarr
chunk, then marks it done. A run that is stopped (Ctrl-C, a crash, a lost worker) keeps every
finished block; running the same call again computes only the rest. The store's attributes carry
the sign/units statement, the settings and the diagnostics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from whybox.attribution import Attributor
from whybox.utils import digest


def _fingerprint(attributor: Attributor, X: torch.Tensor, y: torch.Tensor) -> str:
    """Identifies the problem, so a store is never resumed with other data, model or method."""
    obj = attributor.objective
    return digest(obj.theta, obj.X, obj.y, X, y, repr(attributor), f"{obj.weight_decay}|{obj.loss_name}")


def score_to_store(
    attributor: Attributor,
    X_test,
    y_test,
    path: str | Path,
    test_chunk: int = 64,
    train_chunk: int = 4096,
    scheduler: str | None = None,
    progress: bool = True,
    workers: int = 1,
) -> Any:
    """Compute ``attributor.scores`` for every (test, train) pair into a zarr store at ``path``; resume if present.

    Args:
        attributor: any fitted ``whybox.Attributor`` (positive score = the training point supports
            the test prediction; ``InfluenceFunction``: loss units, = removal_effect(order=1)).
        path: a directory (``.zarr``); holds arrays ``scores`` [m, n] and ``done`` [test chunks, train chunks].
        test_chunk, train_chunk: block sizes (memory per task ≈ train_chunk·p + test_chunk·p floats).
        scheduler: ``None``/``"synchronous"`` (in this process), ``"processes"`` (a local process
            pool), ``"distributed"`` (a local ``dask.distributed`` cluster of ``workers`` worker
            processes, one thread each, started and closed here), or a scheduler address
            ``"tcp://host:8786"`` to join an existing cluster. Threads are refused:
            ``functional_call`` swaps a module's parameters, which is not thread-safe.
        progress: show a progress bar over blocks.
        workers: worker processes of the local cluster (``scheduler="distributed"`` only).

    With a cluster the fitted attributor is sent to every worker once, and each test chunk's
    factors once; the workers must be able to import the model's class (true for whybox's zoo and
    for any installed package; a class defined in ``__main__`` travels by value with cloudpickle).

    Returns the ``zarr.Array`` (open it later with ``zarr.open(path)["scores"]``).
    """
    import dask  # imported here: dask and zarr cost ~1 s, which `import whybox` should not pay
    import zarr

    if scheduler == "threads":
        raise ValueError(
            "scheduler='threads' is not supported: the model's parameters are swapped during "
            "functional calls, which is not thread-safe; use 'processes' or 'distributed'"
        )
    if test_chunk < 1 or train_chunk < 1:
        raise ValueError("test_chunk and train_chunk must be >= 1")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and scheduler != "distributed":
        raise ValueError(f"workers={workers} starts a local cluster: it needs scheduler='distributed' (got {scheduler!r})")
    if not isinstance(attributor, Attributor):
        raise TypeError(f"attributor must be a whybox.Attributor, got {type(attributor).__name__}")
    obj = attributor.objective
    X, y = obj.check_data(X_test, y_test, "test")
    m, n = len(X), obj.n
    key = _fingerprint(attributor, X, y)
    root = zarr.open_group(str(path), mode="a")
    if "scores" in root:
        if root.attrs.get("fingerprint") != key:
            raise ValueError(
                f"{path} holds scores of a different problem (data, model or method changed); "
                "choose a new path or delete it to start over"
            )
        scores, done = root["scores"], root["done"]
    else:
        scores = root.create_array("scores", shape=(m, n), chunks=(test_chunk, train_chunk), dtype="f8", fill_value=np.nan)
        done = root.create_array("done", shape=(-(-m // test_chunk), -(-n // train_chunk)), dtype=bool, fill_value=False)
        root.attrs.update(fingerprint=key, sign=attributor.sign, units=attributor.units, method=repr(attributor),
                          weight_decay=obj.weight_decay, loss=obj.loss_name, n=n, p=obj.p, m=m)
    tc, rc = scores.chunks
    todo = ~done[:]
    bar = tqdm(total=int(todo.sum()), desc="score blocks", disable=not progress, unit="block")
    client = _client(scheduler, workers) if todo.any() else None
    try:
        a_task = client.scatter(attributor, broadcast=True) if client is not None else dask.delayed(attributor)
        for i in np.nonzero(todo.any(axis=1))[0]:
            rows = slice(i * tc, min((i + 1) * tc, m))
            factors = attributor.test_factors(X[rows], y[rows])
            f_task = client.scatter(factors, broadcast=True) if client is not None else dask.delayed(factors)
            cols = [j for j in np.nonzero(todo[i])[0]]
            tasks = [dask.delayed(_score_block)(a_task, f_task, j * rc, min((j + 1) * rc, n)) for j in cols]
            for j, block in zip(cols, _compute(tasks, client, scheduler)):
                scores[rows, j * rc : min((j + 1) * rc, n)] = block  # write, then mark: never a done flag without data
                done[i, j] = True
                bar.update()
        root.attrs["diagnostics"] = {k: v for k, v in attributor.diagnostics.items()
                                     if isinstance(v, (int, float, str, bool)) or v is None}
    finally:
        bar.close()
        if client is not None:  # ours to close; a joined cluster (an address) keeps running
            cluster = client.cluster if scheduler == "distributed" else None
            client.close()
            if cluster is not None:
                cluster.close()
    return scores


def _score_block(attributor: Attributor, factors, start: int, stop: int) -> np.ndarray:
    """One task: the scores of training rows [start, stop) against the broadcast test factors."""
    return attributor.score_chunk(factors, slice(start, stop)).detach().cpu().numpy()


def _client(scheduler: str | None, workers: int):
    if scheduler in (None, "synchronous", "processes"):
        return None
    from dask.distributed import Client, LocalCluster

    if scheduler == "distributed":  # one torch thread per worker process: workers × 1 = the cores asked for
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        return Client(cluster)
    if isinstance(scheduler, str) and "://" in scheduler:
        return Client(scheduler)
    raise ValueError(
        f"unknown scheduler {scheduler!r}; use None, 'synchronous', 'processes', 'distributed' or a "
        "scheduler address like 'tcp://host:8786'"
    )


def _compute(tasks, client, scheduler):
    import dask

    if client is not None:
        return client.compute(tasks, sync=True)
    return dask.compute(*tasks, scheduler=scheduler or "synchronous")
