"""``whybox attack`` (paper §5.2) and ``whybox compare`` (paper §5.1) on the embedded digits or MNIST."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import typer

from whybox.applications.attack import AttackSettings, SweepSettings
from whybox.applications.compare import CompareSettings
from whybox.cli._app import BadInput, app
from whybox.settings import help_of


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"--pair must be two digit classes like 1,7; got {text!r}") from None
    if not (0 <= a <= 9 and 0 <= b <= 9 and a != b):
        raise BadInput(f"--pair needs two different digits in 0..9; got {text!r}")
    return a, b


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"{what} must be comma-separated integers like 1,2,10; got {text!r}") from None
    if not vals or min(vals) < 1:
        raise BadInput(f"{what} must be integers >= 1; got {text!r}")
    return vals


IMAGE_SETS = ("digits", "mnist")  # the embedded image sets of handwritten digits (mnist: pip install whybox[mnist])
# per data set: (step, epsilon, iterations, integer grid, selection, paper counting); mnist: the paper's released code
ATTACK_DEFAULTS = {"digits": (1.0, 2.0, 10, True, "score", False), "mnist": (0.02, 0.5, 100, False, "pert", True)}


def _dataset(name: str) -> str:
    if name not in IMAGE_SETS:
        raise BadInput(f"--dataset must be one of {', '.join(IMAGE_SETS)}; got {name!r}")
    return name


def _setup(pair: tuple[int, int], seed: int, pretrain_iter: int, dataset: str = "digits"):
    from whybox import zoo

    split = zoo.load(dataset, classes=pair, seed=seed)
    extractor, pre_acc = zoo.pretrained_extractor(split, pair, seed=seed, max_iter=pretrain_iter, dataset=dataset)
    return split, extractor, pre_acc


@app.command()
def attack(
    out: Path = typer.Option(Path("whybox-out/attack"), help="Directory for the PNGs and JSON."),
    dataset: str = typer.Option("digits", help=" | ".join(IMAGE_SETS) + " (mnist: 28×28, pip install whybox[mnist])."),
    pair: str = typer.Option("1,7", help="The two digit classes of the binary task."),
    models: str = typer.Option("network,logistic", help="network (frozen CNN + logistic top), logistic (on pixels), or both."),
    budgets: str = typer.Option("1,2,10", help=help_of(SweepSettings, "budgets")),
    targets: int = typer.Option(20, help="How many correctly classified test points to attack (seeded subset); 0 = all."),
    iterations: int | None = typer.Option(None, help=help_of(AttackSettings, "iterations") + " Default: 10 (digits), 100 (mnist, the paper)."),
    step: float | None = typer.Option(None, help=help_of(AttackSettings, "step") + " Default: 1 (digits), 0.02 (mnist)."),
    epsilon: float | None = typer.Option(None, help=help_of(AttackSettings, "epsilon") + " Default: 2 (digits), 0.5 (mnist)."),
    integer: bool | None = typer.Option(None, "--integer/--continuous", help=help_of(AttackSettings, "integer") + " Default: integer (digits), continuous (mnist)."),
    select: str | None = typer.Option(None, help=help_of(AttackSettings, "select") + " Default: score (digits), pert (mnist)."),
    paper_count: bool | None = typer.Option(None, "--paper-count/--each-budget", help="The paper's counting: one image = the 1st or the 2nd ranked image alone, budgets in increasing order, a flipped target not attacked again, each row = flipped with at most that many images. --each-budget: every budget run and counted on its own. Default: each-budget (digits), paper-count (mnist)."),
    multi: int = typer.Option(5, help="Also attack this many test points at once (average loss); 0 = skip."),
    multi_points: int = typer.Option(10, help="Training images perturbed in the multi-target attack."),
    pretrain_iter: int = typer.Option(100, help="L-BFGS iterations for pretraining the frozen CNN."),
    seed: int = typer.Option(0, help="Seed of the split, the networks and the target subset."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Training-set attack: perturb the most influential training images (I_pert,loss sign steps on the
    pixel grid, retraining after each) until a test prediction flips."""
    from whybox import zoo
    from whybox.applications import attack as atk
    from whybox.report.usecases import plot_attack, plot_sweep, write_json

    dataset = _dataset(dataset)
    defaults = ATTACK_DEFAULTS[dataset]
    step, epsilon, iterations, integer, select, paper_count = (
        v if v is not None else d for v, d in zip((step, epsilon, iterations, integer, select, paper_count), defaults))
    chosen = [m.strip() for m in models.split(",") if m.strip()]
    if not chosen or set(chosen) - {"network", "logistic"}:
        raise BadInput(f"--models must be network, logistic or both; got {models!r}")
    ks = _ints(budgets, "--budgets")
    if targets < 0 or multi < 0:
        raise BadInput("--targets and --multi must be >= 0")
    try:
        one = AttackSettings(step=step, epsilon=epsilon, iterations=iterations, integer=integer, select=select)
    except ValueError as err:
        raise BadInput(str(err)) from None
    sweep_settings = SweepSettings(budgets=tuple(ks), max_targets=targets or None, seed=seed, attack=one,
                                   second_try=paper_count, cumulative=paper_count)
    out.mkdir(parents=True, exist_ok=True)
    if "network" in chosen:
        split, extractor, pre_acc = _setup(_pair(pair), seed, pretrain_iter, dataset)
    else:  # no frozen network needed: skip the pretraining
        split, extractor, pre_acc = zoo.load(dataset, classes=_pair(pair), seed=seed), None, None
    grid = atk.PixelGrid.from_split(split)
    builders = {"network": lambda: zoo.frozen_network(split, extractor), "logistic": lambda: zoo.pixel_logistic(split)}
    shape = split.image_shape
    sweeps, report = {}, {"settings": dict(dataset=dataset, pair=pair, n_train=len(split.X_train), n_test=len(split.X_test),
                                           levels=[grid.low, grid.high],
                                           pretrain_accuracy_other_digits=pre_acc, seed=seed,
                                           sweep=sweep_settings.to_dict())}
    for name in chosen:
        obj, info = builders[name]()
        sweep = atk.attack_each(obj, split.X_test, split.y_test, grid, sweep_settings, progress=progress)
        sweeps[info["model"]] = sweep
        entry = {"model": info, **sweep.to_dict()}
        run = [r for k in sorted(sweep.attacks) for r in sweep.attacks[k]]
        example = next((r for r in run if r.all_flipped), run[-1])
        png = out / f"attack_{name}.png"
        plot_attack(example, split.raw_test, shape, png,
                    labels=[split.class_names[int(split.y_test[t])] for t in example.targets],
                    title=f"{info['model']}: {len(example.train_indices)} image(s) perturbed")
        entry["example_png"] = str(png)
        if multi:
            many = sweep.targets[:multi]
            multi_settings = replace(one, n_points=multi_points, stop_when_flipped=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = atk.attack(obj, split.X_test, split.y_test, many, grid, multi_settings)
            png_m = out / f"attack_{name}_multi.png"
            plot_attack(r, split.raw_test, shape, png_m, title=f"{info['model']}: {multi} targets at once")
            entry["multi"] = {**r.to_dict(), "settings": multi_settings.to_dict(), "png": str(png_m)}
        report[name] = entry
    plot_sweep(sweeps, out / "flip_rate.png")
    write_json(out / "attack.json", report)
    _print_attack(report, chosen, out)


def _print_attack(report: dict, chosen: list[str], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    s, a = report["settings"], report["settings"]["sweep"]["attack"]
    grid = "integer grid" if a["integer"] else "continuous levels"
    con.print(f"[bold]Training-set attack[/] on {s['dataset']} {s['pair']} (n = {s['n_train']} train, {s['n_test']} test): "
              f"α = {a['step']} level, L∞ ≤ {a['epsilon']} levels, {grid} {s['levels'][0]:g}..{s['levels'][1]:g}, "
              f"≤ {a['iterations']} steps, images picked by {a['select']}")
    sweep = report["settings"]["sweep"]
    how = ("the paper's counting: 1 image = the 1st or 2nd alone, a row = flipped with at most that many"
           if sweep["cumulative"] and sweep["second_try"] else "each budget on its own")
    table = Table(title=f"flip rate per budget (each target attacked on its own; {how}; L∞, L2, accuracy and steps "
                        "over the attacks run with that many images)")
    for col in ("model", "images", "flipped", "rate", "attacks", "L∞", "L2", "acc others before→after", "steps", "s"):
        table.add_column(col, justify="right")
    for name in chosen:
        e = report[name]
        for r in e["rows"]:
            table.add_row(name, str(r["n_points"]), f"{r['flipped']}/{r['targets']}", f"{r['flip_rate']:.0%}", str(r["attacked"]),
                          f"{r['mean_linf']:.2f}", f"{r['mean_l2']:.2f}",
                          f"{r['acc_others_before']:.3f}→{r['acc_others_after']:.3f}", f"{r['mean_iterations']:.1f}",
                          f"{r['seconds']:.0f}")
    con.print(table)
    for name in chosen:
        m = report[name].get("multi")
        if m:
            con.print(f"{report[name]['model']['model']}: multi-target attack, {m['settings']['n_points']} images "
                      f"perturbed → {sum(m['flipped'])}/{len(m['targets'])} targets flipped "
                      f"(mean L∞ {sum(m['linf']) / len(m['linf']):.2f}, L2 {sum(m['l2']) / len(m['l2']):.2f})")
    con.print(f"figures and numbers in {out}/")


@app.command()
def compare(
    out: Path = typer.Option(Path("whybox-out/compare"), help="Directory for the PNG and JSON."),
    dataset: str = typer.Option("digits", help=" | ".join(IMAGE_SETS) + " (mnist: 28×28, pip install whybox[mnist])."),
    pair: str = typer.Option("1,7", help="The two digit classes of the binary task."),
    n_test: int = typer.Option(10, help=help_of(CompareSettings, "n_test")),
    gamma: float = typer.Option(0.0, help="RBF γ (0: scikit-learn's 'scale' rule, 1/(d·Var X))."),
    features: str = typer.Option("exact", help="RBF feature map: exact (Nystroem on all training points) or rff."),
    temperature: float = typer.Option(1.0, help="SmoothHinge temperature t for the RBF SVM."),
    pixel_logistic: bool = typer.Option(True, help="Also compare plain logistic regression on pixels."),
    pretrain_iter: int = typer.Option(100, help="L-BFGS iterations for pretraining the frozen CNN."),
    seed: int = typer.Option(0, help="Seed of the split and the networks."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Compare which training points an RBF SVM and a network on learned features rely on (paper Fig 4)."""
    from tqdm.auto import tqdm

    import whybox
    from whybox import zoo
    from whybox.applications.compare import agreed_test_points, compare_models
    from whybox.report.usecases import plot_comparison, write_json

    if n_test < 1:
        raise BadInput("--n-test must be >= 1")
    if gamma < 0 or temperature <= 0:
        raise BadInput("--gamma must be >= 0 and --temperature > 0")
    if features not in ("exact", "rff"):
        raise BadInput(f"--features must be exact or rff; got {features!r}")
    out.mkdir(parents=True, exist_ok=True)
    dataset = _dataset(dataset)
    builds = {"RBF SVM": lambda: zoo.rbf_svm(split, gamma=gamma or None, features=features, temperature=temperature,
                                             seed=seed),
              "network on learned features": lambda: zoo.frozen_network(split, extractor),
              **({"logistic regression on pixels": lambda: zoo.pixel_logistic(split)} if pixel_logistic else {})}
    # one bar over the whole run, closed (by the with) before any error line is printed
    with tqdm(total=len(builds) + 3, desc="whybox compare", unit="step", leave=False, disable=not progress) as bar:
        bar.set_postfix_str("pretraining the feature extractor")
        split, extractor, _ = _setup(_pair(pair), seed, pretrain_iter, dataset)
        bar.update()
        attributors = {}
        for what, build in builds.items():
            bar.set_postfix_str(f"fitting the {what}")
            obj, info = build()
            attributors[info["model"]] = whybox.InfluenceFunction(obj, whybox.Exact()).fit()
            bar.update()
        bar.set_postfix_str("scoring training points")
        try:
            picks = agreed_test_points(attributors, split.X_test, split.y_test, n_test)
        except ValueError:
            raise BadInput("no test point is classified right by every model; try another --pair") from None
        result = compare_models(attributors, split.X_train, split.y_train, split.X_test, split.y_test, picks,
                                CompareSettings(n_test=n_test))
        bar.update()
        bar.set_postfix_str("figure and JSON")
        summary = result.summary()
        png = out / "compare.png"
        p0 = result.points[0]
        plot_comparison(p0, split.y_train, split.raw_train, split.raw_test[p0.test_index], png,
                        image_shape=split.image_shape, class_names=split.class_names)
        report = result.to_dict()
        report["settings"].update(dataset=dataset, pair=pair, n_train=len(split.X_train),
                                  distance="squared Euclidean distance between model-input pixel vectors "
                                           "(digits: standardised; mnist: levels/255)")
        report["png"] = str(png)
        write_json(out / "compare.json", report)
        bar.update()
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]Influence vs input distance[/] on {dataset} {pair}, {len(result.points)} test points all models get right")
    table = Table(title="correlation of |−I_up,loss| with ‖x − x_test‖² (mean ± std over test points; < 0 = local)")
    for col in ("model", "Spearman", "Pearson", "top-10 helpful with test label"):
        table.add_column(col, justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v['spearman_mean']:+.2f} ± {v['spearman_std']:.2f}",
                      f"{v['pearson_mean']:+.2f} ± {v['pearson_std']:.2f}", f"{v['top10_helpful_same_label']:.0%}")
    con.print(table)
    con.print(f"figure (test point {p0.test_index}): {png}; numbers: {out / 'compare.json'}")
