"""``whybox explain``: the main job — why did the model get this test point wrong?"""

from __future__ import annotations

from typing import Optional

import typer

from whybox.cli._app import app


@app.command()
def explain(
    dataset: str = typer.Option("digits", help="Embedded data set: digits, iris, breast_cancer, wine."),
    weight_decay: float = typer.Option(0.01, help="L2 weight decay w in R(θ) = mean loss + (w/2)‖θ‖²."),
    solver: str = typer.Option("exact", help="Inverse-HVP solver: exact, cg or lissa."),
    damping: float = typer.Option(0.0, help="Added to the Hessian's diagonal (needed for non-convex models)."),
    test_index: Optional[int] = typer.Option(None, help="Test point to explain (default: the first misclassified one)."),
    top_k: int = typer.Option(5, help="How many helpful and harmful training points to list."),
    seed: int = typer.Option(0, help="Seed of the train/test split."),
) -> None:
    """Train L2 logistic regression on embedded data, pick a misclassified test point and list the
    training points that helped and hurt its prediction most."""
    from whybox.explain import explain_default, print_explanation

    result = explain_default(dataset, weight_decay, solver, damping, test_index, top_k, seed)
    print_explanation(result)
