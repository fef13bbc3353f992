"""``whybox benchmark``: every attributor against retraining on the same tasks, as one table."""

from __future__ import annotations

import typer

from whybox.cli._app import BadInput, app


@app.command()
def benchmark(
    tasks: list[str] = typer.Option(["digits_lr", "iris_mlp"], "--task", help="Tasks (repeatable): digits_lr, iris_mlp, digits_mlp, digits_cnn."),
    methods: list[str] | None = typer.Option(None, "--method", help="Attributors (repeatable; default: every built-in method): built-in names, influence:SOLVER (e.g. influence:arnoldi), tracin."),
    n_test: int = typer.Option(3, help="Highest-loss test points per task."),
    top_k: int = typer.Option(20, help="Leave-one-out points: the reference influence's top-k by |score|."),
    random_k: int = typer.Option(20, help="Leave-one-out points: k random training points."),
    lds_subsets: int = typer.Option(20, help="Random subsets retrained for the linear datamodeling score."),
    cache: str = typer.Option("whybox-out/cache", help="Folder caching every retraining (the table regenerates in seconds)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Rank attributors against retraining: leave-one-out correlation (top and random points), linear
    datamodeling score and mislabel-detection AUC, with fit and score time, one row per task × method."""
    from whybox.evaluation.benchmark import TASKS, BenchmarkSettings, check_methods, run_benchmark
    from whybox.study import METHODS
    from whybox.utils import machine_info, markdown_table

    methods = methods or sorted(METHODS)
    bad = [t for t in tasks if t not in TASKS] + check_methods(methods)
    if bad:
        raise BadInput(f"unknown --task/--method {bad}; tasks: {sorted(TASKS)}, methods: {sorted(METHODS)}, "
                       "influence:SOLVER (SOLVER: a --solver name), tracin")
    if min(n_test, top_k, random_k) < 1 or lds_subsets < 3:
        raise BadInput("--n-test, --top-k, --random-k must be >= 1 and --lds-subsets >= 3")

    settings = BenchmarkSettings(tasks=tasks, methods=methods, n_test=n_test, top_k=top_k, random_k=random_k,
                                 lds_subsets=lds_subsets, cache=cache)
    rows = run_benchmark(settings, progress=not quiet)
    typer.echo(machine_info())
    typer.echo("attributors against retraining (higher is better; times in seconds)")
    typer.echo(markdown_table(rows, ".3f"))
