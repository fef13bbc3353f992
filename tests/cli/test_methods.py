"""Every built-in method (study.METHODS) through the verbs that take --method: explain with its HTML
report and JSON, and mislabeled's self-score ranking; TracIn over the checkpoints whybox records
when it trains the model, or over the user's files (--checkpoints)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import whybox
from tests.cli.test_explain import files, run  # noqa: F401  (files: a pytest fixture)
from whybox import zoo
from whybox.attribution import CheckpointRecorder
from whybox.study import METHODS

EXPECTED = {"influence": "InfluenceFunction", "projected": "ProjectedInfluence", "fastif": "FastIF",
            "gradient_dot": "kind='dot'", "gradient_cosine": "kind='cosine'", "euclidean": "EuclideanSimilarity",
            "representer": "Representer", "tracin": "TracIn"}


def test_every_method_is_covered():
    assert set(EXPECTED) == set(METHODS)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_explains_reports_and_ranks_mislabels(method, tmp_path, capsys):
    report = tmp_path / "r.html"
    code, out, err = run(["explain", "--dataset", "iris", "--method", method, "--report", report, "--n-test", "2",
                          "--top-k", "3", "--json", "-q"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["helpful"]) == 3 and len(doc["harmful"]) == 3
    assert "positive = the training point supports" in doc["sign"]
    assert report.read_text().count('class="test"') == 2

    code, out, err = run(["mislabeled", "--dataset", "breast_cancer", "--repeats", "1", "--rankings", "self_influence,random",
                          "--acc-fractions", "", "--method", method, "--out", tmp_path / "m", "--no-progress"], capsys)
    assert code == 0, err
    result = json.loads(next((tmp_path / "m").glob("*.json")).read_text())
    assert EXPECTED[method] in result["setup"]["attributor"]  # its self-scores made the ranking
    assert len(result["found"]["self_influence"][0]) > 1


def test_tracin_explains_with_the_checkpoints_whybox_recorded(capsys):
    """The reference model's TracIn scores are Σ_c ∇L(z_t, θ_c)·∇L(z_i, θ_c) over the θ of each
    L-BFGS round of its training, recomputed here with explicit per-example gradients."""
    code, out, err = run(["explain", "--dataset", "iris", "--method", "tracin", "--test-index", "0", "--top-k", "3",
                          "--json", "-q"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    d = zoo.load("iris")
    thetas: list = []
    zoo.train(zoo.logistic_regression(d.n_features, d.n_classes), "cross_entropy", d.X_train, d.y_train,
              weight_decay=0.01, checkpoints=thetas)
    assert doc["settings"]["checkpoints"] == len(thetas) >= 2
    expected = sum(_grad_dot(th, d) for th in thetas)[0]
    top = [row["index"] for row in doc["helpful"]]
    assert top == torch.argsort(expected, descending=True)[:3].tolist()
    np.testing.assert_allclose([row["score"] for row in doc["helpful"]], expected[top].numpy(), rtol=1e-8)


def _grad_dot(theta, d):
    """∇L(z_t, θ)·∇L(z_i, θ) for test point 0 and every training point, one autograd call per example."""
    model = zoo.logistic_regression(d.n_features, d.n_classes).double()
    torch.nn.utils.vector_to_parameters(theta, model.parameters())

    def grad(x, y):
        loss = torch.nn.functional.cross_entropy(model(x[None]), y[None])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])

    gt = grad(d.X_test[0], d.y_test[0])
    return torch.stack([grad(x, y) @ gt for x, y in zip(d.X_train, d.y_train)])[None]


def test_tracin_with_your_model_needs_checkpoints(files, tmp_path, capsys):  # noqa: F811
    base = ["explain", "--train", files / "data.npz", "--model", files / "lr_ts.pt", "--weight-decay", "0.01",
            "--method", "tracin", "--json", "-q", "--top-k", "2"]
    code, _, err = run(base, capsys)
    assert code == 2 and "--checkpoints PATH" in err and len(err.strip().splitlines()) == 1

    # checkpoints of "a training run": the trained weights and a perturbed copy, saved three ways
    state = torch.load(files / "lr_sd.pt", weights_only=True)
    other = {k: v + 0.1 for k, v in state.items()}
    (tmp_path / "ck").mkdir()
    torch.save(state, tmp_path / "ck" / "epoch_1.pt")
    torch.save(other, tmp_path / "ck" / "epoch_2.pt")
    rec = CheckpointRecorder()
    for sd, lr in ((state, 0.5), (other, 0.25)):
        model = torch.nn.Linear(4, 3, dtype=torch.float64)
        model.load_state_dict(sd)
        rec.record(model, lr=lr)
    rec.save(tmp_path / "run.pt")

    Xs = zoo.load("iris")
    net = torch.nn.Linear(4, 3, dtype=torch.float64)
    net.load_state_dict(state)
    obj = whybox.Objective(net, "cross_entropy", Xs.X_train, Xs.y_train, weight_decay=0.01)
    x, y = Xs.X_test[:1], Xs.y_test[:1]
    for path, rates in ((tmp_path / "ck", (1.0, 1.0)), (tmp_path / "ck" / "epoch_*.pt", (1.0, 1.0)),
                        (tmp_path / "run.pt", (0.5, 0.25))):
        code, out, err = run([*base, "--checkpoints", path, "--test-index", "0"], capsys)
        assert code == 0, err
        doc = json.loads(out)
        expected = (rates[0] * obj.grads(x, y) @ obj.grads().T
                    + rates[1] * obj.with_theta(torch.cat([v.reshape(-1) for v in other.values()])).grads(x, y)
                    @ obj.with_theta(torch.cat([v.reshape(-1) for v in other.values()])).grads().T)[0]
        top = [row["index"] for row in doc["helpful"]]
        assert top == torch.argsort(expected, descending=True)[:2].tolist(), path
        np.testing.assert_allclose([row["score"] for row in doc["helpful"]], expected[top].numpy(), rtol=1e-8)

    code, _, err = run([*base, "--checkpoints", tmp_path / "nothing_*.pt"], capsys)
    assert code == 2 and "no checkpoint files match" in err
    code, _, err = run([*base[:7], "--method", "influence", "--checkpoints", tmp_path / "run.pt", "-q"], capsys)
    assert code == 2 and "--checkpoints" in err and "tracin only" in err
