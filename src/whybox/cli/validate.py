"""``whybox validate``: influence against actual leave-one-out retraining, as a table."""

from __future__ import annotations

import typer

from whybox.cli._app import app


@app.command()
def validate(
    model: str = typer.Option("lr", help="Reference model on digits: lr (logistic regression) or mlp (64-32-10 tanh)."),
    tests: int = typer.Option(3, help="How many test points (those with the highest loss)."),
    top_k: int = typer.Option(30, help="Most influential training points per test point (by |up_loss|)."),
    random_k: int = typer.Option(30, help="Random training points per test point."),
    weight_decay: float = typer.Option(0.01, help="L2 weight decay."),
    damping: float = typer.Option(0.0, help="Hessian damping (the MLP needs some, e.g. 0.01)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Train a reference model on digits, predict leave-one-out changes of the test loss with
    influence (order 1 and order 2), retrain without each point, and print Pearson/Spearman."""
    from rich.console import Console
    from rich.table import Table
    from tqdm.auto import tqdm

    import whybox
    from whybox import zoo
    from whybox.evaluation import validate as run_validation

    if model not in ("lr", "mlp"):
        raise ValueError(f"unknown model {model!r}; choose lr or mlp")
    if min(tests, top_k) < 1 or random_k < 0:
        raise ValueError("tests and top-k must be >= 1, random-k >= 0")
    d = zoo.load("digits")
    n_points = min(tests, len(d.X_test))
    # one bar over the whole run (closed, by the with, before any error line is printed): train, fit, then
    # one step per test point, whose leave-one-out retrainings show their own bars underneath
    with tqdm(total=2 + n_points, desc="whybox validate", unit="step", leave=False, disable=quiet) as bar:
        bar.set_postfix_str("training the reference model")
        net = zoo.logistic_regression(64, 10) if model == "lr" else zoo.mlp(64, 10, hidden=(32,))
        obj, res = zoo.train(net, "cross_entropy", d.X_train, d.y_train, weight_decay=weight_decay)
        bar.update()
        bar.set_postfix_str("fitting influence")
        inf = whybox.InfluenceFunction(obj, whybox.Exact(damping=damping)).fit()
        bar.update()
        worst = obj.losses(d.X_test, d.y_test).topk(n_points).indices.tolist()
        rows = []
        for k, j in enumerate(worst):
            bar.set_postfix_str(f"test point {k + 1}/{n_points}: retraining")
            rows += run_validation(inf, d.X_test, d.y_test, [j], top_k=top_k, random_k=random_k, progress=not quiet)
            bar.update()
    console = Console()
    console.print(f"digits {model}: n={obj.n}, p={obj.p}, ‖∇R(θ̂)‖={res.grad_norm:.1e}, solver {inf.curvature!r}")
    table = Table(title="predicted vs actual leave-one-out change of the test loss")
    for col in ("test point", "points", "order", "Pearson", "Spearman", "max |actual|"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.test_index), f"{r.subset} {r.k}", str(r.order), f"{r.pearson:.4f}", f"{r.spearman:.4f}", f"{r.max_abs_actual:.3g}")
    console.print(table)
