"""Quickstart: which training points made a model predict what it did?

    PYTHONPATH=src python examples/quickstart.py
"""

import whybox
from whybox import zoo

d = zoo.load("iris")                                           # embedded, standardised, n = 105
model = zoo.logistic_regression(d.n_features, d.n_classes)     # nn.Linear, float64
obj, trained = zoo.train(model, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01, tol=1e-9)
print(f"trained to ‖∇R‖ = {trained.grad_norm:.1e}")

inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
x, y = d.X_test[:1], d.y_test[:1]
effect = inf.removal_effect(x, y, None)[0]                     # [n]: > 0 = removing it raises the test loss = helpful
order = effect.argsort(descending=True)
print("most helpful :", [(int(i), f"{effect[i]:+.2e}") for i in order[:3]])
print("most harmful :", [(int(i), f"{effect[i]:+.2e}") for i in order[-3:].flip(0)])

# check the most helpful one against actually retraining without it
i = int(order[0])
theta = zoo.retrain(obj, remove=[i], tol=1e-9).theta
actual = (obj.losses(x, y, theta=theta) - obj.losses(x, y))[0]
print(f"point {i}: predicted {effect[i]:+.3e}, actual after retraining {actual:+.3e}")
