"""Low-rank EK-FAC scoring against the dense EK-FAC scores, the flat route and its own error bounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import whybox
import whybox.attribution.kfac
from whybox.curvature import InaccurateSolveError
from whybox.curvature.ekfac import low_rank_inverse

DT = torch.float64


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def problem():
    """A tanh MLP 10-40-4 (layer matrices 40 × 11 and 4 × 41), EK-FAC fitted, 6 test points."""
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(150, 10, generator=gen, dtype=DT), torch.randint(0, 4, (150,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 40, dtype=DT), nn.Tanh(), nn.Linear(40, 4, dtype=DT))
    obj = whybox.Objective(model, "cross_entropy", X, y, weight_decay=0.01, batch_size=64)
    curv = whybox.EKFAC(damping=1e-3).fit(obj)
    Xt = torch.randn(6, 10, generator=gen, dtype=DT)
    return obj, curv, Xt, torch.randint(0, 4, (6,), generator=gen)


def fitted(obj, curv, **kw) -> whybox.KFACInfluence:
    """A KFACInfluence on an already fitted curvature (fit() would refit it)."""
    inf = whybox.KFACInfluence(obj, curv, **kw)
    inf._fitted = True
    return inf


def rotated_rows(obj, curv, X, y):
    """Per layer (δ̃ [k, d_out], ã [k, d_in]): true-label output gradients and inputs (with the
    bias 1) by explicit autograd on the model, rotated into the factors' eigenbases."""
    model = obj.model
    lin0, lin1 = model[0], model[2]
    h_pre = lin0(X)
    h_pre.retain_grad()
    h = torch.tanh(h_pre)
    out = lin1(h)
    out.retain_grad()
    nn.functional.cross_entropy(out, y, reduction="sum").backward()
    rows = [(h_pre.grad, torch.cat([X, torch.ones(len(X), 1, dtype=DT)], 1)),
            (out.grad, torch.cat([h.detach(), torch.ones(len(X), 1, dtype=DT)], 1))]
    model.zero_grad()
    return [(d @ layer.eig_G[1], a @ layer.eig_A[1]) for layer, (d, a) in zip(curv.layers, rows)]


def test_low_rank_inverse_is_the_weighted_truncated_svd(problem):
    """left @ right is the truncated SVD of D_G W D_A mapped back; its reported errors are the ones
    computed from it; R is the smallest rank meeting the tolerance; tolerance 0 gives W itself."""
    _, curv, _, _ = problem
    for layer in curv.layers:
        W = layer.extra["inverse_diagonal"]
        wg, wa = layer.eig_G[0].clamp_min(0), layer.eig_A[0].clamp_min(0)
        wg, wa = wg.clamp_min(1e-16 * wg.max()), wa.clamp_min(1e-16 * wa.max())
        s = torch.linalg.svdvals(wg[:, None] * W * wa)
        for tol in (0.3, 0.05, 1e-3):
            plan = low_rank_inverse(layer, tol)
            E = wg[:, None] * (W - plan.left @ plan.right) * wa
            est = (E.norm() / (wg[:, None] * W * wa).norm()).item()
            assert plan.estimated_error == pytest.approx(est, rel=1e-6, abs=1e-12)
            assert est <= tol
            R = plan.rank
            assert R == 1 or (s[R - 1:] ** 2).sum().sqrt() / s.norm() > tol  # rank R - 1 would miss it
            spectral = torch.linalg.matrix_norm(W - plan.left @ plan.right, 2) / torch.linalg.matrix_norm(W, 2)
            assert plan.spectral_error == pytest.approx(spectral.item(), rel=1e-6, abs=1e-12)
        full = low_rank_inverse(layer, 0.0)
        assert full.rank == min(layer.d_out, layer.d_in)
        torch.testing.assert_close(full.left @ full.right, W, rtol=1e-10, atol=1e-10 * W.max().item())


def test_low_rank_scores_within_the_a_priori_bound_of_the_dense_scores(problem):
    """Every score differs from the dense EK-FAC score by at most
    Σ_layers ‖W − W_R‖₂ ‖δ̃ᵢ ⊙ δ̃ₜ‖ ‖ãᵢ ⊙ ãₜ‖ / n (rows rotated here by explicit autograd)."""
    obj, curv, Xt, yt = problem
    dense = fitted(obj, curv, scoring="dense").scores(Xt, yt)
    low = fitted(obj, curv, rank_tolerance=0.05)
    scores = low.scores(Xt, yt)
    routes = low.diagnostics["low_rank_layers"]
    assert routes["0"]["route"] == "low_rank" and routes["0"]["rank"] < 11  # the test exercises truncation
    bound = 0.0
    train, test = rotated_rows(obj, curv, obj.X, obj.y), rotated_rows(obj, curv, Xt, yt)
    for layer, (di, ai), (dt, at) in zip(curv.layers, train, test):
        info = routes[layer.module]
        if info["route"] != "low_rank":
            continue
        norm_W = torch.linalg.matrix_norm(layer.extra["inverse_diagonal"], 2).item()
        xn = ((dt[:, None, :] * di[None]) ** 2).sum(2).sqrt()  # [m, n]
        yn = ((at[:, None, :] * ai[None]) ** 2).sum(2).sqrt()
        bound = bound + info["spectral_error"] * norm_W * xn * yn / obj.n
    err = (scores - dense).abs()
    assert err.max() > 0
    assert (err <= bound * (1 + 1e-9)).all()
    # the estimate R was chosen from predicts the realised error
    assert rel(scores, dense) <= 0.05


def test_measured_error_is_the_error_on_the_check_rows(problem):
    obj, curv, Xt, yt = problem
    low = fitted(obj, curv, rank_tolerance=0.05)
    scores = low.scores(Xt, yt)
    dense = fitted(obj, curv, scoring="dense").scores(Xt, yt)
    k = whybox.attribution.kfac.CHECK_ROWS
    rows = torch.linspace(0, obj.n - 1, k).round().long()
    assert low.diagnostics["low_rank_check_rows"] == k
    assert low.diagnostics["low_rank_measured_error"] == pytest.approx(rel(scores[:, rows], dense[:, rows]), rel=1e-6)


def test_tight_tolerance_equals_the_flat_route(problem):
    """rank_tolerance → 0: the low-rank route (full rank where it saves work, dense elsewhere)
    equals InfluenceFunction(obj, EKFAC) on flat per-example gradients."""
    obj, curv, Xt, yt = problem
    flat = whybox.InfluenceFunction(obj, curv)
    flat._fitted = True
    ref = flat.scores(Xt, yt)
    for tol in (1e-12, 0.0):
        low = fitted(obj, curv, rank_tolerance=tol)
        assert rel(low.scores(Xt, yt), ref) < 1e-8
        assert low.diagnostics["low_rank_measured_error"] < 1e-10
    assert rel(fitted(obj, curv, scoring="dense").scores(Xt, yt), ref) < 1e-8
    assert rel(fitted(obj, curv).self_scores(), flat.self_scores()) < 1e-8  # self-scores stay exact


def test_factored_form_over_chunks_equals_scores(problem):
    obj, curv, Xt, yt = problem
    low = fitted(obj, curv, rank_tolerance=0.05)
    f = low.test_factors(Xt, yt)
    parts = torch.cat([low.score_chunk(f, slice(0, 70)), low.score_chunk(f, slice(70, None))], 1)
    torch.testing.assert_close(parts, low.scores(Xt, yt), rtol=1e-12, atol=1e-14)


def test_an_inaccurate_low_rank_answer_warns_or_raises(problem, monkeypatch):
    """A plan too coarse for the tolerance (forced here) is caught by the check on training rows."""
    obj, curv, Xt, yt = problem
    monkeypatch.setattr(whybox.attribution.kfac, "low_rank_inverse", lambda layer, tol: low_rank_inverse(layer, 0.9))
    with pytest.warns(RuntimeWarning, match="relative error .* above rank_tolerance=1e-06"):
        fitted(obj, curv, rank_tolerance=1e-6).scores(Xt, yt)
    strict = whybox.EKFAC(damping=1e-3, strict=True)
    with pytest.raises(InaccurateSolveError, match="scoring='dense'"):
        whybox.KFACInfluence(obj, strict, rank_tolerance=1e-6).fit().scores(Xt, yt)


def test_kfac_ignores_the_low_rank_options_and_bad_options_are_refused(problem):
    obj, _, Xt, yt = problem
    kfac = whybox.KFAC(damping=1e-3)
    a = whybox.KFACInfluence(obj, kfac, rank_tolerance=0.5).fit().scores(Xt, yt)
    b = whybox.KFACInfluence(obj, kfac, scoring="dense").fit().scores(Xt, yt)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="scoring must be one of"):
        whybox.KFACInfluence(obj, kfac, scoring="fast")
    with pytest.raises(ValueError, match="rank_tolerance must be in"):
        whybox.KFACInfluence(obj, kfac, rank_tolerance=1.0)
