"""scikit-learn adapters: same decision function, a stationary point of whybox's R(θ), and influence
that predicts scikit-learn's own leave-one-out refits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.svm import LinearSVC

import whybox
from whybox import adapters, zoo


@pytest.fixture(scope="module")
def small():
    d = zoo.load("breast_cancer")
    X, y = d.X_train.numpy()[:150, :8], d.y_train.numpy()[:150]
    w = zoo.load("wine")
    return X, y, w.X_train.numpy(), w.y_train.numpy()


@pytest.mark.parametrize("kind", ["logistic", "svm", "ridge"])
@pytest.mark.parametrize("multiclass", [False, True])
def test_module_reproduces_decision_function_at_a_stationary_point(small, kind, multiclass):
    X, y, Xm, ym = small
    if multiclass:
        X, y = Xm, ym
    est = adapters.fit_sklearn(kind, X, y, C=0.5)
    obj, adapted = adapters.from_sklearn(est, X, y)
    want = est.predict(X) if kind == "ridge" else est.decision_function(X)
    got = obj.outputs(obj.X).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # weight_decay = 1/(C n): sklearn's optimum is whybox's optimum (gradient of R vanishes)
    assert adapted.weight_decay == pytest.approx(1 / (0.5 * len(X)))
    assert obj.risk_grad().norm().item() < 1e-6


def test_influence_predicts_sklearn_leave_one_out_refits(small):
    X, y, _, _ = small
    C = 0.5
    est = LogisticRegression(C=C, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X, y)
    obj, adapted = adapters.from_sklearn(est, X, y)
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
    x_test, y_test = X[:1] * 0.9, y[:1]
    pred = inf.removal_effect(x_test, adapted.encode(y_test), None)[0].numpy()
    top = np.argsort(-np.abs(pred))[:8]

    def test_loss(model):
        p = model.predict_proba(x_test)[0, int(y_test[0])]
        return -np.log(p)

    base = test_loss(est)
    actual = []
    for i in top:
        keep = np.arange(len(X)) != i
        # sklearn's C·Σloss + ½‖w‖² on n−1 points with the same C: exactly whybox's removal
        refit = LogisticRegression(C=C, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X[keep], y[keep])
        actual.append(test_loss(refit) - base)
    actual = np.array(actual)
    assert stats.pearsonr(pred[top], actual)[0] > 0.98
    np.testing.assert_allclose(pred[top], actual, rtol=0.25, atol=0.05 * np.abs(actual).max())


def test_liblinear_and_svm_keep_the_intercept_as_a_parameter(small):
    X, y, _, _ = small
    est = LinearSVC(C=0.3, tol=1e-10, max_iter=100_000, dual=False).fit(X, y)
    obj, _ = adapters.from_sklearn(est, X, y)
    assert obj.p == X.shape[1] + 1  # coefficients + penalised intercept
    lr = LogisticRegression(C=0.3).fit(X, y)
    assert adapters.from_sklearn(lr, X, y)[0].p == X.shape[1]  # intercept held fixed (unpenalised)


def test_hinge_svm_is_explained_with_smooth_hinge_and_warns(small):
    X, y, _, _ = small
    est = LinearSVC(C=0.3, loss="hinge", dual=True, max_iter=100_000, tol=1e-8).fit(X, y)
    with pytest.warns(RuntimeWarning, match="SmoothHinge"):
        obj, adapted = adapters.from_sklearn(est, X, y)
    assert "SmoothHinge" in adapted.note
    np.testing.assert_allclose(obj.outputs(obj.X).detach().numpy(), est.decision_function(X), atol=1e-10)


def test_string_labels_are_encoded_by_classes(small):
    X, y, _, _ = small
    names = np.array(["benign", "malignant"])[y]
    est = LogisticRegression(C=1.0).fit(X, names)
    obj, adapted = adapters.from_sklearn(est, X, names)
    assert adapted.encode(["malignant", "benign"]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="not among the model's classes"):
        adapted.encode(["cat"])


def test_bad_estimators_are_refused(small):
    X, y, _, _ = small
    with pytest.raises(ValueError, match="not fitted"):
        adapters.from_sklearn(LogisticRegression(), X, y)
    with pytest.raises(ValueError, match="L2"):
        adapters.from_sklearn(LogisticRegression(l1_ratio=1.0, solver="saga", max_iter=50).fit(X, y), X, y)
    with pytest.raises(ValueError, match="class_weight"):
        adapters.from_sklearn(LogisticRegression(class_weight="balanced").fit(X, y), X, y)
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier().fit(X, y)
    tree.coef_ = np.zeros((1, X.shape[1]))  # looks fitted, still unsupported
    tree.intercept_ = np.zeros(1)
    with pytest.raises(TypeError, match="unsupported estimator"):
        adapters.from_sklearn(tree, X, y)
    with pytest.raises(ValueError, match="features"):
        adapters.from_sklearn(Ridge(alpha=1.0).fit(X, y), X[:, :3], y)
    with pytest.raises(ValueError, match="C must be"):
        adapters.fit_sklearn("logistic", X, y, C=0.0)
