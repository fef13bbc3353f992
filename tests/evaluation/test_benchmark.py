"""The attribution benchmark at its smallest size: real retraining, cached, through the CLI verb."""

from __future__ import annotations

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
    assert len(cached) == 3 and all(n.endswith(".npy") for n in cached)  # LOO top, LOO random, subsets
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
