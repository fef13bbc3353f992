"""Arnoldi (top-k eigenpairs by Lanczos on HVPs) against Exact and against the dense eigendecomposition."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import whybox
from whybox.curvature import Arnoldi, Exact, InaccurateSolveError, make_solver


def dense_projection(obj, damping, V, k):
    """U_k U_kᵀ (H + λI)⁻¹ V with the top-k eigenvectors of the dense Hessian (torch.linalg.eigh)."""
    evals, evecs = torch.linalg.eigh(obj.hessian())
    U = evecs[:, -k:]
    return (V @ U / (evals[-k:] + damping)) @ U.T, U


@pytest.mark.parametrize("fixture,damping", [("binary_lr", 0.0), ("iris_mlp", 0.01)])
def test_small_rank_is_the_projection_of_exact_onto_the_top_eigenvectors(request, fixture, damping):
    d, obj = request.getfixturevalue(fixture)
    V = obj.grads(d.X_test[:4], d.y_test[:4])
    for k in (3, 10):
        arn = Arnoldi(damping=damping, rank=k).fit(obj)
        assert arn.diagnostics["method"].startswith("Lanczos")
        with pytest.warns(RuntimeWarning, match=rf"rank-{k} approximation.*raise rank"):
            X = arn.solve(V)
        ref, U = dense_projection(obj, damping, V, k)
        torch.testing.assert_close(X, ref, rtol=1e-7, atol=1e-9 * ref.abs().max().item())
        # the projection of Exact's answer onto the same subspace is the same vector
        torch.testing.assert_close(X, Exact(damping=damping).fit(obj).solve(V) @ U @ U.T, rtol=1e-6,
                                   atol=1e-8 * ref.abs().max().item())
        # the reported residual is the true one, and it is the share of v outside the subspace
        A = obj.hessian() + damping * torch.eye(obj.p, dtype=obj.dtype)
        true = ((X @ A - V).norm(dim=1) / V.norm(dim=1))
        outside = ((V - V @ U @ U.T).norm(dim=1) / V.norm(dim=1))
        torch.testing.assert_close(true, outside, rtol=1e-6, atol=1e-10)
        assert arn.diagnostics["relative_residual"] == pytest.approx(true.max().item(), rel=1e-8)
        assert arn.diagnostics["rhs_captured"] == pytest.approx((1 - outside**2).sqrt().min().item(), rel=1e-6)
        assert arn.diagnostics["subspace_residual"] < 1e-8


def test_error_falls_with_rank_and_vanishes_at_full_rank(iris_mlp):
    d, obj = iris_mlp
    V = obj.grads(d.X_test[:3], d.y_test[:3])
    exact = Exact(damping=0.01).fit(obj).solve(V)
    errors = []
    for k in (5, 20, 60, obj.p - 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            X = Arnoldi(damping=0.01, rank=k).fit(obj).solve(V)
        errors.append(((X - exact).norm() / exact.norm()).item())
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1
    full = Arnoldi(damping=0.01, rank=obj.p).fit(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the full spectrum solves exactly: no warning
        X = full.solve(V)
    torch.testing.assert_close(X, exact, rtol=1e-8, atol=1e-10)
    assert full.diagnostics["relative_residual"] < 1e-10 and full.diagnostics["spectrum_captured"] == pytest.approx(1)
    assert full.diagnostics["method"].startswith("dense eigh")


def test_diagnostics_strict_and_registry(binary_lr):
    d, obj = binary_lr
    arn = Arnoldi(rank=5).fit(obj)
    evals = torch.linalg.eigvalsh(obj.hessian())
    assert arn.diagnostics["max_eigenvalue"] == pytest.approx(evals[-1].item(), rel=1e-8)
    assert arn.diagnostics["min_kept_eigenvalue"] == pytest.approx(evals[-5].item(), rel=1e-8)
    # Hutchinson's trace estimate: within a loose band of the true captured share
    assert arn.diagnostics["spectrum_captured"] == pytest.approx((evals[-5:].sum() / evals.sum()).item(), rel=0.3)
    V = obj.grads(d.X_test[:2], d.y_test[:2])
    with pytest.raises(InaccurateSolveError, match="rank-5 approximation"):
        Arnoldi(rank=5, strict=True).fit(obj).solve(V)
    loose = Arnoldi(rank=5, residual_tolerance=0.999).fit(obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an accepted approximation does not warn
        loose.solve(V)
    assert json.loads(json.dumps(loose.diagnostics)) == loose.diagnostics  # plain values for reports and JSON
    assert isinstance(make_solver("arnoldi", damping=0.1), Arnoldi) and whybox.Arnoldi is Arnoldi
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        Arnoldi(rank=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        Arnoldi().solve(V)
