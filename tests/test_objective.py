"""Per-example gradients, HVPs and mixed partials against autograd done the slow way."""

from __future__ import annotations

import warnings

import pytest
import torch

import whybox
from whybox import Objective, zoo


def test_per_example_grads_match_a_python_loop_and_do_not_depend_on_chunking(iris_mlp):
    _, obj = iris_mlp
    G = obj.grads()
    model = obj.model
    for i in (0, 7, 50):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(obj.X[i : i + 1]), obj.y[i : i + 1])
        loss.backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(G[i], ref)
    small = whybox.Objective(model, "cross_entropy", obj.X, obj.y, weight_decay=0.01, batch_size=7)
    torch.testing.assert_close(small.grads(), G)
    chunks = list(small.iter_grads())
    assert len(chunks) == -(-obj.n // 7) and all(g.shape[0] <= 7 for _, g in chunks)


def test_hvp_matches_dense_autograd_hessian(iris_mlp):
    _, obj = iris_mlp
    H = torch.autograd.functional.hessian(lambda th: obj.risk(th), obj.theta)
    V = torch.randn(3, obj.p, dtype=obj.dtype)
    torch.testing.assert_close(obj.hvp(V), V @ H.T)
    torch.testing.assert_close(obj.hessian(), 0.5 * (H + H.T))


def test_kept_gradient_graph_gives_the_autograd_hessian_whether_kept_or_rebuilt(iris_mlp):
    _, obj = iris_mlp
    H = torch.autograd.functional.hessian(lambda th: obj.risk(th), obj.theta)
    V = torch.randn(4, obj.p, dtype=obj.dtype, generator=torch.Generator().manual_seed(0))
    kept = obj.curvature_operator("hessian")
    for _ in range(2):  # the second call reuses the graphs built by the first
        torch.testing.assert_close(kept(V), V @ H.T)
    assert kept._graphs and kept.saved_bytes > 0
    # 7-row chunks, and a cache too small to keep any graph: rebuilt on every call, same products
    tight = whybox.Objective(obj.model, "cross_entropy", obj.X, obj.y, weight_decay=0.01, batch_size=7, cache_bytes=1)
    rebuilt = tight.curvature_operator("hessian")
    for _ in range(2):
        torch.testing.assert_close(rebuilt(V), V @ H.T)
    assert not rebuilt._graphs
    torch.testing.assert_close(obj.curvature_operator("ggn")(V), obj.ggn_vp(V))
    rows = slice(10, 25)  # a mini-batch product (LiSSA's step): the mean Hessian of those rows, no decay
    H_batch = torch.autograd.functional.hessian(lambda th: obj._batch_losses(th, obj.X[rows], obj.y[rows]).mean(),
                                                obj.theta)
    torch.testing.assert_close(obj.batch_hvp(V, obj.X[rows], obj.y[rows]), V @ H_batch.T)


def test_kept_gradient_graph_of_a_loss_linear_in_theta_gives_the_decay_only():
    torch.manual_seed(0)
    X = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randn(20, 1, dtype=torch.float64)


    class Dot(torch.nn.Module):  # not an nn.Linear: the general path, not the linear-head shortcut
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 1, dtype=torch.float64))

        def forward(self, x):
            return x @ self.w

    linear_loss = lambda out, t: (out * t).sum()  # noqa: E731 - its Hessian in θ is 0
    obj = whybox.Objective(Dot(), linear_loss, X, y, weight_decay=0.3)
    op = obj.curvature_operator("hessian")
    V = torch.randn(2, obj.p, dtype=torch.float64)
    torch.testing.assert_close(op(V), 0.3 * V)
    assert type(op).__name__ == "LinearisedGradient"


def test_risk_gradient_is_zero_at_the_trained_optimum(iris_mlp):
    _, obj = iris_mlp
    assert obj.risk_grad().norm() < 1e-6


def test_mixed_grad_matches_finite_differences(iris_mlp):
    _, obj = iris_mlp
    s = torch.randn(1, obj.p, dtype=obj.dtype)
    x, y = obj.X[:1].clone(), obj.y[:1]
    analytic = obj.mixed_grad(s, x, y)[0, 0]
    eps = 1e-6
    fd = torch.zeros_like(x[0])
    for k in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[0, k] = eps
        fd[k] = ((obj.grads(x + e, y) - obj.grads(x - e, y)) @ s[0])[0] / (2 * eps)
    torch.testing.assert_close(analytic, fd, rtol=1e-5, atol=1e-8)


def test_without_gradient_cache_scores_are_streamed_and_identical(binary_lr):
    d, obj = binary_lr
    cached = whybox.InfluenceFunction(obj).fit().up_loss(d.X_test[:3], d.y_test[:3])
    streaming = whybox.Objective(obj.model, "logistic", obj.X, obj.y, weight_decay=0.01, batch_size=50, cache_bytes=0)
    inf = whybox.InfluenceFunction(streaming).fit()
    torch.testing.assert_close(inf.up_loss(d.X_test[:3], d.y_test[:3]), cached)
    torch.testing.assert_close(inf.self_influence([1, 2]), whybox.InfluenceFunction(obj).fit().self_influence([1, 2]))
    assert streaming._train_grads is None  # nothing of size n·p was kept


def _autograd_hvp(obj, V):
    """H·V from forward-over-reverse autograd on every chunk (what the generic path computes)."""
    out = sum(obj.batch_hvp(V, obj.X[s], obj.y[s]) * (s.stop - s.start) for s in obj.chunks(obj.n))
    return out / obj.n + obj.decay * V


def test_linear_head_hvp_equals_autograd(binary_lr, digits_lr):
    """GLMs and an explained last layer take the two-GEMM product over the layer's inputs, and
    rank-one per-example gradients."""
    d = zoo.load("digits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mlp, _ = zoo.train(zoo.mlp(d.n_features, d.n_classes), "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    last = Objective(mlp.model, "cross_entropy", d.X_train, d.y_train, weight_decay={"2.weight": 0.01, "2.bias": 0.0},
                     params=["2."])
    gen = torch.Generator().manual_seed(0)
    for obj, head in ((binary_lr[1], ""), (digits_lr[1], ""), (last, "2"), (mlp, None)):
        assert obj._linear_head() == head
        V = torch.randn(3, obj.p, dtype=obj.dtype, generator=gen)
        torch.testing.assert_close(obj.hvp(V), _autograd_hvp(obj, V), rtol=1e-10, atol=1e-13)
        # per-example gradients: the closed-form rank-one route on heads, against torch.func per example
        ref = torch.func.vmap(torch.func.grad(obj._example_loss), in_dims=(None, 0, 0))(obj.theta, obj.X[:40], obj.y[:40])
        torch.testing.assert_close(obj.grads(obj.X[:40], obj.y[:40]), ref, rtol=1e-10, atol=1e-13)
    moved = digits_lr[1].with_theta(digits_lr[1].theta * 0.5)  # the cached output Hessians belong to θ̂
    V = torch.randn(2, moved.p, dtype=moved.dtype, generator=gen)
    torch.testing.assert_close(moved.hvp(V), _autograd_hvp(moved, V), rtol=1e-10, atol=1e-13)


def test_linear_head_dense_hessian_equals_autograd(binary_lr, digits_lr):
    """The GLM / last-layer dense H (one GEMM per output pair) equals autograd's full Hessian of R."""
    d = zoo.load("digits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mlp, _ = zoo.train(zoo.mlp(d.n_features, d.n_classes), "cross_entropy", d.X_train[:200], d.y_train[:200],
                           weight_decay=0.01, max_iter=50)
    last = Objective(mlp.model, "cross_entropy", d.X_train[:200], d.y_train[:200],
                     weight_decay={"2.weight": 0.01, "2.bias": 0.0}, params=["2."])
    for obj in (binary_lr[1], digits_lr[1], last):
        assert obj._linear_head() is not None
        H = torch.autograd.functional.hessian(lambda th: obj.risk(th), obj.theta)
        torch.testing.assert_close(obj.hessian(), 0.5 * (H + H.T), rtol=1e-10, atol=1e-12)


def test_with_rows_replaces_only_those_rows_and_checks_them(binary_lr):
    obj = binary_lr[1]
    new = obj.X[[0, 1]] + 1.0
    moved = obj.with_rows([3, 7], new)
    assert torch.equal(moved.X[[3, 7]], new) and torch.equal(moved.X[:3], obj.X[:3]) and torch.equal(moved.y, obj.y)
    assert not torch.equal(obj.X[3], new[0])  # the original is untouched
    torch.testing.assert_close(moved.X, obj.with_data(torch.cat([obj.X[:3], new[:1], obj.X[4:7], new[1:], obj.X[8:]]), obj.y).X)
    bad = new.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError):
        obj.with_rows([3, 7], bad)
    with pytest.raises(ValueError, match="shape"):
        obj.with_rows([3], new)
    with pytest.raises(ValueError, match="indices"):
        obj.with_rows([obj.n, 0], new)
