"""Fixing mislabeled examples (paper §5.4): flips, rankings, ground truth on tiny problems."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import whybox
from whybox import zoo
from whybox.applications.mislabeled import (
    MislabeledSettings,
    Problem,
    cleanlab_available,
    cleanlab_order,
    fix_mislabeled,
    load_problem,
    method_factory,
)
from whybox.report.usecases import mislabeled_table, save_mislabeled
from whybox.zoo import flip_labels, make_spam_corpus


def blobs(n=160, d=5, n_classes=2, sep=3.0, seed=0, n_test=200) -> Problem:
    """Well separated Gaussian classes: every flipped label is an obvious outlier."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, sep, (n_classes, d))
    y = rng.integers(0, n_classes, n + n_test)
    X = centers[y] + rng.normal(0, 1, (n + n_test, d))
    t = torch.as_tensor
    loss = "logistic" if n_classes == 2 else "cross_entropy"
    split = zoo.Split("blobs", t(X[:n]), t(y[:n]), t(X[n:]), t(y[n:]), n_classes)
    return Problem(split, lambda: zoo.logistic_regression(d, n_classes), loss, weight_decay=0.01)


def test_flip_labels_multiclass():
    y = np.repeat(np.arange(5), 40)
    noisy, idx = flip_labels(y, 0.1, 5, np.random.default_rng(1))
    assert len(idx) == 20 and len(np.unique(idx)) == 20
    assert (noisy[idx] != y[idx]).all() and noisy.min() >= 0 and noisy.max() < 5
    assert (np.delete(noisy, idx) == np.delete(y, idx)).all()
    noisy2, idx2 = flip_labels(y, 0.1, 5, np.random.default_rng(1))
    assert (noisy2 == noisy).all() and (idx2 == idx).all()
    # a flip goes to every other class, not always the same one
    many, idx3 = flip_labels(np.zeros(2000, int), 0.5, 5, np.random.default_rng(0))
    assert set(np.unique(many[idx3])) == {1, 2, 3, 4}
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(y, 1.5, 5, np.random.default_rng(0))


def test_flips_ranked_first_on_separable_problem(tmp_path):
    pr = blobs()
    settings = MislabeledSettings(rankings=("self_influence", "influence_loo", "train_loss", "cv_loss", "random"),
                                  repeats=2, acc_fractions=(0.0, 0.15), cv_folds=3)
    res = fix_mislabeled(pr, settings, progress=False)
    for r in ("self_influence", "influence_loo", "train_loss", "cv_loss"):
        assert res.found_at(r, 0.1)[0] >= 0.9, (r, res.found_at(r, 0.1))
        assert res.found_at(r, 0.0)[0] == 0.0
    assert res.found_at("random", 0.1)[0] < 0.4
    assert res.found["random"][:, -1].max() <= 0.6  # 30 % random checks find about 30 %
    # where a ranking found every flip, fixing and retraining gives the clean-label model back
    j = list(res.fractions).index(0.15)
    for r in ("self_influence", "train_loss"):
        done = res.found[r][:, j] == 1.0
        assert done.any()
        assert np.abs(res.accuracy[r][done, 1] - res.clean_accuracy).max() <= 1 / len(pr.split.y_test) + 1e-12
    paths = save_mislabeled(res, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["repeats"] == 2 and len(data["found"]["random"]) == 2
    assert paths["png"].stat().st_size > 10_000
    assert paths["csv"].read_text().startswith("ranking,")
    assert "self_influence" in mislabeled_table(res)


def test_influence_loo_matches_retraining():
    """train loss + self_scores/n predicts the leave-one-out loss L(z_i, θ̂_{-i}) (retrained)."""
    pr = blobs(n=80, sep=1.0, seed=3)
    obj, _ = zoo.train(pr.make_model(), pr.loss, pr.split.X_train, pr.split.y_train, 0.01)
    att = method_factory("exact")(obj)
    pred = obj.losses() + att.self_scores() / obj.n
    worst = torch.argsort(obj.losses(), descending=True)[:6].tolist()
    actual = []
    for i in worst:
        theta = zoo.retrain(obj, remove=[i]).theta
        actual.append(obj.losses(obj.X[i : i + 1], obj.y[i : i + 1], theta=theta).item())
    actual = torch.tensor(actual, dtype=pred.dtype)
    train = obj.losses()[worst]
    assert (actual > train).all()  # removing a point raises its own loss
    # first order in 1/n: closer to the truth than the training loss, below it (the rise is convex),
    # in the same order
    assert ((pred[worst] - actual).abs() < (train - actual).abs()).all(), (pred[worst], actual)
    assert (pred[worst] <= actual * 1.001).all()
    assert torch.equal(torch.argsort(pred[worst]), torch.argsort(actual))


def test_any_attributor_factory_is_used():
    """The ranking comes from the factory's attributor: an oracle that knows the flips finds all."""
    pr = blobs(n=100, sep=0.5)

    class Oracle(whybox.Attributor):
        def scores(self, X_test, y_test, train_idx=None):
            return torch.zeros(len(X_test), len(self.rows(train_idx)))

        def self_scores(self, train_idx=None):
            # noisy labels differ from the original ones exactly at the flipped rows
            rows = self.rows(train_idx)
            return (self.objective.y[rows] != pr.split.y_train[rows]).double()

    pr.attributor = lambda obj: Oracle(obj)
    settings = MislabeledSettings(rankings=("self_influence", "train_loss"), repeats=2, acc_fractions=None)
    res = fix_mislabeled(pr, settings, progress=False)
    assert res.found_at("self_influence", 0.1) == (1.0, 0.0)
    assert res.found_at("train_loss", 0.1)[0] < 1.0  # overlapping classes: loss alone is not perfect


def test_trusted_ranking_and_errors():
    pr = blobs(n=120, sep=2.0, n_classes=3)
    trusted = (pr.split.X_test[:30], pr.split.y_test[:30])
    res = fix_mislabeled(pr, MislabeledSettings(rankings=("trusted", "random"), repeats=1, acc_fractions=None),
                         trusted=trusted, progress=False)
    assert res.found_at("trusted", 0.2)[0] > res.found_at("random", 0.2)[0]
    with pytest.raises(ValueError, match="trusted"):
        fix_mislabeled(pr, MislabeledSettings(rankings=("trusted",), repeats=1, acc_fractions=None), progress=False)
    with pytest.raises(ValueError, match="unknown rankings"):
        fix_mislabeled(pr, MislabeledSettings(rankings=("nope",), repeats=1), progress=False)
    with pytest.raises(ValueError, match="unknown problem"):
        load_problem("cifar10")


@pytest.mark.skipif(not cleanlab_available(), reason="cleanlab not installed (pip install cleanlab)")
def test_cleanlab_order_is_a_permutation_with_issues_first():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = np.full((200, 3), 0.05)
    probs[np.arange(200), labels] = 0.9
    bad = np.arange(0, 200, 10)
    probs[bad] = 0.05
    probs[bad, (labels[bad] + 1) % 3] = 0.9
    order = cleanlab_order(labels, probs)
    assert sorted(order.tolist()) == list(range(200))
    assert set(order[: len(bad)].tolist()) == set(bad.tolist())


def test_cleanlab_skipped_with_note_when_missing(monkeypatch):
    import whybox.applications.mislabeled as m

    monkeypatch.setattr(m, "cleanlab_available", lambda: False)
    res = m.fix_mislabeled(blobs(n=60), MislabeledSettings(rankings=("train_loss", "cleanlab"), repeats=1,
                                                           acc_fractions=None), progress=False)
    assert "cleanlab" not in res.found and any("cleanlab" in n for n in res.notes)


def test_spam_corpus_is_sparse_and_seeded():
    c = make_spam_corpus(n_train=300, n_test=100, vocab=1000, seed=4)
    assert c.X_train.shape == (300, 1000) and c.X_test.shape == (100, 1000)
    sparsity = (torch.cat([c.X_train, c.X_test]) == 0).double().mean()
    assert sparsity > 0.9 and 0.15 < c.y_train.double().mean() < 0.45
    assert torch.equal(make_spam_corpus(n_train=300, n_test=100, vocab=1000, seed=4).X_train, c.X_train)
    with pytest.raises(ValueError, match="spam_rate"):
        make_spam_corpus(spam_rate=1.0)


class NeighbourVote(whybox.Attributor):
    """A user's attributor: a near training point (Gaussian kernel) supports a test prediction when it
    shares the test label and opposes it otherwise; a point's self score is how strongly the other
    points near it contradict its own label (high = check first)."""

    def scores(self, X_test, y_test, train_idx=None):
        X, y = self.objective.check_data(X_test, y_test, "test")
        rows = self.rows(train_idx)
        near = torch.exp(-0.5 * torch.cdist(X, self.objective.X[rows]) ** 2)
        agree = 2.0 * (y[:, None] == self.objective.y[rows][None, :]) - 1
        return near * agree

    def self_scores(self, train_idx=None):
        rows = self.rows(train_idx)
        S = self.scores(self.objective.X[rows], self.objective.y[rows])
        S[torch.arange(len(rows)), rows] = 0  # not its own vote
        return -S.sum(1)


def test_a_user_attributor_finds_the_flips():
    """Any Attributor subclass runs the experiment: on well separated classes a flipped label is
    contradicted by its neighbours, so the user's self scores and trusted-set scores find the flips."""
    pr = blobs()
    pr.attributor = NeighbourVote  # a subclass: built as NeighbourVote(objective).fit() for every repeat
    settings = MislabeledSettings(rankings=("self_influence", "trusted", "random"), repeats=2, acc_fractions=None)
    res = fix_mislabeled(pr, settings, trusted=(pr.split.X_test[:40], pr.split.y_test[:40]), progress=False)
    assert res.found_at("self_influence", 0.1)[0] >= 0.9
    assert res.found_at("trusted", 0.1)[0] >= 0.6 > res.found_at("random", 0.1)[0]
    assert res.setup["attributor"] == "NeighbourVote()" and "unitless" in res.setup["attributor_sign"]
    for bad, what in ((NeighbourVote(zoo.train(pr.make_model(), pr.loss, pr.split.X_train, pr.split.y_train)[0]),
                       "not an instance"), (object(), "Attributor subclass"), (lambda obj: object(), "returned object")):
        pr.attributor = bad
        with pytest.raises(TypeError, match="problem.attributor") as err:
            fix_mislabeled(pr, settings, trusted=(pr.split.X_test[:40], pr.split.y_test[:40]), progress=False)
        assert what in str(err.value)
