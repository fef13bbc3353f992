"""Gauss-Newton curvature (``curvature="ggn"``): checked against G = (1/n)ΣJᵢᵀAᵢJᵢ + decay built here
by an explicit loop over examples with torch.autograd.functional, and usable by every solver where
the Hessian is indefinite."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd.functional import hessian as ag_hessian
from torch.autograd.functional import jacobian as ag_jacobian

import whybox
from whybox import zoo
from whybox.curvature import CG, KFAC, Arnoldi, Exact, LiSSA, NotPositiveDefiniteError, make_solver


def explicit_ggn(obj):
    """Σ over examples of Jᵢᵀ Aᵢ Jᵢ / n + diag(decay), one autograd call per example."""
    G = torch.zeros(obj.p, obj.p, dtype=obj.dtype)
    for x, t in zip(obj.X, obj.y):
        J = ag_jacobian(lambda th: obj.outputs(x[None], th).reshape(-1), obj.theta)  # [C, p]
        out = obj.outputs(x[None]).reshape(-1).detach()
        A = ag_hessian(lambda o: obj.loss_fn(o.reshape(obj.output_shape), t), out)  # [C, C]
        G += J.T @ A @ J
    return G / obj.n + torch.diag(obj.decay)


@pytest.fixture(scope="module")
def unconverged_mlp():
    """A tanh MLP on iris stopped after 3 L-BFGS steps: far from a minimum, H indefinite."""
    d = zoo.load("iris")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "training stopped with ‖∇R‖ = ..."
        obj, res = zoo.train(zoo.mlp(d.n_features, d.n_classes, hidden=(6,)), "cross_entropy", d.X_train, d.y_train,
                             weight_decay=1e-3, max_iter=3)
    return d, obj


def test_ggn_products_and_matrix_equal_the_explicit_sum(unconverged_mlp):
    _, obj = unconverged_mlp
    G = explicit_ggn(obj)
    torch.testing.assert_close(obj.ggn(), G, rtol=1e-10, atol=1e-12)
    V = torch.randn(4, obj.p, dtype=obj.dtype, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(obj.ggn_vp(V), V @ G, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.batch_ggn_vp(V, obj.X, obj.y) + obj.decay * V, V @ G, rtol=1e-10, atol=1e-12)


def test_ggn_is_the_hessian_for_models_linear_in_theta(digits_lr):
    _, obj = digits_lr
    torch.testing.assert_close(obj.ggn(), obj.hessian(), rtol=1e-9, atol=1e-12)


def test_indefinite_hessian_refused_with_ggn_named_and_ggn_solvers_agree(unconverged_mlp):
    d, obj = unconverged_mlp
    assert torch.linalg.eigvalsh(obj.hessian())[0] < 0  # the premise: H is indefinite here
    with pytest.raises(NotPositiveDefiniteError, match=r"curvature=ggn"):
        Exact().fit(obj)
    damping = 0.05  # enough for LiSSA's default depth budget; the Hessian stays indefinite with it
    assert torch.linalg.eigvalsh(obj.hessian())[0] + damping < 0
    G = explicit_ggn(obj) + damping * torch.eye(obj.p, dtype=obj.dtype)
    V = obj.grads(d.X_test[:3], d.y_test[:3])
    truth = torch.linalg.solve(G, V.T).T
    for solver in (Exact(damping=damping, curvature="ggn"), CG(damping=damping, curvature="ggn"),
                   LiSSA(damping=damping, curvature="ggn"), Arnoldi(damping=damping, rank=obj.p, curvature="ggn")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an accurate solve must not warn
            X = solver.fit(obj).solve(V)
        assert solver.diagnostics["relative_residual"] <= solver.residual_tolerance
        rel = ((X - truth).norm(dim=1) / truth.norm(dim=1)).max().item()
        assert rel < (1e-8 if not isinstance(solver, LiSSA) else 1e-3), (type(solver).__name__, rel)


def test_influence_with_ggn_and_the_solver_registry(unconverged_mlp):
    d, obj = unconverged_mlp
    solver = make_solver("cg", damping=1e-3, p=obj.p, curvature="ggn")
    assert solver.curvature == "ggn" and "curvature='ggn'" in repr(solver)
    scores = whybox.InfluenceFunction(obj, solver).fit().scores(d.X_test[:2], d.y_test[:2])
    G = explicit_ggn(obj) + 1e-3 * torch.eye(obj.p, dtype=obj.dtype)
    expected = obj.grads(d.X_test[:2], d.y_test[:2]) @ torch.linalg.solve(G, obj.grads().T) / obj.n
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-12)
    assert KFAC().curvature == "ggn"  # Kronecker-factored curvatures are Gauss-Newton by construction
    with pytest.raises(ValueError, match="curvature must be one of"):
        CG(curvature="fisher")
