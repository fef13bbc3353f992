"""Group influence: order 1, the Newton step, and Basu et al.'s series against closed forms."""

from __future__ import annotations

import pytest
import torch

import whybox
from whybox import zoo

GROUPS = [[0, 1, 2], [10, 20, 30, 40], list(range(50, 90))]


@pytest.fixture(scope="module")
def ridge():
    """Linear regression with squared error: H is constant, so every formula has a closed form."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(100, generator=gen, dtype=torch.float64)
    obj, _ = zoo.train(torch.nn.Linear(3, 1, dtype=torch.float64), "squared_error", X, y[:, None], weight_decay=0.05)
    Xa = torch.cat([X, torch.ones(100, 1, dtype=X.dtype)], 1)  # weight, then bias
    H = Xa.T @ Xa / 100 + 0.05 * torch.eye(4, dtype=X.dtype)
    G = (Xa @ obj.theta - y)[:, None] * Xa  # per-example gradients of ½(θ·x − y)²
    return obj, X, y, Xa, H, G


def test_order_one_and_two_wrap_the_influence_function(binary_lr):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    Xt, yt = d.X_test[:4], d.y_test[:4]
    one = whybox.GroupInfluence(inf, GROUPS, order=1).fit()
    ref = torch.stack([inf.scores(Xt, yt, g).sum(1) for g in GROUPS], dim=1)
    torch.testing.assert_close(one.scores(Xt, yt), ref)
    torch.testing.assert_close(one.scores(Xt, yt, [2, 0]), ref[:, [2, 0]])
    two = whybox.GroupInfluence(inf, GROUPS, order=2)
    torch.testing.assert_close(two.scores(Xt, yt), inf.group_removal_effect(Xt, yt, GROUPS, order=2))


def test_basu_series_and_self_scores_match_closed_forms(ridge):
    obj, X, y, Xa, H, G = ridge
    n = obj.n
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    basu = whybox.GroupInfluence(inf, GROUPS, order="basu").fit()
    for j, g in enumerate(GROUPS):
        gU, HU = G[g].sum(0), Xa[g].T @ Xa[g]
        first = torch.linalg.solve(H, gU) / n
        delta = first + torch.linalg.solve(H, HU @ first) / n
        torch.testing.assert_close(basu.basu_parameter_change([j])[0], delta)
        g_test = G[:5]  # the first five training points as test points
        torch.testing.assert_close(basu.scores(X[:5], y[:5, None], [j])[:, 0], g_test @ delta)
        # the exact removal (a quadratic: one Newton step is exact) is closer to the 2-term series than to
        # the first-order term, in the H-norm: the series' remainder shrinks eigenvalue by eigenvalue
        exact = torch.linalg.solve(H - HU / n, gU) / n
        h_norm = lambda v: (v @ H @ v).sqrt()  # noqa: E731
        assert h_norm(delta - exact) <= h_norm(first - exact)
        one = whybox.GroupInfluence(inf, GROUPS, order=1)
        torch.testing.assert_close(one.self_scores([j])[0], gU @ torch.linalg.solve(H, gU) / n)
    assert (whybox.GroupInfluence(inf, GROUPS, order=1).self_scores() >= 0).all()


def test_group_influence_rejects_bad_arguments(binary_lr):
    inf = whybox.InfluenceFunction(binary_lr[1], whybox.Exact())
    with pytest.raises(ValueError, match="order must be 1, 2 or 'basu'"):
        whybox.GroupInfluence(inf, GROUPS, order=3)
    with pytest.raises(ValueError, match="non-empty list"):
        whybox.GroupInfluence(inf, [])
    with pytest.raises(ValueError, match="train_idx must be in"):
        whybox.GroupInfluence(inf, [[0, 10_000]])
    with pytest.raises(ValueError, match="group indices must be in"):
        whybox.GroupInfluence(inf, GROUPS).fit().scores(binary_lr[0].X_test[:2], binary_lr[0].y_test[:2], [5])
    with pytest.raises(TypeError, match="InfluenceFunction"):
        whybox.GroupInfluence(whybox.GradientSimilarity(binary_lr[1]), GROUPS)


def test_against_retraining_without_the_group(binary_lr):
    """Actual retraining without random and one-class groups of 5 % and 20 % of n: the Newton step and
    Basu's series predict the change far better than the first-order sum, which underestimates it."""
    from whybox.evaluation import group_ground_truth

    d, obj = binary_lr
    X, y = d.X_test[:20], d.y_test[:20]
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    gen = torch.Generator().manual_seed(0)
    labels = torch.as_tensor(obj.y)
    for size in (obj.n // 20, obj.n // 5):
        groups = [torch.randperm(obj.n, generator=gen)[:size].tolist() for _ in range(3)]
        groups += [c[torch.randperm(len(c), generator=gen)[:size]].tolist()
                   for c in (torch.nonzero(labels == k).flatten() for k in (0, 1))]
        actual = group_ground_truth(obj, X, y, groups, tol=1e-10, progress=False)
        error = {}
        for order in (1, 2, "basu"):
            predicted = whybox.GroupInfluence(inf, groups, order=order).fit().scores(X, y)
            error[order] = ((predicted - actual).norm() / actual.norm()).item()
            assert torch.corrcoef(torch.stack([predicted.flatten(), actual.flatten()]))[0, 1] > 0.9
        assert error[2] < error[1] and error["basu"] < error[1], error
        # first order underestimates the removal of a large group (Koh et al. 2019): its fit to the truth
        # has slope below 1, the second-order estimates are closer to 1
        slope = {o: ((whybox.GroupInfluence(inf, groups, order=o).scores(X, y) * actual).sum() / (actual**2).sum()).item()
                 for o in (1, "basu")}
        assert slope[1] < slope["basu"] <= 1.05, slope
