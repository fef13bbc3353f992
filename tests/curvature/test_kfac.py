"""K-FAC / EK-FAC against exact Gauss-Newton matrices, dense solves, and the flat influence route."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import whybox
import whybox.attribution.kfac
import whybox.curvature.kfac
from whybox.curvature import NotPositiveDefiniteError

DT = torch.float64


def mlp(d_in: int = 6, hidden: int = 5, d_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden, dtype=DT), nn.Tanh(), nn.Linear(hidden, d_out, dtype=DT))


def data(n: int, d: int = 6, classes: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=DT), torch.randint(0, classes, (n,), generator=gen)


def linear_positions(obj: whybox.Objective, weight: str) -> torch.Tensor:
    """Flat positions of the layer matrix [W | b] (row-major) of a Linear layer whose weight and
    bias are consecutive in θ: the order K-FAC's G ⊗ A is written in."""
    start = sum(obj.sizes[: obj.param_names.index(weight)])
    d_out, d_in = obj.shapes[obj.param_names.index(weight)]
    w = start + torch.arange(d_out)[:, None] * d_in + torch.arange(d_in)[None, :]
    b = start + d_out * d_in + torch.arange(d_out)[:, None]
    return torch.cat([w, b], 1).reshape(-1)


def exact_ggn(obj: whybox.Objective) -> torch.Tensor:
    """(1/n) Σᵢ Jᵢᵀ Λᵢ Jᵢ from the objective's per-example Gauss-Newton factors."""
    U = obj.gauss_newton_factors(torch.arange(obj.n))
    return torch.einsum("kpc,kqc->pq", U, U) / obj.n


# ---------------------------------------------------------------------------- (a) exactness for one example
def test_one_example_linear_layer_factors_are_the_hessian():
    """Softmax regression, one example: A = āāᵀ, G = diag(p) − ppᵀ, and G ⊗ A is the Hessian
    (the model is linear in θ, so Gauss-Newton = Hessian), entry by entry as a brute-force einsum."""
    X, y = data(1, d=5, classes=4)
    torch.manual_seed(0)
    obj = whybox.Objective(nn.Linear(5, 4, dtype=DT), "cross_entropy", X, y, weight_decay=0.0)
    kfac = whybox.KFAC(damping=1.0, fisher="ggn").fit(obj)
    (layer,) = kfac.layers
    a = torch.cat([X[0], torch.ones(1, dtype=DT)])
    p = torch.softmax(obj.outputs(X)[0], 0).detach()
    torch.testing.assert_close(layer.A, torch.outer(a, a), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(layer.G, torch.diag(p) - torch.outer(p, p), rtol=1e-10, atol=1e-14)
    brute = torch.einsum("oq,j,k->ojqk", torch.diag(p) - torch.outer(p, p), a, a).reshape(24, 24)
    kron = torch.kron(layer.G, layer.A)
    torch.testing.assert_close(kron, brute, rtol=1e-10, atol=1e-14)
    pos = linear_positions(obj, "weight")
    torch.testing.assert_close(kron, obj.hessian()[pos][:, pos], rtol=1e-8, atol=1e-12)


def test_one_example_every_mlp_layer_block_is_exact_gauss_newton():
    """Through a hidden tanh layer: with one example each layer's G ⊗ A is its exact GGN block."""
    X, y = data(1)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y)
    kfac = whybox.KFAC(damping=1.0, fisher="ggn").fit(obj)
    ggn = exact_ggn(obj)
    for layer, weight in zip(kfac.layers, ["0.weight", "2.weight"]):
        pos = linear_positions(obj, weight)
        torch.testing.assert_close(torch.kron(layer.G, layer.A), ggn[pos][:, pos], rtol=1e-8, atol=1e-12)


def test_sampled_fisher_estimates_the_gauss_newton_factor():
    """E over sampled targets of the sampled-Fisher G is the GGN's G (Monte Carlo, n = 4000)."""
    X, y = data(4000, d=4)
    torch.manual_seed(0)
    obj = whybox.Objective(nn.Linear(4, 3, dtype=DT), "cross_entropy", X, y)
    G_ggn = whybox.KFAC(fisher="ggn", damping=1.0).fit(obj).layers[0].G
    G_mc = whybox.KFAC(fisher="sampled", damping=1.0).fit(obj).layers[0].G
    assert ((G_mc - G_ggn).norm() / G_ggn.norm()).item() < 0.05


# ---------------------------------------------------------------------------- (b) EK-FAC diagonal
def test_ekfac_diagonal_is_the_gauss_newton_diagonal_in_the_kronecker_eigenbasis():
    X, y = data(40)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=0.01)
    ek = whybox.EKFAC(fisher="ggn").fit(obj)
    ggn = exact_ggn(obj)
    for layer, weight in zip(ek.layers, ["0.weight", "2.weight"]):
        pos = linear_positions(obj, weight)
        block = ggn[pos][:, pos]
        Q = torch.kron(layer.eig_G[1], layer.eig_A[1])
        Lam = layer.extra["eigen_diagonal"]
        torch.testing.assert_close(Lam.reshape(-1), torch.diagonal(Q.T @ block @ Q), rtol=1e-8, atol=1e-14)
        # the diagonal in a fixed basis is the Frobenius-closest: EK-FAC beats K-FAC on the block
        ek_err = (Q @ torch.diag(Lam.reshape(-1)) @ Q.T - block).norm()
        assert ek_err <= (torch.kron(layer.G, layer.A) - block).norm() + 1e-12


# ---------------------------------------------------------------------------- (c) solve = dense solve
def dense_kronecker(obj, curvature) -> torch.Tensor:
    """The block-diagonal curvature assembled from the fitted factors, in θ's order."""
    lam = obj.weight_decay + curvature.damping
    dense = torch.zeros(obj.p, obj.p, dtype=DT)
    for layer, weight in zip(curvature.layers, ["0.weight", "2.weight"]):
        pos = linear_positions(obj, weight)
        if isinstance(curvature, whybox.EKFAC):
            Q = torch.kron(layer.eig_G[1], layer.eig_A[1])
            block = Q @ torch.diag(layer.extra["eigen_diagonal"].reshape(-1) + lam) @ Q.T
        else:
            pi = ((layer.A.trace() / layer.d_in) / (layer.G.trace() / layer.d_out)).sqrt()
            A = layer.A + pi * lam**0.5 * torch.eye(layer.d_in, dtype=DT)
            G = layer.G + lam**0.5 / pi * torch.eye(layer.d_out, dtype=DT)
            block = torch.kron(G, A)
        dense[pos[:, None], pos[None, :]] = block
    return dense


@pytest.mark.parametrize("cls", [whybox.KFAC, whybox.EKFAC])
def test_solve_equals_dense_solve_of_the_block_diagonal_kronecker_matrix(cls):
    X, y = data(50)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=0.01)
    curv = cls(damping=0.003).fit(obj)
    dense = dense_kronecker(obj, curv)
    V = torch.randn(4, obj.p, generator=torch.Generator().manual_seed(3), dtype=DT)
    ref = torch.linalg.solve(dense, V.T).T
    torch.testing.assert_close(curv.solve(V), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(curv.dense(), dense, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- (d) factored = flat route
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def small_blocks(monkeypatch):
    """Score in many small row blocks, so chunk and block boundaries are exercised."""
    monkeypatch.setattr(whybox.attribution.kfac, "_BLOCK_ELEMENTS", 64)


EXACT_ROUTES = {"dense": {"scoring": "dense"}, "full_rank": {"rank_tolerance": 0.0}}  # EK-FAC's exact scoring routes


@pytest.mark.parametrize("cls", [whybox.KFAC, whybox.EKFAC])
@pytest.mark.parametrize("fisher", ["sampled", "ggn", "empirical"])
@pytest.mark.parametrize("route", EXACT_ROUTES)
def test_factored_scores_equal_influence_function_with_the_same_curvature(cls, fisher, route, small_blocks):
    X, y = data(80)
    obj = whybox.Objective(mlp(hidden=12), "cross_entropy", X, y, weight_decay=0.01, batch_size=32)
    Xt, yt = data(5, seed=7)
    curv = cls(damping=0.001, fisher=fisher)
    flat = whybox.InfluenceFunction(obj, curv).fit()
    fast = whybox.KFACInfluence(obj, curv, **EXACT_ROUTES[route]).fit()
    assert fast.units == "loss" and fast.sign == flat.sign
    assert rel(fast.scores(Xt, yt), flat.scores(Xt, yt)) < 1e-8
    assert rel(fast.scores(Xt, yt, [3, 1, 4]), flat.scores(Xt, yt, [3, 1, 4])) < 1e-8
    assert rel(fast.self_scores(), flat.self_scores()) < 1e-8
    assert (fast.self_scores() > 0).all()


@pytest.mark.parametrize("loss,d_out,labels", [("logistic", 1, 2), ("squared_error", 2, None)])
def test_factored_scores_other_losses(loss, d_out, labels):
    X, _ = data(60)
    y = torch.randint(0, 2, (60,)) if labels else torch.randn(60, d_out, dtype=DT)
    obj = whybox.Objective(mlp(d_out=d_out), loss, X, y, weight_decay=0.01)
    for cls in (whybox.KFAC, whybox.EKFAC):
        curv = cls(damping=0.001)
        flat = whybox.InfluenceFunction(obj, curv).fit().scores(X[:4], y[:4])
        assert rel(whybox.KFACInfluence(obj, curv, rank_tolerance=0).fit().scores(X[:4], y[:4]), flat) < 1e-8


class ConvNet(nn.Module):
    """Conv2d (patches: T > 1), a LayerNorm (not factorable: diagonal fallback), and one Linear
    layer called twice (T = 2)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1, stride=2, dtype=DT)
        self.norm = nn.LayerNorm(12, dtype=DT)
        self.fc = nn.Linear(12, 4, dtype=DT)
        self.shared = nn.Linear(4, 4, dtype=DT)

    def forward(self, x):
        h = self.norm(torch.tanh(self.conv(x)).flatten(1))
        h = torch.tanh(self.shared(torch.relu(self.fc(h))))
        return self.shared(h)


def test_conv_shared_layer_and_fallback_equal_the_flat_route(small_blocks):
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(24, 2, 4, 4, generator=gen, dtype=DT), torch.randint(0, 4, (24,), generator=gen)
    obj = whybox.Objective(ConvNet(), "cross_entropy", X, y, weight_decay=0.01, batch_size=12)
    G_train = obj.grads()
    for cls in (whybox.KFAC, whybox.EKFAC):
        curv = cls(damping=0.001, fisher="ggn")
        with pytest.warns(RuntimeWarning, match=r"norm\.weight', 'norm\.bias"):
            fast = whybox.KFACInfluence(obj, curv, rank_tolerance=0).fit()
        assert [(l.module, l.kind, l.d_in) for l in curv.layers] == [("conv", "conv2d", 19), ("fc", "linear", 13), ("shared", "linear", 5)]
        S = curv.solve(obj.grads(X[:3], y[:3]))  # the flat route by its definition
        assert rel(fast.scores(X[:3], y[:3]), S @ G_train.T / obj.n) < 1e-8
        assert rel(fast.self_scores([0, 5, 9]), (G_train[[0, 5, 9]] * curv.solve(G_train[[0, 5, 9]])).sum(1)) < 1e-8


def test_valid_padding_dilated_conv_equals_the_flat_route():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(20, 2, 4, 4, generator=gen, dtype=DT), torch.randint(0, 3, (20,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 2, padding="valid", dilation=2, dtype=DT), nn.Tanh(), nn.Flatten(),
                          nn.Linear(12, 3, dtype=DT))
    obj = whybox.Objective(model, "cross_entropy", X, y, weight_decay=0.01)
    for cls in (whybox.KFAC, whybox.EKFAC):
        curv = cls(damping=0.001)
        flat = whybox.InfluenceFunction(obj, curv).fit().scores(X[:3], y[:3])
        assert rel(whybox.KFACInfluence(obj, curv, rank_tolerance=0).fit().scores(X[:3], y[:3]), flat) < 1e-8


def test_bias_only_and_frozen_bias_layers():
    X, y = data(30)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=0.01, params=["0.weight", "2.bias"])
    curv = whybox.KFAC(damping=0.001)
    fast = whybox.KFACInfluence(obj, curv).fit()
    assert [(l.weight, l.bias, l.d_in) for l in curv.layers] == [("0.weight", None, 6), (None, "2.bias", 1)]
    flat = whybox.InfluenceFunction(obj, curv).fit()
    assert rel(fast.scores(X[:3], y[:3]), flat.scores(X[:3], y[:3])) < 1e-8


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_the_fix():
    X, y = data(20)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y)
    with pytest.raises(ValueError, match="fisher must be one of"):
        whybox.KFAC(fisher="true")
    with pytest.raises(TypeError, match="KFAC or EKFAC"):
        whybox.KFACInfluence(obj, whybox.CG())
    with pytest.raises(RuntimeError, match="not fitted"):
        whybox.KFAC().solve(torch.zeros(1, obj.p, dtype=DT))
    with pytest.raises(RuntimeError, match="fit"):
        whybox.KFACInfluence(obj).scores(X[:2], y[:2])
    hinge = whybox.Objective(mlp(d_out=1), whybox.SmoothHinge(0.1), X, y % 2)
    with pytest.raises(ValueError, match="fisher='ggn'"):
        whybox.KFAC().fit(hinge)
    whybox.KFAC(fisher="ggn", damping=0.01).fit(hinge)  # the suggested fix works
    class Tied(nn.Module):  # fc's weight is also used outside fc's forward: hooks cannot see that use
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(6, 6, dtype=DT), nn.Linear(6, 3, dtype=DT)

        def forward(self, x):
            return self.out(torch.tanh(nn.functional.linear(torch.tanh(self.fc(x)), self.fc.weight)))

    with pytest.raises(ValueError, match="layer 'fc'.*outside its forward"):
        whybox.KFAC(damping=0.01).fit(whybox.Objective(Tied(), "cross_entropy", X, y))
    Xz = X.clone()
    Xz[:, 0] = 0.0  # a dead input: A is singular, and nothing damps it
    singular = whybox.Objective(mlp(), "cross_entropy", Xz, y)
    for cls in (whybox.KFAC, whybox.EKFAC):
        with pytest.raises(NotPositiveDefiniteError, match=r"layer '0'.*damping="):
            cls().fit(singular)


def test_chunks_shrink_to_the_memory_budget(monkeypatch):
    """Captured rows per example: (7 + 5) + (6 + 3) float64 values = 168 bytes; 1000 bytes → 5 rows."""
    monkeypatch.setattr(whybox.curvature.kfac, "_CHUNK_BYTES", 1000)
    X, y = data(23)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=0.01)
    curv = whybox.KFAC(damping=0.001)
    fast = whybox.KFACInfluence(obj, curv).fit()
    assert curv.chunk_rows == 5
    flat = whybox.InfluenceFunction(obj, curv).fit()
    assert rel(fast.scores(X[:3], y[:3]), flat.scores(X[:3], y[:3])) < 1e-8


@pytest.mark.parametrize("rows,d,n", [(7, 513, 513), (9, 257, 300), (5, 64, 65), (3, 300, 1), (4, 10, 3)])
def test_gram_and_aligned_products_equal_plain_products(rows, d, n):
    """The fit's block-triangular Gram matrix and its products split at 64-aligned widths (the
    small MLPs above never reach widths ≥ 256, where the blocked path starts)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, d, generator=gen, dtype=DT), torch.randn(d, n, generator=gen, dtype=DT)
    torch.testing.assert_close(whybox.curvature.kfac.gram(x), x.T @ x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whybox.curvature.kfac.aligned_mm(x, w), x @ w, rtol=1e-12, atol=1e-12)
