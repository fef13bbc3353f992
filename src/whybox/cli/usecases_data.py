"""``whybox mislabeled`` and ``whybox mismatch``: the paper's §5.4 and §5.3 use cases."""

from __future__ import annotations

from pathlib import Path

import typer

from whybox.applications.mislabeled import PROBLEMS, RANKINGS, MislabeledSettings
from whybox.applications.mismatch import MismatchSettings
from whybox.cli._app import BadInput, app
from whybox.settings import help_of
from whybox.study import MethodSettings
from whybox.zoo.populations import ReadmissionConfig


def _floats(text: str, what: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInput(f"--{what} must be comma-separated numbers like 0,0.1,0.2; got {text!r}") from None
    if any(not 0 <= v <= 1 for v in vals):
        raise BadInput(f"--{what} values must lie in [0, 1]; got {text!r}")
    return vals


@app.command()
def mislabeled(
    dataset: str = typer.Option("digits", help=" | ".join(PROBLEMS) + " (L2 logistic regression on an embedded set; digits_mlp: a tanh MLP; spam: synthetic bag of words; mnist: pip install whybox[mnist])."),
    repeats: int = typer.Option(10, help=help_of(MislabeledSettings, "repeats")),
    flip: float = typer.Option(0.1, help=help_of(MislabeledSettings, "flip_fraction")),
    weight_decay: float = typer.Option(0.01, help="L2 weight decay w in mean loss + (w/2)‖θ‖²."),
    rankings: str = typer.Option(
        "self_influence,influence_loo,train_loss,cv_loss,cleanlab,random",
        help="Comma-separated: self_influence, influence_loo, train_loss, cv_loss, trusted, cleanlab, random."),
    acc_fractions: str = typer.Option("0,0.05,0.1,0.15,0.2,0.25,0.3",
                                      help="Fractions checked at which to fix, retrain and measure test accuracy ('' = skip)."),
    n_trusted: int = typer.Option(0, help="Take this many clean test points as a trusted set (enables 'trusted')."),
    method: str = typer.Option("influence", "--method", help=help_of(MethodSettings, "method") + " Its self-scores drive the 'self_influence' ranking."),
    solver: str = typer.Option("auto", help=help_of(MethodSettings, "solver")),
    damping: float = typer.Option(-1.0, help="Hessian damping (default: 0.01 for digits_mlp, else 0)."),
    spam_vocab: int = typer.Option(2000, help="spam: vocabulary size (= features)."),
    spam_train: int = typer.Option(2000, help="spam: training emails."),
    seed: int = typer.Option(0, help=help_of(MislabeledSettings, "seed")),
    out: Path = typer.Option(Path("whybox-out/mislabeled"), help="Directory for the PNG, JSON and CSV."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Flip labels, rank training points for checking (self-influence, losses, cleanlab, random), fix the checked ones and retrain: paper §5.4, Fig 6."""
    from whybox.applications import method_factory
    from whybox.applications.mislabeled import fix_mislabeled, load_problem
    from whybox.report.usecases import mislabeled_table, save_mislabeled

    if dataset not in PROBLEMS:
        raise BadInput(f"unknown --dataset {dataset!r}; choose one of {', '.join(PROBLEMS)}")
    names = [r.strip() for r in rankings.split(",") if r.strip()]
    bad = [r for r in names if r not in RANKINGS]
    if bad or not names:
        raise BadInput(f"unknown --rankings {bad or rankings!r}; choose from {', '.join(RANKINGS)}")
    if "trusted" in names and n_trusted <= 0:
        raise BadInput("ranking 'trusted' needs a trusted set: add --n-trusted 50")
    if n_trusted > 0 and "trusted" not in names:
        names.append("trusted")
    if repeats < 1 or not 0 < flip < 1:
        raise BadInput("--repeats must be >= 1 and --flip in (0, 1)")
    damp = (0.01 if dataset == "digits_mlp" else 0.0) if damping < 0 else damping
    try:
        attributor = method_factory(solver, damp, method)
    except ValueError as err:
        raise BadInput(f"--solver/--method: {err}") from None
    settings = MislabeledSettings(rankings=tuple(names), flip_fraction=flip, repeats=repeats, seed=seed,
                                  acc_fractions=tuple(_floats(acc_fractions, "acc-fractions")))
    pr = load_problem(dataset, weight_decay=weight_decay, seed=0, attributor=attributor,
                      spam_options=dict(vocab=spam_vocab, n_train=spam_train))
    trusted = None
    if n_trusted > 0:
        if n_trusted >= len(pr.split.y_test) - 10:
            raise BadInput(f"--n-trusted must be below {len(pr.split.y_test) - 10} (the test split has {len(pr.split.y_test)})")
        pr, trusted = pr.hold_out_trusted(n_trusted, seed)
    res = fix_mislabeled(pr, settings, trusted=trusted, progress=progress)
    paths = save_mislabeled(res, out)
    typer.echo(f"{res.description}; {repeats} repeats, {100 * flip:g}% flipped, weight decay {weight_decay:g}; "
               f"accuracy with clean labels {res.clean_accuracy:.3f}; attributor {res.setup.get('attributor', '-')}")
    typer.echo("found@f = fraction of flipped labels among the top f checked; acc@f = test accuracy after "
               "fixing them and retraining (mean±std)")
    typer.echo(mislabeled_table(res, (0.05, 0.1, 0.2, 0.3)))
    for note in res.notes:
        typer.echo(f"note: {note}")
    best = res.best(0.1)
    typer.echo(f"most flips found at 10% checked: {best} ({res.found_at(best, 0.1)[0]:.3f})")
    typer.echo(f"wrote {paths['png']}, {paths['json']}, {paths['csv']}")


@app.command()
def mismatch(
    weight_decay: float = typer.Option(1e-5, help=help_of(MismatchSettings, "weight_decay")),
    seed: int = typer.Option(0, help=help_of(ReadmissionConfig, "seed")),
    n_train: int = typer.Option(20_000, help=help_of(ReadmissionConfig, "n_train")),
    n_test: int = typer.Option(4_000, help=help_of(ReadmissionConfig, "n_test")),
    n_children_train: int = typer.Option(24, help=help_of(ReadmissionConfig, "n_children_train")),
    n_children_test: int = typer.Option(40, help=help_of(ReadmissionConfig, "n_children_test")),
    child_rate: float = typer.Option(0.125, help=help_of(ReadmissionConfig, "child_readmit_rate")),
    removed: int = typer.Option(20, help=help_of(ReadmissionConfig, "children_removed")),
    test_index: int | None = typer.Option(None, help=help_of(MismatchSettings, "test_index")),
    out: Path = typer.Option(Path("whybox-out/mismatch"), help="Directory for mismatch.png/.json/.txt."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Generate a readmission population missing most non-readmitted children, train logistic regression and diagnose a wrongly predicted test child: paper §5.3."""
    from tqdm.auto import tqdm

    from whybox.applications.mismatch import debug_mismatch
    from whybox.report.usecases import mismatch_summary, save_mismatch
    from whybox.zoo.populations import make_readmission

    try:
        cfg = ReadmissionConfig(seed=seed, n_train=n_train, n_test=n_test, n_children_train=n_children_train,
                                n_children_test=n_children_test, child_readmit_rate=child_rate,
                                children_removed=removed)
    except ValueError as err:
        raise BadInput(str(err)) from None
    if weight_decay < 0:
        raise BadInput("--weight-decay must be >= 0")
    # one bar over the whole run, closed (by the with) before any error line is printed
    with tqdm(total=3, desc="whybox mismatch", unit="step", leave=False, disable=not progress) as bar:
        bar.set_postfix_str("generating the population")
        data = make_readmission(cfg)
        bar.update()
        bar.set_postfix_str("training logistic regression (mismatched and full population), influence")
        diag = debug_mismatch(data, MismatchSettings(weight_decay=weight_decay, test_index=test_index, seed=seed))
        bar.update()
        bar.set_postfix_str("figure and files")
        paths = save_mismatch(diag, out)
        bar.update()
    typer.echo(mismatch_summary(diag))
    typer.echo(f"generator: {cfg}")
    typer.echo(f"wrote {paths['png']}, {paths['json']}, {paths['txt']}")
