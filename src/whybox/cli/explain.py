"""``whybox explain``: the main job — why did the model get this test point wrong?

With no arguments it trains L2 logistic regression on the embedded digits and explains a
misclassified test point. With ``--train`` it explains the user's own model on the user's data.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import typer

from whybox.cli._app import BadInput, app

SKLEARN_KINDS = ("logistic", "svm", "ridge")


@app.command()
def explain(
    dataset: str = typer.Option("digits", help="Embedded data set (when no --train): digits, iris, breast_cancer, wine."),
    train: Optional[Path] = typer.Option(None, "--train", help="Your training data: .npz (X, y[, X_test, y_test]), .csv (header + label column) or a folder root/<class>/<images>."),
    test: Optional[Path] = typer.Option(None, "--test", help="Your test data, same format as --train."),
    label_column: str = typer.Option("label", help="CSV column with the labels."),
    model: Optional[Path] = typer.Option(None, "--model", help="Your trained model: a TorchScript file, or a state-dict checkpoint with --model-code."),
    model_code: Optional[Path] = typer.Option(None, "--model-code", help="Python file that builds the model for a state-dict checkpoint (loaded with weights_only=True)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Class or function in --model-code that builds the model (default: build_model, or the only nn.Module class)."),
    sklearn: Optional[str] = typer.Option(None, "--sklearn", help="Instead of --model: fit this scikit-learn model on --train (logistic, svm or ridge)."),
    C: float = typer.Option(1.0, "--C", help="Inverse regularisation of the --sklearn model (weight_decay = 1/(C·n))."),
    standardize: bool = typer.Option(False, "--standardize", help="Standardise features on the training part (with --sklearn)."),
    test_fraction: float = typer.Option(0.2, help="With --sklearn and no test data: the fraction held out as test points."),
    loss: Optional[str] = typer.Option(None, "--loss", help="Per-example loss of your model: cross_entropy, logistic, squared_error, hinge, smooth_hinge (default: from the labels and outputs)."),
    weight_decay: Optional[float] = typer.Option(None, help="L2 weight decay w in R(θ) = mean loss + (w/2)‖θ‖² (default 0.01 for embedded data, 0 for your model)."),
    params: Optional[list[str]] = typer.Option(None, "--params", help="Explain only these parameters (names or prefixes, e.g. 'fc.'); repeatable."),
    solver: str = typer.Option("exact", help="Inverse-HVP solver: exact, cg or lissa."),
    damping: float = typer.Option(0.0, help="Added to the Hessian's diagonal (needed for non-convex models)."),
    test_index: Optional[int] = typer.Option(None, help="Test point to explain (default: the first misclassified one)."),
    top_k: int = typer.Option(5, help="How many helpful and harmful training points to list."),
    n_test: int = typer.Option(8, help="Test points in the report's chooser and in --out files."),
    validate: int = typer.Option(0, help="Retrain without each of the N most influential training points of the first test point and compare (report)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write explanations.json, influence.csv and self_influence.csv into this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON on stdout (for scripts)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    float32: bool = typer.Option(False, "--float32", help="Keep your model in float32 (default: float64, for accurate influence)."),
    seed: int = typer.Option(0, help="Seed of the train/test split."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Explain a prediction through the training data: list the training points that helped and hurt
    it most (influence functions), optionally as an HTML report and JSON/CSV files.

    With no arguments: L2 logistic regression on the embedded digits, first misclassified test point.
    """
    try:
        _explain(**locals())
    except (OSError, RuntimeError) as err:  # unwritable paths, a user model failing inside torch
        from whybox.io import one_line

        raise BadInput(one_line(err)) from None


def _explain(dataset, train, test, label_column, model, model_code, model_name, sklearn, C, standardize,
             test_fraction, loss, weight_decay, params, solver, damping, test_index, top_k, n_test, validate,
             report, out, as_json, device, float32, seed, quiet) -> None:
    from tqdm.auto import tqdm

    from whybox.explain import default_study, print_explanation, write_outputs

    _check_options(top_k, n_test, validate, sklearn, solver, damping, report)
    progress = not quiet
    stages = tqdm(total=4, desc="whybox explain", disable=quiet, leave=False, unit="step")
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        stages.set_description("loading data, model, solver")
        if train is None:
            if any(v is not None for v in (test, model, model_code, sklearn)):
                raise BadInput("--test/--model/--model-code/--sklearn need your training data: add --train FILE")
            study = default_study(dataset, 0.01 if weight_decay is None else weight_decay, solver, damping, seed)
        else:
            from whybox.io import load_study

            study = load_study(
                train, test, model, model_code, model_name, sklearn, C, loss, weight_decay, solver, damping,
                label_column, test_fraction, standardize, device, not float32, params, seed, progress,
            )
        stages.update()
        stages.set_description("explaining")
        n_points = len(study.X_test)
        if test_index is not None and not 0 <= test_index < n_points:
            raise BadInput(f"--test-index must be in [0, {n_points}), got {test_index}")
        chosen = study.default_test_indices(max(n_test, 1))
        if test_index is not None:
            chosen = [test_index] + [i for i in chosen if i != test_index][: n_test - 1]
        explanations = study.explain(chosen, top_k, progress=progress)
        stages.update()
        stages.set_description("report")
        data = None
        if report is not None or out is not None:
            from whybox.report import build_report, write_report

            data = build_report(study, chosen, top_k=top_k, validate=validate, progress=progress)
            if report is not None:
                write_report(report, data)
        stages.update()
        if out is not None:
            write_outputs(out, explanations, study, data)
        stages.update()
    stages.close()
    if as_json:
        from whybox.explain import explanation_dict

        typer.echo(json.dumps(explanation_dict(explanations[0]), indent=1))
    else:
        print_explanation(explanations[0])
        for path in ([report] if report else []) + ([out] if out else []):
            typer.echo(f"wrote {path}")


def _check_options(top_k: int, n_test: int, validate: int, sklearn: Optional[str], solver: str, damping: float, report) -> None:
    if top_k < 1:
        raise BadInput(f"--top-k must be >= 1, got {top_k}")
    if n_test < 1:
        raise BadInput(f"--n-test must be >= 1, got {n_test}")
    if validate < 0:
        raise BadInput(f"--validate must be >= 0, got {validate}")
    if sklearn is not None and sklearn not in SKLEARN_KINDS:
        raise BadInput(f"--sklearn must be one of {', '.join(SKLEARN_KINDS)}, got {sklearn!r}")
    if solver not in ("exact", "cg", "lissa"):
        raise BadInput(f"--solver must be exact, cg or lissa, got {solver!r}")
    if not damping >= 0:
        raise BadInput(f"--damping must be >= 0, got {damping}")
    if report is not None and Path(report).suffix.lower() not in (".html", ".htm"):
        raise BadInput(f"--report should name an .html file, got {str(report)!r}")
