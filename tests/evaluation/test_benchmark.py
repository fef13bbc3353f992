"""The attribution benchmark at its smallest size: real retraining, cached, through the CLI verb."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from whybox.cli import app
from whybox.evaluation.benchmark import BenchmarkSettings, run_benchmark


def test_benchmark_table_and_cache(tmp_path):
    settings = BenchmarkSettings(tasks=["digits_lr"], methods=["influence"], n_test=1, top_k=4, random_k=4,
                                 lds_subsets=4, cache=tmp_path)
    (row,) = run_benchmark(settings, progress=False)
    # logistic regression at its optimum: influence agrees with leave-one-out retraining
    assert row["loo_top_pearson"] > 0.9 and row["loo_random_pearson"] > 0.9
    assert row["mislabel_auc"] > 0.8 and 0 <= row["found_at_10"] <= 1
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in cached if n.endswith(".npy")]) == 3  # LOO top, LOO random, subsets
    assert sum(n.startswith("train-digits_lr-") for n in cached) == 2  # θ̂ and the flipped problem's
    assert sum(n.startswith("hessian-") for n in cached) == 2  # one H per problem, shared
    r = CliRunner().invoke(app, ["benchmark", "--task", "digits_lr", "--method", "influence", "--n-test", "1",
                                 "--top-k", "4", "--random-k", "4", "--lds-subsets", "4", "--cache", str(tmp_path), "-q"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("| digits_lr"))
    assert f"{row['lds']:.3f}" in line and f"{row['loo_top_spearman']:.3f}" in line  # same numbers, from the cache
    r = CliRunner().invoke(app, ["benchmark", "--task", "nope"])
    assert r.exit_code != 0


def test_method_names_with_a_solver_and_tracin(binary_lr):
    import whybox
    from whybox.evaluation.benchmark import _make, check_methods

    assert check_methods(["influence", "influence:arnoldi", "influence:cg", "tracin", "fastif"]) == []
    assert check_methods(["influence:nope", "gradient_dot:cg", "x"]) == ["influence:nope", "gradient_dot:cg", "x"]
    d, obj = binary_lr
    att = _make(obj, "influence:arnoldi", 0.0)
    assert isinstance(att.curvature, whybox.Arnoldi) and att.curvature.diagnostics["rank"] == obj.p  # rank 100 ≥ p
    tracin = _make(obj, "tracin", 0.0, [obj.theta])
    torch.testing.assert_close(tracin.scores(d.X_test[:2], d.y_test[:2]),
                               whybox.GradientSimilarity(obj, "dot").fit().scores(d.X_test[:2], d.y_test[:2]))
    with pytest.raises(ValueError, match="unknown methods"):
        run_benchmark(BenchmarkSettings(tasks=["digits_lr"], methods=["influence:nope"]))


def test_exact_with_a_shared_matrix(binary_lr):
    import whybox

    d, obj = binary_lr
    H = obj.hessian()
    before = H.clone()
    shared = whybox.Exact(damping=0.1, matrix=H).fit(obj)
    V = obj.grads(d.X_test[:3], d.y_test[:3])
    torch.testing.assert_close(shared.solve(V), whybox.Exact(damping=0.1).fit(obj).solve(V))
    torch.testing.assert_close(H, before, rtol=0, atol=0)  # copied before damping, not changed
    with pytest.raises(ValueError, match=r"matrix must be the \[p, p\]"):
        whybox.Exact(matrix=H[:-1, :-1]).fit(obj)


def test_task_training_is_cached(tmp_path):
    from whybox.evaluation.benchmark import TASKS

    first, second = [], []
    obj, *_, norm, _ = TASKS["iris_mlp"].train(checkpoints=first, cache=tmp_path)
    again, *_, norm_again, _ = TASKS["iris_mlp"].train(checkpoints=second, cache=tmp_path)
    assert len(list(tmp_path.glob("train-iris_mlp-*.pt"))) == 1
    torch.testing.assert_close(again.theta, obj.theta, rtol=0, atol=0)
    assert norm_again == norm and len(second) == len(first) > 0
    torch.testing.assert_close(again.losses(again.X, again.y), obj.losses(obj.X, obj.y))  # the model holds θ̂ too


def test_newton_ground_truth_matches_lbfgs_and_reaches_its_tolerance(tmp_path, monkeypatch):
    """A task with ``newton=True`` (chord-Newton leave-one-out against a chord-Newton baseline) gives the
    same test-loss changes as retraining by L-BFGS, every retraining at ‖∇R₋ᵢ‖ ≤ newton_tol; methods that
    form H share one and are charged its seconds."""
    from dataclasses import replace

    from whybox.evaluation import benchmark
    from whybox.zoo.train import retrain

    task = replace(benchmark.TASKS["iris_mlp"], name="iris_mlp_newton", newton=True, newton_tol=1e-11, lds_tol=5e-8)
    monkeypatch.setitem(benchmark.TASKS, task.name, task)
    obj, X_test, y_test, _, _ = task.train()
    hessian = benchmark.SharedHessian(obj)
    X, y = X_test[:2], y_test[:2]
    idx = [0, 7, 30]
    changes, norms = benchmark._loo(obj, X, y, idx, 1e-11, None, False, hessian.newton_factor())
    assert changes.shape == (2, 3) and (norms <= 1e-11).all()
    base = obj.losses(X, y, theta=retrain(obj, [], tol=1e-12, max_iter=20_000).theta)
    for j, i in enumerate(idx):  # independent: L-BFGS from θ̂, no Hessian
        res = retrain(obj, [i], tol=1e-12, max_iter=20_000)
        np.testing.assert_allclose(changes[:, j], (obj.losses(X, y, theta=res.theta) - base).numpy(), rtol=1e-5, atol=1e-9)

    facts: dict = {}
    settings = BenchmarkSettings(tasks=[task.name], methods=["influence:exact", "fastif", "gradient_dot"], n_test=2,
                                 top_k=4, random_k=4, lds_subsets=4, cache=tmp_path)
    rows = run_benchmark(settings, progress=False, facts=facts)
    fact = facts[task.name]
    assert fact["loo_tol"] == 1e-11 and fact["loo_max_grad_norm"] <= 1e-11
    assert fact["lds_tol"] == 5e-8 and 0 < fact["lds_max_grad_norm"] <= 5e-8  # the subsets' own tolerance, recorded
    assert len(list(tmp_path.glob("loo-newton-*.npy"))) == 2 and len(list(tmp_path.glob("hessian-*.pt"))) == 2
    exact, fastif, dot = rows
    assert exact["loo_top_pearson"] > 0.9 and exact["fit_s"] >= fact["hessian_s"] > 0
    assert fastif["fit_s"] >= fact["hessian_s"] and fastif["self_s"] >= fact["flipped_hessian_s"] > 0
    assert dot["fit_s"] < fact["hessian_s"]  # no H, no charge
