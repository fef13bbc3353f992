"""ProjectedInfluence against explicit per-example gradients, hand-built dense curvatures and InfluenceFunction."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from tests.curvature.test_kfac import ConvNet  # Conv2d, LayerNorm fallback, a Linear used twice
from whybox.attribution.projection import ProjectedInfluence
from whybox.curvature import InaccurateSolveError, NotPositiveDefiniteError
from whybox.engine import score_to_store

DT = torch.float64


class Dense(whybox.Curvature):
    """A curvature given as a dense matrix (built by hand in the tests), Cholesky-solved."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        self.matrix = matrix

    def fit(self, objective):
        super().fit(objective)
        self._chol = torch.linalg.cholesky(self.matrix)
        return self

    def matvec(self, V):
        return V @ self.matrix

    def _solve(self, B):
        return torch.cholesky_solve(B.T, self._chol).T


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def data(n: int, d: int = 6, classes: int = 3, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=DT), torch.randint(0, classes, (n,), generator=gen)


def mlp(d_in: int = 6, hidden: int = 5, d_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden, dtype=DT), nn.Tanh(), nn.Linear(hidden, d_out, dtype=DT))


def conv_problem():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(24, 2, 4, 4, generator=gen, dtype=DT), torch.randint(0, 4, (24,), generator=gen)
    return whybox.Objective(ConvNet(), "cross_entropy", X, y, weight_decay=0.01, batch_size=10), X, y


def empirical_fisher(obj: whybox.Objective, damping: float) -> torch.Tensor:
    """(1/n) Σ gᵢgᵢᵀ + decay + damping from the objective's explicit per-example gradients."""
    G = obj.grads()
    return G.T @ G / obj.n + torch.diag(obj.decay) + damping * torch.eye(obj.p, dtype=obj.dtype)


def ggn(obj: whybox.Objective, damping: float) -> torch.Tensor:
    """(1/n) Σ Jᵢᵀ Λᵢ Jᵢ + decay + damping from the objective's Gauss-Newton factors."""
    U = obj.gauss_newton_factors(torch.arange(obj.n))
    return torch.einsum("kpc,kqc->pq", U, U) / obj.n + torch.diag(obj.decay) + damping * torch.eye(obj.p, dtype=obj.dtype)


# ---------------------------------------------------------------------------- exactness at full dimension
@pytest.mark.parametrize("fisher, curvature", [("empirical", empirical_fisher), ("ggn", ggn)])
@pytest.mark.parametrize("decay", [0.01, {"0.weight": 0.02, "0.bias": 0.0, "2.weight": 0.01, "2.bias": 0.005}])
def test_full_dimension_equals_influence_function_with_the_same_curvature(fisher, curvature, decay):
    X, y = data(80)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=decay, batch_size=32)
    Xt, yt = data(5, seed=7)
    ref = whybox.InfluenceFunction(obj, Dense(curvature(obj, 1e-3))).fit()
    att = ProjectedInfluence(obj, dim_in=None, dim_out=None, fisher=fisher, damping=1e-3).fit()
    assert att.dim == obj.p and att.units == "loss" and att.sign == ref.sign
    assert rel(att.scores(Xt, yt), ref.scores(Xt, yt)) < 1e-10
    assert rel(att.scores(Xt, yt, [3, 40, 7]), ref.scores(Xt, yt, [3, 40, 7])) < 1e-10
    assert rel(att.self_scores(), ref.self_scores()) < 1e-10
    assert att.diagnostics["relative_residual"] < 1e-12


def test_full_dimension_with_conv_shared_layer_and_dense_fallback():
    obj, X, y = conv_problem()
    ref = whybox.InfluenceFunction(obj, Dense(empirical_fisher(obj, 1e-3))).fit()
    with pytest.warns(RuntimeWarning, match=r"norm\.weight', 'norm\.bias"):
        att = ProjectedInfluence(obj, dim_in=None, dim_out=None, dim_left=None, damping=1e-3).fit()
    assert rel(att.scores(X[:3], y[:3]), ref.scores(X[:3], y[:3])) < 1e-10


# ---------------------------------------------------------------------------- the projection itself
def test_linear_projection_is_the_kronecker_projection_of_the_explicit_gradient():
    X, y = data(40)
    obj = whybox.Objective(mlp(d_in=6, hidden=7), "cross_entropy", X, y, weight_decay=0.01, batch_size=16)
    att = ProjectedInfluence(obj, dim_in=3, dim_out=2).fit()
    G = obj.grads()  # explicit per-example gradients [n, p]
    ours = att.projected_grads()
    assert [(p.k_out, p.k_in) for p in att.projections] == [(2, 3), (2, 3)] and att.dim == 12
    for pl, weight in zip(att.projections, ["0.weight", "2.weight"]):
        d_out, d_in = obj.shapes[obj.param_names.index(weight)]
        start = sum(obj.sizes[: obj.param_names.index(weight)])
        W = G[:, start : start + d_out * d_in].reshape(-1, d_out, d_in)
        b = G[:, start + d_out * d_in : start + d_out * d_in + d_out]
        M = torch.cat([W, b[:, :, None]], 2).reshape(len(G), -1)  # vec([W | b]), row-major
        expected = M @ torch.kron(pl.P_out, pl.P_in).T  # (P_out ⊗ P_in) vec(M)
        torch.testing.assert_close(ours[:, pl.offset : pl.offset + pl.k], expected, rtol=1e-10, atol=1e-13)
        assert pl.P_out.shape == (2, d_out) and pl.P_in.shape == (3, d_in + 1)
    torch.testing.assert_close(att.project_flat(G), ours, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(att.project(X[:5], y[:5]), ours[:5], rtol=1e-10, atol=1e-13)


def test_conv_and_dense_fallback_projection_of_the_explicit_gradient():
    obj, X, y = conv_problem()
    with pytest.warns(RuntimeWarning, match="dense Gaussian projection"):
        att = ProjectedInfluence(obj, dim_in=4, dim_out=2, dim_left=5).fit()
    G = obj.grads()
    ours = att.projected_grads()
    conv, fc, shared = att.projections
    assert [(p.layer.kind, p.k_out, p.k_in) for p in att.projections] == [("conv2d", 2, 4), ("linear", 2, 4), ("linear", 2, 4)]
    # conv: weight [3, 2, 3, 3] flattened to rows of 18, bias as the 19th column
    Wc = G[:, :54].reshape(-1, 3, 18)
    Mc = torch.cat([Wc, G[:, 54:57, None]], 2).reshape(len(G), -1)
    torch.testing.assert_close(ours[:, :8], Mc @ torch.kron(conv.P_out, conv.P_in).T, rtol=1e-10, atol=1e-13)
    start = sum(obj.sizes[: obj.param_names.index("shared.weight")])
    Ms = torch.cat([G[:, start : start + 16].reshape(-1, 4, 4), G[:, start + 16 : start + 20, None]], 2).reshape(len(G), -1)
    torch.testing.assert_close(ours[:, shared.offset : shared.offset + 8], Ms @ torch.kron(shared.P_out, shared.P_in).T,
                               rtol=1e-10, atol=1e-13)
    left = [i for n in ("norm.weight", "norm.bias") for i in range(sum(obj.sizes[: obj.param_names.index(n)]),
                                                                   sum(obj.sizes[: obj.param_names.index(n) + 1]))]
    P_left = att.left_projection.matrix()
    assert P_left.shape == (5, 24)
    torch.testing.assert_close(ours[:, -5:], G[:, left] @ P_left.T, rtol=1e-10, atol=1e-13)


def test_projected_curvature_is_p_times_the_full_curvature_times_p_transposed():
    """G̃ = P (F + D + λI) Pᵀ with P built explicitly: block diagonal of P_out ⊗ P_in per layer (in θ's
    layer-matrix positions) and the dense fallback projection; per-parameter decay included."""
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(30, 2, 4, 4, generator=gen, dtype=DT), torch.randint(0, 4, (30,), generator=gen)
    decay = {"conv.weight": 0.02, "conv.bias": 0.0, "norm.weight": 0.03, "norm.bias": 0.01,
             "fc.weight": 0.01, "fc.bias": 0.0, "shared.weight": 0.005, "shared.bias": 0.002}
    obj = whybox.Objective(ConvNet(), "cross_entropy", X, y, weight_decay=decay, batch_size=7)
    with pytest.warns(RuntimeWarning, match="dense Gaussian projection"):
        att = ProjectedInfluence(obj, dim_in=3, dim_out=2, dim_left=4, layer_dims={"fc": (None, 3)}, damping=1e-3).fit()
    P = torch.zeros(att.dim, obj.p, dtype=DT)
    for pl in att.projections:
        P_out = torch.eye(pl.layer.d_out, dtype=DT) if pl.P_out is None else pl.P_out
        P_in = torch.eye(pl.layer.d_in, dtype=DT) if pl.P_in is None else pl.P_in
        P[pl.offset : pl.offset + pl.k, pl.layer.index] = torch.kron(P_out, P_in)
    left = [i for n in ("norm.weight", "norm.bias") for i in range(sum(obj.sizes[: obj.param_names.index(n)]),
                                                                   sum(obj.sizes[: obj.param_names.index(n) + 1]))]
    P[-4:, left] = att.left_projection.matrix()
    assert [(p.k_out, p.k_in) for p in att.projections] == [(2, 3), (3, 13), (2, 3)]
    torch.testing.assert_close(att.curvature.dense(), P @ empirical_fisher(obj, 1e-3) @ P.T, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(att.projected_grads(), obj.grads() @ P.T, rtol=1e-10, atol=1e-13)


def test_dense_projection_in_blocks_equals_the_whole_matrix(monkeypatch):
    """A dense projection too large to keep is regenerated block by block from the seed: same matrix."""
    from whybox.attribution import projection

    whole = projection.DenseProjection(50, 7, seed=3, dtype=DT, device=torch.device("cpu"))
    monkeypatch.setattr(projection, "_KEEP_BYTES", 0)
    monkeypatch.setattr(projection, "_BLOCK_BYTES", 7 * 8 * 6)  # blocks of 6 columns
    blocks = projection.DenseProjection(50, 7, seed=3, dtype=DT, device=torch.device("cpu"))
    assert blocks._kept is None and blocks.block == 6
    V, d = torch.randn(4, 50, dtype=DT), torch.rand(50, dtype=DT)
    P = blocks.matrix()
    torch.testing.assert_close(blocks.apply(V), V @ P.T)
    torch.testing.assert_close(blocks.gram(d), (P * d) @ P.T)
    assert P.shape == (7, 50) and not torch.equal(P, whole.matrix())  # per-block seeds: a different (valid) draw


# ---------------------------------------------------------------------------- agreement grows with k
def test_agreement_with_exact_grows_with_the_projection_dimension():
    """On an MLP 10-32-4 (p = 484), Pearson r of projected scores with the exact (full-dimension)
    scores, averaged over 4 projection seeds, rises with dim_in = dim_out and reaches 1 near full
    dimension (32: the first layer unprojected, the second's inputs 33 -> 32). Measured when
    written: r = 0.14, 0.24, 0.41, 0.70, 0.998 (seed spread under ±0.05)."""
    X, y = data(300, d=10, classes=4)
    model = mlp(10, 32, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    obj = whybox.Objective(model, "cross_entropy", X, y, weight_decay=1e-3)
    Xt, yt = data(10, d=10, classes=4, seed=5)
    exact = ProjectedInfluence(obj, dim_in=None, dim_out=None, damping=1e-3).fit().scores(Xt, yt)
    r = {}
    dims = (2, 4, 8, 16, 32)
    for dim in dims:
        rs = [np.corrcoef(ProjectedInfluence(obj, dim_in=dim, dim_out=dim, damping=1e-3, seed=s).fit()
                          .scores(Xt, yt).reshape(-1), exact.reshape(-1))[0, 1] for s in range(4)]
        r[dim] = float(np.mean(rs))
    assert all(r[b] - r[a] > 0.05 for a, b in zip(dims, dims[1:])), r
    assert r[32] > 0.99 and r[2] < 0.5, r


# ---------------------------------------------------------------------------- the store
def test_store_writes_once_resumes_and_serves_score_to_store(tmp_path, monkeypatch):
    X, y = data(90)
    Xt, yt = data(4, seed=7)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=0.01, batch_size=20, cache_bytes=0)
    memory = ProjectedInfluence(obj, dim_in=3, dim_out=2, damping=1e-3).fit()
    expected = memory.scores(Xt, yt)
    assert memory.diagnostics["projected_grads"] == "recomputed per query"  # cache_bytes=0, no store

    calls = []
    original = ProjectedInfluence._project

    def counting(self, cg):
        calls.append(len(cg.layers[0][0]))
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt  # a run stopped mid-way
        return original(self, cg)

    monkeypatch.setattr(ProjectedInfluence, "_project", counting)
    path = tmp_path / "proj.zarr"
    stop_after = 2
    with pytest.raises(KeyboardInterrupt):
        ProjectedInfluence(obj, dim_in=3, dim_out=2, damping=1e-3, store=path).fit()
    stop_after, calls[:] = None, []
    stored = ProjectedInfluence(obj, dim_in=3, dim_out=2, damping=1e-3, store=path).fit()
    assert calls == [20, 20, 10]  # only the three chunks the stopped run did not finish
    calls[:] = []
    again = ProjectedInfluence(obj, dim_in=3, dim_out=2, damping=1e-2, store=path).fit()  # other damping: same store
    assert calls == [] and again.diagnostics["projected_grads"] == "store"
    torch.testing.assert_close(stored.projected_grads(), memory.projected_grads(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(stored.scores(Xt, yt), expected, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(stored.self_scores([5, 2, 60]), memory.self_scores([5, 2, 60]), rtol=1e-10, atol=0)
    calls[:] = []
    arr = score_to_store(stored, Xt, yt, tmp_path / "scores.zarr", test_chunk=2, train_chunk=25, progress=False)
    np.testing.assert_allclose(arr[:], expected.numpy(), rtol=1e-10)
    assert [c for c in calls if c != 2] == []  # only the test points were projected, never a training row
    copy = pickle.loads(pickle.dumps(stored))  # what Dask ships to a worker: reopens the store by path
    torch.testing.assert_close(copy.score_chunk(copy.test_factors(Xt, yt), slice(10, 30)), expected[:, 10:30])
    with pytest.raises(ValueError, match="different problem"):
        ProjectedInfluence(obj, dim_in=3, dim_out=2, seed=1, store=path).fit()


# ---------------------------------------------------------------------------- settings and bad input
def test_sampled_fisher_is_seeded_and_close_to_the_ggn():
    X, y = data(400, d=4)
    obj = whybox.Objective(mlp(4, 5, 3), "cross_entropy", X, y, weight_decay=0.01)
    Xt, yt = data(5, d=4, seed=7)
    kw = dict(dim_in=None, dim_out=None, damping=1e-3)
    a = ProjectedInfluence(obj, fisher="sampled", seed=2, **kw).fit().scores(Xt, yt)
    b = ProjectedInfluence(obj, fisher="sampled", seed=2, **kw).fit().scores(Xt, yt)
    g = ProjectedInfluence(obj, fisher="ggn", **kw).fit().scores(Xt, yt)
    assert torch.equal(a, b)
    assert np.corrcoef(a.reshape(-1), g.reshape(-1))[0, 1] > 0.9


def test_bad_settings_are_refused_naming_the_argument():
    X, y = data(20)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y)
    with pytest.raises(ValueError, match="dim_in must be a positive integer"):
        ProjectedInfluence(obj, dim_in=0)
    with pytest.raises(ValueError, match="fisher must be one of"):
        ProjectedInfluence(obj, fisher="hessian")
    with pytest.raises(ValueError, match="damping must be"):
        ProjectedInfluence(obj, damping=-1)
    with pytest.raises(ValueError, match=r"layer_dims names \['fc'\].*factored layers: \['0', '2'\]"):
        ProjectedInfluence(obj, layer_dims={"fc": (2, 2)}).fit()
    with pytest.raises(ValueError, match="above max_dim=10.*lower dim_in/dim_out"):
        ProjectedInfluence(obj, dim_in=3, dim_out=3, max_dim=10).fit()
    with pytest.raises(ValueError, match="fisher='sampled'.*'hinge'"):
        ProjectedInfluence(whybox.Objective(mlp(d_out=1), "hinge", X, (y > 0).long()), fisher="sampled")
    # no weight decay, no damping, 20 points in 53 dimensions: singular
    with pytest.raises(NotPositiveDefiniteError, match=r"ProjectedInfluence\(damping="):
        ProjectedInfluence(obj, dim_in=None, dim_out=None).fit()
    with pytest.raises(RuntimeError, match="call .fit"):
        ProjectedInfluence(obj).scores(X[:2], y[:2])


def test_layer_dims_and_a_strict_residual_check():
    X, y = data(60)
    obj = whybox.Objective(mlp(), "cross_entropy", X, y, weight_decay=0.01)
    att = ProjectedInfluence(obj, layer_dims={"2": (4, None)}, dim_in=2, dim_out=2).fit()
    assert [(p.k_out, p.k_in) for p in att.projections] == [(2, 2), (3, 4)]
    strict = ProjectedInfluence(obj, dim_in=2, dim_out=2, strict=True).fit()
    strict.curvature.residual_tolerance = 1e-30  # unreachable in float64: the check must fire
    with pytest.raises(InaccurateSolveError, match=r"ProjectedInfluence\(damping=\.\.\.\)"):
        strict.scores(X[:2], y[:2])


def test_registered_as_a_study_method():
    from whybox.study import METHODS, DataSettings, MethodSettings, load_study

    assert "projected" in METHODS
    study = load_study(DataSettings(dataset="iris"), method=MethodSettings(method="projected", damping=1e-3, projection_dim=2))
    att = study.attributor
    assert isinstance(att, ProjectedInfluence) and att.dim_in == 2 and att.damping == 1e-3
    scores = att.scores(study.X_test[:3], study.y_test[:3])
    assert scores.shape == (3, att.n) and torch.isfinite(scores).all()
