"""Linear datamodeling score and mislabel metrics: the metric itself on known numbers, then influence
against real subset retraining (with the on-disk cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import whybox
from whybox.evaluation import (
    fraction_found,
    lds,
    lds_from_scores,
    mislabel_auc,
    random_subsets,
    subset_ground_truth,
)


def test_lds_of_an_exactly_additive_truth_is_one():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 40))
    masks = random_subsets(40, 12, 0.5, seed=1)
    actual = 2.0 + (~masks).astype(float) @ scores.T  # removal changes the loss exactly by Σ removed scores
    np.testing.assert_allclose(lds_from_scores(scores, masks, actual), 1.0)
    np.testing.assert_allclose(lds_from_scores(-scores, masks, actual), -1.0)  # the sign matters


def test_subsets_and_bad_input():
    masks = random_subsets(10, 5, 0.3, seed=0)
    assert masks.shape == (5, 10) and (masks.sum(1) == 3).all()
    with pytest.raises(ValueError, match="alpha"):
        random_subsets(10, 5, 1.5)
    with pytest.raises(ValueError, match="at least 3 subsets"):
        random_subsets(10, 2)


def test_mislabel_metrics():
    flipped = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    perfect = flipped.astype(float)
    assert mislabel_auc(perfect, flipped) == 1.0 and mislabel_auc(-perfect, flipped) == 0.0
    assert fraction_found(perfect, flipped, 0.2) == 1.0 and fraction_found(perfect, flipped, 0.1) == 0.5


class Shuffled(whybox.Attributor):
    """A baseline with no information: random scores."""

    def scores(self, X_test, y_test, train_idx=None):
        gen = torch.Generator().manual_seed(0)
        return torch.randn(len(X_test), len(self.rows(train_idx)), generator=gen, dtype=torch.float64)


def test_influence_lds_against_subset_retraining(binary_lr, tmp_path):
    d, obj = binary_lr
    X, y = d.X_test[:6], d.y_test[:6]
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    res = lds(inf, X, y, subsets=12, alpha=0.9, cache=tmp_path, progress=False)
    baseline = lds(Shuffled(obj), X, y, subsets=12, alpha=0.9, cache=tmp_path, progress=False)
    # logistic regression at an optimum, 10 % removed: first-order influence ranks the retrained losses well
    assert res.mean > 0.8, res.per_test
    assert abs(baseline.mean) < 0.5 and res.mean > baseline.mean + 0.4
    cached = list(tmp_path.glob("lds-*.npy"))
    assert len(cached) == 1  # both attributors share one cached ground truth
    masks = random_subsets(obj.n, 12, 0.9, seed=0)
    again = subset_ground_truth(obj, X, y, masks, cache=tmp_path, progress=False)
    np.testing.assert_array_equal(again.numpy(), np.load(cached[0]))


def test_subset_ground_truth_with_a_training_recipe(binary_lr, tmp_path):
    """A recipe (mask -> θ) replaces the L-BFGS refit: the same refit written as a recipe gives the
    same losses, a state dict is accepted, and the cache keeps recipes apart."""
    from whybox import zoo

    d, obj = binary_lr
    X, y = d.X_test[:4], d.y_test[:4]
    masks = random_subsets(obj.n, 4, 0.7, seed=3)
    default = subset_ground_truth(obj, X, y, masks, tol=1e-9, progress=False)
    calls = []

    def refit(mask):
        calls.append(mask.sum())
        return zoo.retrain(obj, np.flatnonzero(~mask).tolist(), tol=1e-9).theta

    same = subset_ground_truth(obj, X, y, masks, progress=False, train=refit, recipe="refit", cache=tmp_path)
    np.testing.assert_allclose(same.numpy(), default.numpy(), rtol=1e-9, atol=1e-12)
    assert calls == [masks[0].sum()] * 4
    subset_ground_truth(obj, X, y, masks, progress=False, train=refit, recipe="refit", cache=tmp_path)
    assert len(calls) == 4  # read back from the cache

    def first_half_only(mask):  # another recipe: a state dict of a model fitted on the kept rows of one half
        model = zoo.logistic_regression(d.n_features, 2)
        keep = np.flatnonzero(mask[: obj.n // 2])
        zoo.train(model, "logistic", obj.X[keep], obj.y[keep], weight_decay=0.01)  # trains in place
        return model.state_dict()

    other = subset_ground_truth(obj, X, y, masks, progress=False, train=first_half_only, recipe="half", cache=tmp_path)
    assert not np.allclose(other.numpy(), same.numpy())
    model = zoo.logistic_regression(d.n_features, 2)
    keep = np.flatnonzero(masks[2][: obj.n // 2])
    direct, _ = zoo.train(model, "logistic", obj.X[keep], obj.y[keep], weight_decay=0.01)
    np.testing.assert_allclose(other[2].numpy(), direct.losses(X, y).numpy(), rtol=1e-10)
    assert len(list(tmp_path.glob("lds-*.npy"))) == 2
    with pytest.raises(ValueError, match="recipe="):
        subset_ground_truth(obj, X, y, masks, progress=False, train=refit, cache=tmp_path)
    with pytest.raises(ValueError, match="p = 31"):
        subset_ground_truth(obj, X, y, masks, progress=False, train=lambda m: torch.zeros(3))


def test_subset_ground_truth_records_the_gradient_norms(binary_lr, tmp_path):
    """``grad_norms=`` receives ‖∇R‖ of each retrained model (checked against the risk's gradient of an
    independent refit), cached beside the losses, which are those of the plain call."""
    from whybox import zoo

    d, obj = binary_lr
    X, y = d.X_test[:3], d.y_test[:3]
    masks = random_subsets(obj.n, 3, 0.5, seed=1)
    norms: list = []
    losses = subset_ground_truth(obj, X, y, masks, tol=1e-9, cache=tmp_path, progress=False, grad_norms=norms)
    np.testing.assert_array_equal(losses.numpy(), subset_ground_truth(obj, X, y, masks, tol=1e-9, progress=False).numpy())
    assert len(norms) == 3 and all(0 < g <= 1e-9 for g in norms)
    res = zoo.retrain(obj, np.flatnonzero(~masks[1]).tolist(), tol=1e-9)
    assert norms[1] == pytest.approx(res.grad_norm, rel=1e-12)
    again: list = []
    subset_ground_truth(obj, X, y, masks, tol=1e-9, cache=tmp_path, progress=False, grad_norms=again)
    assert again == norms and len(list(tmp_path.glob("lds-norms-*.npy"))) == 1
    with pytest.raises(ValueError, match="grad_norms="):
        subset_ground_truth(obj, X, y, masks, progress=False, train=lambda m: obj.theta, recipe="x", grad_norms=[])
