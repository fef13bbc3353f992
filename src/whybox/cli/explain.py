"""``whybox explain``: the main job — why did the model get this test point wrong?

With no arguments it trains L2 logistic regression on the embedded digits and explains a
misclassified test point. With ``--train`` it explains the user's own model on the user's data;
``--method FILE.py:CLASS`` scores with the user's own ``whybox.Attributor``. Options fill the
settings dataclasses of ``whybox.study`` (their help is the options' help).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from whybox.cli._app import BadInput, app
from whybox.curvature import SOLVERS
from whybox.objective import CURVATURES
from whybox.settings import help_of
from whybox.study import DataSettings, MethodSettings, ModelSettings

SKLEARN_KINDS = ("logistic", "svm", "ridge")


@app.command()
def explain(
    dataset: str = typer.Option("digits", help=help_of(DataSettings, "dataset")),
    train: Path | None = typer.Option(None, "--train", help=help_of(DataSettings, "train")),
    test: Path | None = typer.Option(None, "--test", help=help_of(DataSettings, "test")),
    label_column: str = typer.Option("label", help=help_of(DataSettings, "label_column")),
    model: Path | None = typer.Option(None, "--model", help=help_of(ModelSettings, "model")),
    model_code: Path | None = typer.Option(None, "--model-code", help=help_of(ModelSettings, "model_code")),
    model_name: str | None = typer.Option(None, "--model-name", help=help_of(ModelSettings, "model_name")),
    sklearn: str | None = typer.Option(None, "--sklearn", help=help_of(ModelSettings, "sklearn")),
    C: float = typer.Option(1.0, "--C", help=help_of(ModelSettings, "C")),
    standardize: bool = typer.Option(False, "--standardize", help=help_of(DataSettings, "standardize")),
    test_fraction: float = typer.Option(0.2, help=help_of(DataSettings, "test_fraction")),
    loss: str | None = typer.Option(None, "--loss", help=help_of(ModelSettings, "loss")),
    weight_decay: float | None = typer.Option(None, help=help_of(ModelSettings, "weight_decay")),
    params: list[str] | None = typer.Option(None, "--params", help=help_of(ModelSettings, "params") + " Repeatable."),
    class_order: str | None = typer.Option(None, "--class-order", help=help_of(ModelSettings, "class_order") + " Comma-separated, e.g. cat,dog,bird."),
    method: str = typer.Option("influence", "--method", help=help_of(MethodSettings, "method")),
    solver: str = typer.Option("auto", help=help_of(MethodSettings, "solver")),
    damping: float = typer.Option(0.0, help=help_of(MethodSettings, "damping")),
    curvature: str = typer.Option("hessian", help=help_of(MethodSettings, "curvature")),
    projection_dim: int = typer.Option(32, help=help_of(MethodSettings, "projection_dim")),
    ekfac_rank_tolerance: float = typer.Option(1e-2, help=help_of(MethodSettings, "ekfac_rank_tolerance")),
    checkpoints: Path | None = typer.Option(None, "--checkpoints", help=help_of(MethodSettings, "checkpoints")),
    test_index: int | None = typer.Option(None, help="Test point to explain (default: the first misclassified one)."),
    top_k: int = typer.Option(5, help="How many helpful and harmful training points to list."),
    n_test: int = typer.Option(8, help="Test points in the report's chooser and in --out files."),
    validate: int = typer.Option(0, help="With --report or --out: retrain without each of the N highest-|score| training points of the first test point and compare."),
    report: Path | None = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
    out: Path | None = typer.Option(None, "--out", help="Write explanations.json, scores.csv and self_scores.csv into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON on stdout (for scripts)."),
    store: Path | None = typer.Option(None, "--store", help="Also write every test point's scores against every training point to this zarr store (chunked; rerun the same command to resume an interrupted run)."),
    workers: int = typer.Option(0, "--workers", help="With --store: score on a local Dask cluster of N worker processes (0: in this process)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="With --store: join a running dask.distributed scheduler at this address (e.g. tcp://host:8786)."),
    device: str = typer.Option("cpu", help=help_of(ModelSettings, "device")),
    float32: bool = typer.Option(False, "--float32", help="Keep your model in float32 (default: float64, for accurate influence)."),
    seed: int = typer.Option(0, help=help_of(DataSettings, "seed")),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Explain a prediction through the training data: list the training points that helped and hurt
    it most, optionally as an HTML report and JSON/CSV files.

    With no arguments: L2 logistic regression on the embedded digits, first misclassified test point.
    """
    _check_options(top_k, n_test, validate, sklearn, solver, damping, curvature, report, out, projection_dim)
    if not 0 <= ekfac_rank_tolerance < 1:
        raise BadInput(f"--ekfac-rank-tolerance must be in [0, 1) (0: exact dense scoring), got {ekfac_rank_tolerance}")
    _check_store_options(store, workers, scheduler)
    settings = (
        DataSettings(dataset, train, test, label_column, test_fraction, standardize, seed),
        ModelSettings(model, model_code, model_name, sklearn, C, loss, weight_decay, params,
                      class_order.split(",") if class_order else None, device, not float32),
        MethodSettings(method, solver, damping, curvature, projection_dim, ekfac_rank_tolerance, checkpoints),
    )
    try:
        _explain(settings, test_index, top_k, n_test, validate, report, out, as_json, quiet, (store, workers, scheduler))
    except FileNotFoundError as err:
        raise BadInput(str(err)) from None
    except (OSError, RuntimeError) as err:  # unwritable paths, a user model failing inside torch
        from whybox.io import one_line

        raise BadInput(one_line(err)) from None


def _explain(settings, test_index, top_k, n_test, validate, report, out, as_json, quiet, store_options) -> None:
    from tqdm.auto import tqdm

    from whybox.report.writers import explanation_dict, print_explanation, write_outputs
    from whybox.study import load_study

    with warnings.catch_warnings(), tqdm(total=3 + (store_options[0] is not None), desc="whybox explain", disable=quiet, leave=False, unit="step") as stages:
        if quiet:
            warnings.simplefilter("ignore")
        stages.set_description("loading data, model and method")
        study = load_study(*settings)
        stages.update()
        n_points = len(study.X_test)
        if test_index is not None and not 0 <= test_index < n_points:
            raise BadInput(f"--test-index must be in [0, {n_points}), got {test_index}")
        chosen = study.default_test_indices(max(n_test, 1))
        if test_index is not None:
            chosen = [test_index] + [i for i in chosen if i != test_index][: n_test - 1]
        stages.set_description("explaining")
        explanations = study.explain(chosen, top_k, progress=not quiet)
        stages.update()
        stages.set_description("report and files")
        if report is not None or out is not None:
            from whybox.report import build_report, write_report

            data = build_report(study, chosen, top_k=top_k, validate=validate, progress=not quiet)
            if report is not None:
                write_report(report, data)
            if out is not None:
                write_outputs(out, data.explanations, study, data.validation)
        stages.update()
        store = store_options[0]
        if store is not None:
            stages.set_description("score store")
            _write_store(study, *store_options, quiet)
    if as_json:
        typer.echo(json.dumps(explanation_dict(explanations[0]), indent=1))
    else:
        print_explanation(explanations[0], study.class_names)
        for path in ([report] if report else []) + ([out] if out else []) + ([store] if store else []):
            typer.echo(f"wrote {path}")


def _write_store(study, path: Path, workers: int, scheduler: str | None, quiet: bool) -> None:
    """The whole [test × train] score matrix into a resumable zarr store, here or on a Dask cluster."""
    from whybox.engine import score_to_store

    where = scheduler or ("distributed" if workers else None)
    score_to_store(study.attributor, study.X_test, study.y_test, path, scheduler=where, workers=max(workers, 1),
                   progress=not quiet)


def _check_store_options(store: Path | None, workers: int, scheduler: str | None) -> None:
    if workers < 0:
        raise BadInput(f"--workers must be >= 0, got {workers}")
    if (workers or scheduler) and store is None:
        raise BadInput("--workers and --scheduler run the --store computation: add --store DIR.zarr")
    if workers and scheduler:
        raise BadInput("give either --workers N (start a local cluster) or --scheduler ADDRESS (join one), not both")
    if scheduler is not None and "://" not in scheduler:
        raise BadInput(f"--scheduler takes an address like tcp://host:8786, got {scheduler!r}")


def _check_options(top_k: int, n_test: int, validate: int, sklearn: str | None, solver: str, damping: float,
                   curvature: str, report, out, projection_dim: int) -> None:
    if top_k < 1:
        raise BadInput(f"--top-k must be >= 1, got {top_k}")
    if n_test < 1:
        raise BadInput(f"--n-test must be >= 1, got {n_test}")
    if validate < 0:
        raise BadInput(f"--validate must be >= 0, got {validate}")
    if validate and report is None and out is None:
        raise BadInput("--validate N shows its result in the report or the --out files: add --report FILE.html or --out DIR")
    if sklearn is not None and sklearn not in SKLEARN_KINDS:
        raise BadInput(f"--sklearn must be one of {', '.join(SKLEARN_KINDS)}, got {sklearn!r}")
    if solver not in ("auto", *SOLVERS):
        raise BadInput(f"--solver must be one of auto, {', '.join(SOLVERS)}; got {solver!r}")
    if not damping >= 0:
        raise BadInput(f"--damping must be >= 0, got {damping}")
    if curvature not in CURVATURES:
        raise BadInput(f"--curvature must be one of {', '.join(CURVATURES)}; got {curvature!r}")
    if projection_dim < 1:
        raise BadInput(f"--projection-dim must be >= 1, got {projection_dim}")
    if report is not None and Path(report).suffix.lower() not in (".html", ".htm"):
        raise BadInput(f"--report should name an .html file, got {str(report)!r}")
