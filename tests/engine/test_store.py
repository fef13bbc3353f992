"""Chunked zarr store: same numbers as in memory, resumes only unfinished blocks, refuses a foreign store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

import whybox
from whybox.engine import score_to_store


def test_store_matches_in_memory_scores_and_resumes(binary_lr, tmp_path):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj).fit()
    X, y = d.X_test[:10], d.y_test[:10]
    path = tmp_path / "scores.zarr"
    arr = score_to_store(inf, X, y, path, test_chunk=4, train_chunk=100, progress=False)
    expected = inf.scores(X, y).numpy()
    np.testing.assert_allclose(arr[:], expected, rtol=1e-12)
    root = zarr.open_group(str(path), mode="a")
    assert root["done"][:].all() and root.attrs["sign"] == inf.sign and root.attrs["units"] == "loss"
    np.testing.assert_allclose(arr[:], -inf.up_loss(X, y).numpy() / obj.n, rtol=1e-12)  # the stored sign: + = supports

    # a run stopped mid-way: one block lost (never marked done); resuming recomputes only it
    root["done"][1, 2] = False
    root["scores"][4:8, 200:300] = np.nan
    root["scores"][0:4, 0:100] = 7.0  # a finished block: must NOT be recomputed
    arr = score_to_store(inf, X, y, path, test_chunk=4, train_chunk=100, progress=False)
    np.testing.assert_allclose(arr[4:8, 200:300], expected[4:8, 200:300], rtol=1e-12)
    assert (arr[0:4, 0:100] == 7.0).all()


def test_store_refuses_a_different_problem(binary_lr, tmp_path):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj).fit()
    score_to_store(inf, d.X_test[:3], d.y_test[:3], tmp_path / "s.zarr", progress=False)
    with pytest.raises(ValueError, match="different problem"):
        score_to_store(inf, d.X_test[3:6], d.y_test[3:6], tmp_path / "s.zarr", progress=False)
    with pytest.raises(ValueError, match="not thread-safe"):
        score_to_store(inf, d.X_test[:3], d.y_test[:3], tmp_path / "t.zarr", scheduler="threads")


def test_dask_cluster_of_worker_processes_gives_the_same_scores(binary_lr, tmp_path):
    """A real local dask.distributed cluster with two worker processes (not threads)."""
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj).fit()
    arr = score_to_store(inf, d.X_test[:5], d.y_test[:5], tmp_path / "d.zarr", test_chunk=3, train_chunk=64,
                         scheduler="distributed", workers=2, progress=False)
    torch.testing.assert_close(torch.from_numpy(arr[:]), inf.scores(d.X_test[:5], d.y_test[:5]), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="needs scheduler='distributed'"):
        score_to_store(inf, d.X_test[:5], d.y_test[:5], tmp_path / "e.zarr", workers=2)


def test_joins_a_running_scheduler_by_address(binary_lr, tmp_path):
    from dask.distributed import LocalCluster

    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj).fit()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        arr = score_to_store(inf, d.X_test[:4], d.y_test[:4], tmp_path / "a.zarr", train_chunk=100,
                             scheduler=cluster.scheduler_address, progress=False)
        assert len(cluster.workers) == 1  # the cluster we joined is still there: score_to_store left it running
    torch.testing.assert_close(torch.from_numpy(arr[:]), inf.scores(d.X_test[:4], d.y_test[:4]), rtol=1e-12, atol=0)
