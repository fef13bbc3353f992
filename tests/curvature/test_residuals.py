"""Every solver proves its answer: the residual it reports is the true one, computed here from the
dense Hessian without the solver; a solve that misses its tolerance warns, or raises when strict."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import whybox
from whybox.curvature import CG, Exact, Identity, InaccurateSolveError, LiSSA


def dense_residual(obj, damping, V, X):
    """max_j ‖(H + λI)x_j − v_j‖/‖v_j‖ with H from objective.hessian(), independent of the solvers."""
    A = obj.hessian() + damping * torch.eye(obj.p, dtype=obj.dtype)
    return ((X @ A - V).norm(dim=1) / V.norm(dim=1)).max().item()


def assert_plain_json(diagnostics):
    assert json.loads(json.dumps(diagnostics)) == diagnostics
    assert all(v is None or type(v) in (bool, int, float, str) for v in diagnostics.values()), diagnostics


@pytest.mark.parametrize("make", [lambda: Exact(damping=0.05), lambda: CG(damping=0.05), lambda: LiSSA(damping=0.05)],
                         ids=["exact", "cg", "lissa"])
def test_reported_residual_is_the_true_residual(binary_lr, make):
    d, obj = binary_lr
    solver = make().fit(obj)
    V = obj.grads(d.X_test[:3], d.y_test[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an accurate solve must not warn
        X = solver.solve(V)
    true = dense_residual(obj, 0.05, V, X)
    reported = solver.diagnostics["relative_residual"]
    assert reported == pytest.approx(true, rel=1e-6, abs=1e-13)
    assert reported <= solver.diagnostics["residual_tolerance"] == solver.residual_tolerance
    assert_plain_json(solver.diagnostics)


def test_identity_claims_no_residual(binary_lr):
    d, obj = binary_lr
    solver = Identity().fit(obj)
    solver.solve(obj.grads(d.X_test[:2], d.y_test[:2]))
    assert solver.diagnostics["relative_residual"] is None
    assert "ablation" in solver.diagnostics["residual_note"]
    assert_plain_json(solver.diagnostics)


def test_under_iterated_cg_warns_with_the_true_residual_and_the_fix(digits_lr):
    d, obj = digits_lr
    V = obj.grads(d.X_test[:4], d.y_test[:4])
    solver = CG(max_iter=2).fit(obj)
    with pytest.warns(RuntimeWarning, match=r"relative residual .* above residual_tolerance=1e-06.*raise max_iter.*Exact\(\)"):
        X = solver.solve(V)
    true = dense_residual(obj, 0.0, V, X)
    assert true > 1e-3  # two CG steps on a condition number of ~38 are far from converged
    assert solver.diagnostics["relative_residual"] == pytest.approx(true, rel=1e-8)
    assert solver.diagnostics["converged"] is False


def test_strict_turns_the_warning_into_an_error(digits_lr):
    d, obj = digits_lr
    solver = CG(max_iter=2, strict=True).fit(obj)
    with pytest.raises(InaccurateSolveError, match=r"relative residual .* above residual_tolerance"):
        solver.solve(obj.grads(d.X_test[:2], d.y_test[:2]))
    assert issubclass(whybox.InaccurateSolveError, ValueError)
    assert whybox.InaccurateSolveError is InaccurateSolveError


def test_diagnostics_keep_the_worst_residual_since_fit(digits_lr):
    d, obj = digits_lr
    solver = CG(max_iter=2).fit(obj)
    with pytest.warns(RuntimeWarning):
        solver.solve(obj.grads(d.X_test[:2], d.y_test[:2]))
    worst = solver.diagnostics["relative_residual"]
    solver.solve(obj.X.new_zeros(1, obj.p))  # b = 0 is solved exactly by x = 0
    assert solver.diagnostics["relative_residual"] == worst
    solver.fit(obj)  # a new fit starts a new record
    assert "relative_residual" not in solver.diagnostics


def test_exact_warns_when_its_factorisation_misses_the_tolerance(binary_lr):
    d, obj = binary_lr
    solver = Exact(residual_tolerance=1e-30).fit(obj)  # below float64 round-off: no solve can meet it
    with pytest.warns(RuntimeWarning, match=r"Exact: relative residual .*condition number 19.*Exact\(damping=\.\.\.\)"):
        solver.solve(obj.grads(d.X_test[:1], d.y_test[:1]))


@pytest.mark.parametrize("make", [Exact, CG, LiSSA], ids=["exact", "cg", "lissa"])
def test_damping_that_swamps_the_hessian_warns(binary_lr, make):
    _, obj = binary_lr
    top = torch.linalg.eigvalsh(obj.hessian())[-1].item()
    with pytest.warns(RuntimeWarning, match=r"damping=1e\+12 is .*× the largest eigenvalue of the Hessian"):
        solver = make(damping=1e12).fit(obj)
    assert solver.diagnostics["damping_ratio"] == pytest.approx(1e12 / top, rel=1e-2)


@pytest.mark.parametrize("make", [Exact, CG], ids=["exact", "cg"])
def test_moderate_damping_does_not_warn(binary_lr, make):
    _, obj = binary_lr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver = make(damping=0.01).fit(obj)
    assert solver.diagnostics["damping_ratio"] < 1


def test_tolerance_is_validated():
    with pytest.raises(ValueError, match=r"residual_tolerance must be in \(0, 1\)"):
        CG(residual_tolerance=0)


def test_preconditioned_cg_gives_the_exact_answer_in_fewer_iterations(digits_lr):
    """CG preconditioned with H at other parameters (θ̂·0.9) solves H(θ̂)x = v as Exact does, in fewer steps."""
    obj = digits_lr[1]
    V = obj.train_grads([0, 5, 9])
    want = Exact().fit(obj).solve(V)
    plain = CG(rtol=1e-10).fit(obj)
    x_plain = plain.solve(V)
    near = torch.linalg.cholesky(obj.with_theta(obj.theta * 0.9).hessian())
    pcg = CG(rtol=1e-10, preconditioner=near).fit(obj)
    x = pcg.solve(V)
    torch.testing.assert_close(x, want, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(x_plain, want, rtol=1e-6, atol=1e-8)
    assert pcg.diagnostics["iterations"] < plain.diagnostics["iterations"] / 3
    assert dense_residual(obj, 0.0, V, x) < 1e-8
    with pytest.raises(ValueError, match="preconditioner"):
        CG(preconditioner=near[:5, :5]).fit(obj)
