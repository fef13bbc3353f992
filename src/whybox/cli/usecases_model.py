"""``whybox attack`` (paper §5.2) and ``whybox compare`` (paper §5.1) on the embedded digits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer

from whybox.cli._app import BadInput, app


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


def _setup(pair: tuple[int, int], seed: int, pretrain_iter: int):
    from whybox import zoo
    from whybox.applications.model_setups import pretrained_extractor

    split = zoo.load("digits", classes=pair, seed=seed)
    extractor, pre_acc = pretrained_extractor(split, pair, seed=seed, max_iter=pretrain_iter)
    return split, extractor, pre_acc


@app.command()
def attack(
    out: Path = typer.Option(Path("whybox-out/attack"), help="Directory for the PNGs and JSON."),
    pair: str = typer.Option("1,7", help="The two digit classes of the binary task."),
    models: str = typer.Option("network,logistic", help="network (frozen CNN + logistic top), logistic (on pixels), or both."),
    budgets: str = typer.Option("1,2,10", help="Numbers of training images to perturb, one sweep each."),
    targets: int = typer.Option(20, help="How many correctly classified test points to attack (seeded subset); 0 = all."),
    iterations: int = typer.Option(10, help="Attack steps (each followed by retraining) per attack."),
    step: float = typer.Option(1.0, help="α: step size in raw pixel levels (digits: 0..16)."),
    epsilon: float = typer.Option(2.0, help="L∞ budget per pixel in levels; the image stays on the integer grid."),
    multi: int = typer.Option(5, help="Also attack this many test points at once (average loss); 0 = skip."),
    multi_points: int = typer.Option(10, help="Training images perturbed in the multi-target attack."),
    pretrain_iter: int = typer.Option(100, help="L-BFGS iterations for pretraining the frozen CNN."),
    seed: int = typer.Option(0, help="Seed of the split, the networks and the target subset."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Training-set attack: perturb the most influential training images (I_pert,loss sign steps on the
    pixel grid, retraining after each) until a test prediction flips."""
    from whybox.applications import attack as atk
    from whybox.applications.model_setups import frozen_network, pixel_logistic

    chosen = [m.strip() for m in models.split(",") if m.strip()]
    if not chosen or set(chosen) - {"network", "logistic"}:
        raise BadInput(f"--models must be network, logistic or both; got {models!r}")
    ks = _ints(budgets, "--budgets")
    if targets < 0 or multi < 0:
        raise BadInput("--targets and --multi must be >= 0")
    try:
        atk._check_options(max(ks), step, epsilon, iterations)
    except ValueError as err:
        raise BadInput(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    if "network" in chosen:
        split, extractor, pre_acc = _setup(_pair(pair), seed, pretrain_iter)
    else:  # no frozen network needed: skip the pretraining
        from whybox import zoo

        split, extractor, pre_acc = zoo.load("digits", classes=_pair(pair), seed=seed), None, None
    grid = atk.PixelGrid.from_split(split)
    builders = {"network": lambda: frozen_network(split, extractor), "logistic": lambda: pixel_logistic(split)}
    sweeps, report = {}, {"settings": dict(pair=pair, budgets=ks, iterations=iterations, step=step, epsilon=epsilon,
                                           n_train=len(split.X_train), n_test=len(split.X_test),
                                           pretrain_accuracy_other_digits=pre_acc, seed=seed)}
    for name in chosen:
        obj, info = builders[name]()
        sweep = atk.attack_each(obj, split.X_test, split.y_test, grid, budgets=ks, max_targets=targets or None,
                                step=step, epsilon=epsilon, iterations=iterations, progress=progress, seed=seed)
        sweeps[info["model"]] = sweep
        entry = {"model": info, "correct_test_points": sweep.n_correct, "targets": sweep.settings["targets"],
                 "rows": [dict(r.__dict__, flip_rate=r.flip_rate) for r in sweep.rows]}
        flipped = [r for k in ks for r in sweep.attacks[k] if r.all_flipped]
        example = flipped[0] if flipped else sweep.attacks[ks[-1]][0]
        png = out / f"attack_{name}.png"
        atk.plot_attack(example, split.raw_test, (8, 8), png,
                        labels=[split.class_names[int(split.y_test[t])] for t in example.targets],
                        title=f"{info['model']}: {len(example.train_indices)} image(s) perturbed")
        entry["example_png"] = str(png)
        if multi:
            many = sweep.settings["targets"][:multi]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                r = atk.attack(obj, split.X_test, split.y_test, many, grid, n_points=multi_points, step=step,
                               epsilon=epsilon, iterations=iterations, stop_when_flipped=False)
            png_m = out / f"attack_{name}_multi.png"
            atk.plot_attack(r, split.raw_test, (8, 8), png_m, title=f"{info['model']}: {multi} targets at once")
            entry["multi"] = {"targets": many, "n_points": multi_points, "flipped": sum(r.flipped),
                              "linf_mean": float(r.linf.mean()), "l2_mean": float(r.l2.mean()),
                              "loss_before": r.loss_before, "loss_after": r.loss_after, "png": str(png_m)}
        report[name] = entry
    atk.plot_sweep(sweeps, out / "flip_rate.png")
    (out / "attack.json").write_text(json.dumps(report, indent=2, default=float))
    _print_attack(report, chosen, out)


def _print_attack(report: dict, chosen: list[str], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    s = report["settings"]
    con.print(f"[bold]Training-set attack[/] on digits {s['pair']} (n = {s['n_train']} train, {s['n_test']} test): "
              f"α = {s['step']} level, L∞ ≤ {s['epsilon']} levels on the 0..16 grid, ≤ {s['iterations']} steps")
    table = Table(title="flip rate per budget (each target attacked on its own)")
    for col in ("model", "images", "flipped", "rate", "L∞", "L2", "acc others before→after", "steps", "s"):
        table.add_column(col, justify="right")
    for name in chosen:
        e = report[name]
        for r in e["rows"]:
            table.add_row(name, str(r["n_points"]), f"{r['flipped']}/{r['attacked']}",
                          f"{r['flip_rate']:.0%}", f"{r['mean_linf']:.2f}", f"{r['mean_l2']:.2f}",
                          f"{r['acc_others_before']:.3f}→{r['acc_others_after']:.3f}", f"{r['mean_iterations']:.1f}",
                          f"{r['seconds']:.0f}")
    con.print(table)
    for name in chosen:
        m = report[name].get("multi")
        if m:
            con.print(f"{report[name]['model']['model']}: multi-target attack, {m['n_points']} images perturbed → "
                      f"{m['flipped']}/{len(m['targets'])} targets flipped (mean L∞ {m['linf_mean']:.2f}, L2 {m['l2_mean']:.2f})")
    con.print(f"figures and numbers in {out}/")


@app.command()
def compare(
    out: Path = typer.Option(Path("whybox-out/compare"), help="Directory for the PNG and JSON."),
    pair: str = typer.Option("1,7", help="The two digit classes of the binary task."),
    n_test: int = typer.Option(10, help="How many test points (all models right) to compare over."),
    gamma: float = typer.Option(0.0, help="RBF γ (0: scikit-learn's 'scale' rule, 1/(d·Var X))."),
    features: str = typer.Option("exact", help="RBF feature map: exact (Nystroem on all training points) or rff."),
    temperature: float = typer.Option(1.0, help="SmoothHinge temperature t for the RBF SVM."),
    pixel_logistic: bool = typer.Option(True, help="Also compare plain logistic regression on pixels."),
    pretrain_iter: int = typer.Option(100, help="L-BFGS iterations for pretraining the frozen CNN."),
    seed: int = typer.Option(0, help="Seed of the split and the networks."),
) -> None:
    """Compare which training points an RBF SVM and a network on learned features rely on (paper Fig 4)."""
    import numpy as np
    import torch

    import whybox
    from whybox.applications import compare as cmp
    from whybox.applications import model_setups as ms

    if n_test < 1:
        raise BadInput("--n-test must be >= 1")
    if gamma < 0 or temperature <= 0:
        raise BadInput("--gamma must be >= 0 and --temperature > 0")
    if features not in ("exact", "rff"):
        raise BadInput(f"--features must be exact or rff; got {features!r}")
    out.mkdir(parents=True, exist_ok=True)
    split, extractor, _ = _setup(_pair(pair), seed, pretrain_iter)
    objs = {}
    for build in (lambda: ms.rbf_svm(split, gamma=gamma or None, features=features, temperature=temperature, seed=seed),
                  lambda: ms.frozen_network(split, extractor),
                  *([lambda: ms.pixel_logistic(split)] if pixel_logistic else [])):
        obj, info = build()
        objs[info["model"]] = obj
    right = torch.stack([ms.predict(o, split.X_test) == split.y_test for o in objs.values()]).all(0)
    candidates = torch.nonzero(right).reshape(-1).tolist()
    if not candidates:
        raise BadInput("no test point is classified right by every model; try another --pair")
    picks = [candidates[i] for i in np.linspace(0, len(candidates) - 1, min(n_test, len(candidates))).astype(int)]
    attributors = {k: whybox.InfluenceFunction(o, whybox.Exact()).fit() for k, o in objs.items()}
    result = cmp.compare_models(attributors, split.X_train, split.y_train, split.X_test, split.y_test, picks)
    summary = result.summary()
    png = out / "compare.png"
    p0 = result.points[0]
    cmp.plot_comparison(p0, split.y_train, split.raw_train, split.raw_test[p0.test_index], png,
                        class_names=split.class_names)
    report = {"settings": {"pair": pair, "test_points": picks, "n_train": len(split.X_train),
                           "distance": "squared Euclidean distance between standardised pixel vectors",
                           "score": "-I_up,loss/n (predicted test-loss rise if removed; > 0 helpful)"},
              "summary": summary,
              "per_point": [{"test_index": p.test_index, "spearman": p.spearman, "pearson": p.pearson,
                             "top_helpful": {k: v[:2] for k, v in p.top_helpful.items()}} for p in result.points],
              "png": str(png)}
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]Influence vs input distance[/] on digits {pair}, {len(picks)} test points all models get right")
    table = Table(title="correlation of |−I_up,loss| with ‖x − x_test‖² (mean ± std over test points; < 0 = local)")
    for col in ("model", "Spearman", "Pearson", "top-10 helpful with test label"):
        table.add_column(col, justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v['spearman_mean']:+.2f} ± {v['spearman_std']:.2f}",
                      f"{v['pearson_mean']:+.2f} ± {v['pearson_std']:.2f}", f"{v['top10_helpful_same_label']:.0%}")
    con.print(table)
    con.print(f"figure (test point {p0.test_index}): {png}; numbers: {out / 'compare.json'}")
