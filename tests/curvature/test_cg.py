"""Block conjugate gradients: the exact answer with every preconditioner, all right-hand sides at
once (dependent and zero ones included), against a dense solve of the autograd Hessian."""

from __future__ import annotations

import pytest
import torch

import whybox
from whybox.curvature import CG, NotPositiveDefiniteError
from whybox.curvature.base import lanczos

DAMPING = 0.01


@pytest.fixture(scope="module")
def mlp_problem(iris_mlp):
    """(objective, dense H + λI from torch.autograd, 5 test gradients)."""
    d, obj = iris_mlp
    H = torch.autograd.functional.hessian(lambda th: obj.risk(th), obj.theta)
    A = 0.5 * (H + H.T) + DAMPING * torch.eye(obj.p, dtype=obj.dtype)
    return obj, A, obj.grads(d.X_test[:5], d.y_test[:5])


def _preconditioner(name, A):
    if name == "cholesky":  # the factor of a nearby SPD matrix, as a caller with H at other θ would pass
        return torch.linalg.cholesky(A + 0.1 * torch.eye(len(A), dtype=A.dtype))
    if name == "kfac":
        return whybox.KFAC(damping=DAMPING)
    return name


@pytest.mark.parametrize("name", [None, "gradients", "cholesky", "kfac"])
def test_block_cg_equals_the_dense_solve_with_every_preconditioner(mlp_problem, name):
    obj, A, V = mlp_problem
    solver = CG(damping=DAMPING, preconditioner=_preconditioner(name, A), precision="model").fit(obj)
    X = solver.solve(V)
    torch.testing.assert_close(X, torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    true = ((X @ A - V).norm(dim=1) / V.norm(dim=1)).max().item()
    assert solver.diagnostics["relative_residual"] == pytest.approx(true, rel=1e-4, abs=1e-14)
    assert true <= 1e-9 and solver.diagnostics["converged"]
    assert solver.diagnostics["hvps"] <= 5 * solver.diagnostics["iterations"]
    assert isinstance(solver.diagnostics["preconditioner"], str)


def test_preconditioning_with_the_training_gradients_saves_iterations(digits_lr):
    d, obj = digits_lr
    V = obj.grads(d.X_test[:5], d.y_test[:5])
    exact = torch.linalg.solve(obj.hessian(), V.T).T
    plain = CG(rtol=1e-8, preconditioner=None, precision="model").fit(obj)
    pre = CG(rtol=1e-8, precision="model").fit(obj)
    for solver in (plain, pre):
        X = solver.solve(V)
        assert ((X - exact).norm(dim=1) / exact.norm(dim=1)).max() < 1e-6
    assert pre.diagnostics["iterations"] < plain.diagnostics["iterations"]
    assert "largest of 1200 training gradients" in pre.diagnostics["preconditioner"]


def test_right_hand_sides_beyond_max_block_are_solved_in_groups(mlp_problem):
    obj, A, V = mlp_problem
    solver = CG(damping=DAMPING, max_block=2, precision="model").fit(obj)
    X = solver.solve(V)  # 5 columns: groups of 2, 2 and 1
    torch.testing.assert_close(X, torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    assert solver.diagnostics["converged"] and solver.diagnostics["hvps"] <= 5 * solver.diagnostics["iterations"]
    whole = CG(damping=DAMPING, precision="model").fit(obj)
    whole.solve(V)
    assert whole.diagnostics["iterations"] <= solver.diagnostics["iterations"]


def test_block_takes_no_more_iterations_than_its_slowest_column(mlp_problem):
    obj, A, V = mlp_problem
    single = []
    for v in V:
        solver = CG(damping=DAMPING, preconditioner=None, precision="model").fit(obj)
        solver.solve(v[None])
        single.append(solver.diagnostics["iterations"])
    block = CG(damping=DAMPING, preconditioner=None, precision="model").fit(obj)
    block.solve(V)
    assert block.diagnostics["iterations"] <= max(single)


def test_dependent_and_zero_right_hand_sides_do_not_break_the_block(mlp_problem):
    obj, A, V = mlp_problem
    B = torch.stack([V[0], V[1], V[0] + V[1], 3 * V[0], torch.zeros_like(V[0]), V[2]])
    solver = CG(damping=DAMPING).fit(obj)
    X = solver.solve(B)
    torch.testing.assert_close(X, torch.linalg.solve(A, B.T).T, rtol=1e-7, atol=1e-9)
    assert torch.equal(X[4], torch.zeros_like(X[4]))
    assert solver.diagnostics["converged"]


def test_gradients_preconditioner_samples_rows_when_the_gradients_do_not_fit(iris_mlp, mlp_problem):
    d, obj = iris_mlp
    _, A, V = mlp_problem
    tight = whybox.Objective(obj.model, "cross_entropy", obj.X, obj.y, weight_decay=0.01, cache_bytes=1)
    solver = CG(damping=DAMPING, preconditioner_rank=16).fit(tight)
    torch.testing.assert_close(solver.solve(V), torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    assert "16 random training gradients" in solver.diagnostics["preconditioner"]
    assert tight._train_grads is None  # nothing cached beyond the sampled rows


def test_negative_curvature_in_the_block_raises(iris_mlp):
    d, _ = iris_mlp
    model = whybox.zoo.mlp(d.n_features, d.n_classes, hidden=(8,))  # untrained: a saddle region
    obj = whybox.Objective(model, "cross_entropy", d.X_train, d.y_train)
    with pytest.raises(NotPositiveDefiniteError, match=r"not positive definite.*CG\(damping="):
        CG(preconditioner=None).fit(obj).solve(obj.grads(d.X_test[:5], d.y_test[:5]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(preconditioner="fisher"), "preconditioner must be one of"),
    (dict(preconditioner=torch.eye(3)[:2]), r"preconditioner must be a square \[p, p\] Cholesky factor"),
    (dict(preconditioner_rank=0), "preconditioner_rank must be >= 1"),
    (dict(max_block=0), "max_block must be >= 1"),
    (dict(precision="half"), "precision must be one of"),
])
def test_bad_preconditioner_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CG(**kwargs)


def test_cholesky_preconditioner_of_the_wrong_size_is_refused(iris_mlp):
    _, obj = iris_mlp
    with pytest.raises(ValueError, match=rf"preconditioner is 3x3 but p = {obj.p}"):
        CG(preconditioner=torch.eye(3, dtype=obj.dtype)).fit(obj)


def test_lanczos_stops_once_the_top_is_proven_above_a_bound():
    D = torch.linspace(1.0, 100.0, 50, dtype=torch.float64)
    matvec = lambda V: V * D  # noqa: E731
    like = torch.zeros(1, dtype=torch.float64)
    early = lanczos(matvec, 50, like, ends="largest", stop_above=0.5)
    assert early.steps == 1 and not early.converged and early.largest <= 100.0
    full = lanczos(matvec, 50, like, ends="largest", rtol=1e-8)
    assert full.largest == pytest.approx(100.0, rel=1e-6)


def test_a_fitted_cg_pickles_and_solves_the_same(mlp_problem):
    import pickle

    obj, A, V = mlp_problem
    solver = CG(damping=DAMPING).fit(obj)
    X = solver.solve(V)
    torch.testing.assert_close(pickle.loads(pickle.dumps(solver)).solve(V), X)


@pytest.mark.parametrize("name", [None, "gradients", "cholesky", "kfac"])
def test_float32_iterations_refined_in_float64_reach_the_dense_solve(mlp_problem, name):
    obj, A, V = mlp_problem
    solver = CG(damping=DAMPING, preconditioner=_preconditioner(name, A)).fit(obj)  # the default precision
    X = solver.solve(V)
    assert X.dtype == torch.float64 and solver._working.dtype == torch.float32
    torch.testing.assert_close(X, torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    true = ((X @ A - V).norm(dim=1) / V.norm(dim=1)).max().item()
    d = solver.diagnostics
    assert d["relative_residual"] == pytest.approx(true, rel=1e-4, abs=1e-14) and true <= 1e-9
    assert d["converged"] and d["refinement_rounds"] >= 2  # rtol 1e-10 is beyond one float32 solve


def test_refinement_that_does_not_halve_the_residual_finishes_in_float64(mlp_problem):
    obj, A, V = mlp_problem
    solver = CG(damping=DAMPING, precision="float32").fit(obj)
    working = solver._working.curvature_operator

    def ten_times(curvature):  # float32 products 10x too large: each float32 answer is 10x too short
        op = working(curvature)
        return lambda W: 10 * op(W)

    solver._working.curvature_operator = ten_times
    X = solver.solve(V)
    torch.testing.assert_close(X, torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    assert solver.diagnostics["refinement_rounds"] == 1 and solver.diagnostics["converged"]


def test_float32_precision_on_a_float32_objective_is_plain_cg(iris_mlp):
    d, obj = iris_mlp
    obj32 = obj.cast(torch.float32)
    assert obj32.dtype == torch.float32 and obj32.cast(torch.float32) is obj32 and obj.dtype == torch.float64
    torch.testing.assert_close(obj32.theta, obj.theta.float())
    solver = CG(damping=DAMPING, rtol=1e-5, precision="float32").fit(obj32)
    assert solver._working is None
    solver.solve(obj32.grads(d.X_test[:3], d.y_test[:3]))
    assert "refinement_rounds" not in solver.diagnostics


def test_a_model_without_a_float32_copy_iterates_in_its_own_dtype(mlp_problem, monkeypatch):
    obj, A, V = mlp_problem

    def refuse(dtype):
        raise RuntimeError("this module cannot be deep-copied")

    monkeypatch.setattr(obj, "cast", refuse)
    solver = CG(damping=DAMPING).fit(obj)
    torch.testing.assert_close(solver.solve(V), torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    assert solver._working is None and "cannot be deep-copied" in solver.diagnostics["precision"]


def test_a_glm_keeps_its_closed_form_products_in_its_own_dtype(digits_lr):
    d, obj = digits_lr
    solver = CG(rtol=1e-8).fit(obj)
    assert solver._working is None and "GLM" in solver.diagnostics["precision"]
    V = obj.grads(d.X_test[:3], d.y_test[:3])
    exact = torch.linalg.solve(obj.hessian(), V.T).T
    assert ((solver.solve(V) - exact).norm(dim=1) / exact.norm(dim=1)).max() < 1e-6


def test_negative_curvature_seen_in_float32_is_decided_in_float64(mlp_problem):
    obj, A, V = mlp_problem
    solver = CG(damping=DAMPING).fit(obj)
    working = solver._working.curvature_operator

    def negated(curvature):  # float32 products that look indefinite (as rounding can make tiny eigenvalues)
        op = working(curvature)
        return lambda W: -op(W)

    solver._working.curvature_operator = negated
    torch.testing.assert_close(solver.solve(V), torch.linalg.solve(A, V.T).T, rtol=1e-7, atol=1e-9)
    assert solver.diagnostics["converged"]
