"""Influence for a scikit-learn model, no PyTorch code: the adapter builds the equivalent module.

scikit-learn minimises C·Σ loss + ½‖w‖²; whybox's R(θ) = mean loss + (w/2)‖θ‖² with w = 1/(C·n).
We check the prediction against scikit-learn's own refit without each point.

    PYTHONPATH=src python examples/sklearn_adapter.py
"""

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import whybox
from whybox.adapters import from_sklearn

X, y = load_breast_cancer(return_X_y=True)
X = StandardScaler().fit_transform(X)[:, :10]
X_train, y_train, x_test, y_test = X[:200], y[:200], X[300:301], y[300:301]

clf = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X_train, y_train)
obj, adapted = from_sklearn(clf, X_train, y_train)             # weight_decay = 1/(0.5·200)
print(f"weight decay {adapted.weight_decay:g}, ‖∇R(θ_sklearn)‖ = {obj.risk_grad().norm():.1e}")

inf = whybox.InfluenceFunction(obj).fit()
predicted = inf.removal_effect(x_test, adapted.encode(y_test), None)[0].numpy()


def test_loss(model):
    return -np.log(model.predict_proba(x_test)[0, y_test[0]])


print(f"{'train':>6} {'predicted':>11} {'sklearn refit':>14}")
for i in np.argsort(-np.abs(predicted))[:5]:
    keep = np.arange(len(X_train)) != i
    refit = LogisticRegression(C=0.5, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X_train[keep], y_train[keep])
    print(f"{i:>6} {predicted[i]:>+11.3e} {test_loss(refit) - test_loss(clf):>+14.3e}")
