"""One test point explained by its most helpful and most harmful training points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from whybox.curvature import CG, Exact, LiSSA
from whybox.influence import InfluenceFunction

SOLVERS = {"exact": Exact, "cg": CG, "lissa": LiSSA}


def make_solver(name: str, damping: float = 0.0):
    """A solver from its CLI name."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}")
    return SOLVERS[name](damping=damping)


@dataclass
class Ranked:
    """One training point in an explanation."""

    index: int
    removal_effect: float  # test-loss change if removed and retrained (first order); > 0 = helpful
    up_loss: float  # I_up,loss; > 0 = harmful
    label: int
    prediction: int


@dataclass
class Explanation:
    """Why the model predicted what it did for one test point."""

    test_index: int
    label: int
    prediction: int
    confidence: float
    helpful: list[Ranked]
    harmful: list[Ranked]
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)


def _predict(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        p1 = torch.sigmoid(outputs.reshape(-1))
        pred = (p1 > 0.5).long()
        return pred, torch.where(pred == 1, p1, 1 - p1)
    probs = torch.softmax(outputs, dim=-1)
    conf, pred = probs.max(dim=-1)
    return pred, conf


def explain_point(influence: InfluenceFunction, X_test, y_test, test_index: int, top_k: int = 5) -> Explanation:
    """Rank all training points for test point ``test_index`` of ``(X_test, y_test)``."""
    obj = influence.objective
    X, y = obj.check_data(X_test, y_test, "test")
    if not 0 <= test_index < len(X):
        raise ValueError(f"test_index must be in [0, {len(X)}), got {test_index}")
    x, t = X[test_index : test_index + 1], y[test_index : test_index + 1]
    up = influence.up_loss(x, t)[0]
    effect = -up / obj.n
    with torch.no_grad():
        pred, conf = _predict(obj.outputs(x))
        train_pred, _ = _predict(obj.outputs(obj.X))
    k = min(top_k, obj.n)

    def rows(order: torch.Tensor) -> list[Ranked]:
        return [
            Ranked(int(i), float(effect[i]), float(up[i]), int(obj.y[i]), int(train_pred[i]))
            for i in order[:k].tolist()
        ]

    return Explanation(
        test_index=test_index,
        label=int(t.item()),
        prediction=int(pred.item()),
        confidence=float(conf.item()),
        helpful=rows(torch.argsort(effect, descending=True)),
        harmful=rows(torch.argsort(effect)),
        settings={"solver": repr(influence.curvature), "weight_decay": obj.weight_decay, "n": obj.n, "p": obj.p},
        diagnostics=dict(influence.curvature.diagnostics),
    )


def explain_default(
    dataset: str = "digits",
    weight_decay: float = 0.01,
    solver: str = "exact",
    damping: float = 0.0,
    test_index: Optional[int] = None,
    top_k: int = 5,
    seed: int = 0,
) -> Explanation:
    """Train L2 logistic regression on an embedded data set and explain a misclassified test point."""
    from whybox import zoo

    data = zoo.load(dataset, seed=seed)
    model = zoo.logistic_regression(data.n_features, data.n_classes)
    loss = "logistic" if data.n_classes == 2 else "cross_entropy"
    objective, trained = zoo.train(model, loss, data.X_train, data.y_train, weight_decay=weight_decay)
    influence = InfluenceFunction(objective, make_solver(solver, damping)).fit()
    if test_index is None:
        with torch.no_grad():
            pred, _ = _predict(objective.outputs(data.X_test))
        wrong = torch.nonzero(pred != data.y_test).reshape(-1)
        test_index = int(wrong[0]) if len(wrong) else 0
    result = explain_point(influence, data.X_test, data.y_test, test_index, top_k)
    result.settings.update(dataset=dataset, seed=seed, model="logistic regression", loss=loss,
                           train_grad_norm=trained.grad_norm)
    return result


def print_explanation(result: Explanation) -> None:
    """A one-screen summary on the terminal."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    status = "correct" if result.label == result.prediction else "WRONG"
    console.print(
        f"[bold]Test point {result.test_index}[/]: label {result.label}, predicted "
        f"{result.prediction} ({result.confidence:.1%} confidence) — {status}"
    )
    console.print(
        "removal effect = change of this test point's loss if the training point were removed and "
        "the model retrained (first order, −up_loss/n); > 0: the point helped, < 0: it hurt."
    )
    for title, rows in (("most helpful", result.helpful), ("most harmful", result.harmful)):
        table = Table(title=f"{title} training points")
        for col in ("train index", "label", "model predicts", "removal effect", "up_loss"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(str(r.index), str(r.label), str(r.prediction), f"{r.removal_effect:+.3e}", f"{r.up_loss:+.3e}")
        console.print(table)
    console.print(f"settings: {result.settings}")
    console.print(f"solver diagnostics: {result.diagnostics}")
