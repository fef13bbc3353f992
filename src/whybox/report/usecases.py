"""Presentation of the use cases (paper §5): figures, text tables and result files.

The experiments and their results live in ``whybox.applications``; everything here only draws or
writes them. Figures use matplotlib's object API (``Figure``), no global backend or pyplot state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from whybox.applications.attack import AttackResult, Sweep
from whybox.applications.compare import PointComparison
from whybox.applications.mislabeled import MislabeledResult
from whybox.applications.mismatch import MismatchDiagnosis
from whybox.report.writers import plain

LABELS = {
    "self_influence": "self-influence",
    "influence_loo": "influence LOO loss",
    "train_loss": "train loss",
    "cv_loss": "cross-val loss",
    "trusted": "influence on trusted set",
    "cleanlab": "cleanlab",
    "random": "random",
}
COLORS = {
    "self_influence": "tab:blue", "influence_loo": "tab:purple", "train_loss": "tab:green",
    "cv_loss": "tab:orange", "trusted": "tab:cyan", "cleanlab": "tab:brown", "random": "tab:red",
}


def write_json(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON (NaN → null, numpy scalars → numbers)."""
    Path(path).write_text(json.dumps(plain(data), indent=1), encoding="utf-8")
    return Path(path)


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


# ---------------------------------------------------------------------------------- mislabeled (§5.4)
def mislabeled_table(result: MislabeledResult, check: Sequence[float] = (0.05, 0.1, 0.2, 0.3)) -> str:
    """A plain-text table (mean ± std over repeats)."""
    rows = result.table(check)
    cols = [c for c in rows[0] if c not in ("ranking", "seconds")]
    head = f"{'ranking':<16}" + "".join(f"{c:>15}" for c in cols) + f"{'rank s':>8}"
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = "".join(f"{row[c][0]:>8.3f}±{row[c][1]:<6.3f}" for c in cols)
        lines.append(f"{row['ranking']:<16}{cells}{row['seconds']:>8.2f}")
    return "\n".join(lines)


def plot_mislabeled(result: MislabeledResult, path: str | Path) -> Path:
    """Fig 6 of the paper: test accuracy (left) and fraction of flips found (right) vs fraction
    of training data checked, mean ± std over repeats."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    for r in result.rankings:
        kw = dict(color=COLORS.get(r), label=LABELS.get(r, r))
        if r in result.accuracy and len(result.acc_fractions):
            a = result.accuracy[r]
            axes[0].errorbar(result.acc_fractions * 100, a.mean(0), yerr=a.std(0), capsize=2, marker="o", ms=3, **kw)
        f = result.found[r]
        axes[1].plot(result.fractions * 100, f.mean(0), **kw)
        axes[1].fill_between(result.fractions * 100, f.mean(0) - f.std(0), f.mean(0) + f.std(0),
                             color=COLORS.get(r), alpha=0.15)
    axes[0].axhline(result.clean_accuracy, color="k", ls=":", lw=1, label="trained on clean labels")
    axes[0].set(xlabel="% of training data checked", ylabel="test accuracy", title="test accuracy after fixing")
    axes[1].set(xlabel="% of training data checked", ylabel="fraction of flips found", title="flipped labels found",
                ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result.description} — {result.settings.repeats} repeats, "
                 f"{100 * result.settings.flip_fraction:.0f}% labels flipped", fontsize=9)
    return _save(fig, path)


def save_mislabeled(result: MislabeledResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``mislabeled_<problem>.json`` (results and settings), ``.csv`` (the table) and ``.png`` (Fig 6 style)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"mislabeled_{result.problem}.{k}" for k in ("json", "csv", "png")}
    write_json(paths["json"], result.to_dict())
    rows = result.table()
    cols = [c for c in rows[0] if c != "ranking"]
    lines = ["ranking," + ",".join(f"{c}_mean,{c}_std" if c != "seconds" else c for c in cols)]
    for row in rows:
        vals = [f"{row[c][0]:.4f},{row[c][1]:.4f}" if isinstance(row[c], tuple) else f"{row[c]:.2f}" for c in cols]
        lines.append(row["ranking"] + "," + ",".join(vals))
    paths["csv"].write_text("\n".join(lines) + "\n")
    plot_mislabeled(result, paths["png"])
    return paths


# ---------------------------------------------------------------------------------- mismatch (§5.3)
def mismatch_summary(diag: MismatchDiagnosis) -> str:
    """A one-screen diagnosis."""
    c = diag.config
    k = len(diag.train_children)
    lines = [
        f"Domain mismatch: {c['n_train']} training patients, {len(c['feature_names'])} features; "
        f"{c['children_removed']} of {c['n_children_train']} training children (non-readmitted) removed "
        f"-> {k} left, labels {diag.train_children_labels} (1 = readmitted). seed={c['seed']}",
        f"L2 logistic regression (weight decay {diag.settings.weight_decay:g}, ‖∇R‖ = {diag.grad_norm:.1e}): "
        f"test accuracy adults {diag.accuracy_adults:.3f}, children {diag.accuracy_children:.3f} "
        f"(trained with all children: {diag.accuracy_children_no_mismatch:.3f})",
        f"Test child #{diag.test_index}: label {diag.test_label}, P(readmitted) = {diag.test_prob_readmit:.3f} -> wrong.",
        f"1. Influence ({diag.attributor}): the {k} training children rank {diag.children_ranks} by |influence|; "
        f"the weakest of them is {diag.factor:.1f}x the strongest other training point.",
    ]
    for row in diag.top_influence[: k + 2]:
        lines.append(f"     #{row['index']:>6}  child={row['child']}  label={row['label']}  "
                     f"influence={row['influence']:+.3e}")
    lines.append(f"2. Coefficients alone: |θ_child| = {abs(diag.coef_child):.3f} ranks {diag.coef_rank} of "
                 f"{len(c['feature_names'])} (top: " + ", ".join(f"{n} {v:+.2f}" for n, v in diag.coef_top[:4]) + ")")
    lines.append(f"3. I_pert,loss·x over the {k} training children (each feature's contribution to their influence): "
                 f"child indicator ranks {diag.pert_child_rank} (by |I_pert,loss| alone: {diag.pert_child_rank_raw}); "
                 "top: " + ", ".join(f"{n} ({v:.2g})" for n, v in diag.pert_top[:4]))
    verdict = ("-> the training set lacks non-readmitted children: the model learned 'child => readmitted' "
               "from a handful of points" if diag.pert_child_rank == 1 and diag.children_ranks == list(range(1, k + 1))
               else "-> see the ranks above")
    lines.append(verdict)
    lines += [f"note: {n}" for n in diag.notes]
    return "\n".join(lines)


def plot_mismatch(diag: MismatchDiagnosis, path: str | Path) -> Path:
    """Bar charts: top training points by |influence| (children highlighted), and features by
    mean |I_pert,loss · x| over the training children."""
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    rows = diag.top_influence
    colors = ["tab:red" if r["child"] else "tab:gray" for r in rows]
    axes[0].bar(range(len(rows)), [abs(r["influence"]) for r in rows], color=colors)
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(len(rows)), [f"#{r['index']}\n{'child' if r['child'] else ''}" for r in rows], fontsize=6)
    axes[0].set(ylabel="|influence| on the test child", title=f"children (red) are {diag.factor:.0f}x the next point")
    names = [n for n, _ in diag.pert_top]
    axes[1].barh(range(len(names))[::-1], [v for _, v in diag.pert_top],
                 color=["tab:red" if n.startswith("age_child") else "tab:gray" for n in names])
    axes[1].set_yticks(range(len(names))[::-1], names, fontsize=7)
    axes[1].set(xlabel="mean |I_pert,loss · x| over the training children", title="which feature drives it")
    return _save(fig, path)


def save_mismatch(diag: MismatchDiagnosis, out_dir: str | Path) -> dict[str, Path]:
    """Write ``mismatch.json`` (diagnosis, settings, generator parameters), ``mismatch.png`` and ``mismatch.txt``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "mismatch.json", "png": out / "mismatch.png", "txt": out / "mismatch.txt"}
    write_json(paths["json"], diag.to_dict())
    paths["txt"].write_text(mismatch_summary(diag) + "\n")
    plot_mismatch(diag, paths["png"])
    return paths


# ---------------------------------------------------------------------------------- attack (§5.2)
def plot_attack(result: AttackResult, X_test_raw: np.ndarray, image_shape: Sequence[int], path: str | Path,
                labels: Sequence[str] | None = None, title: str = "") -> Path:
    """PNG: each perturbed training image (original, perturbed, difference) and the target test image(s)."""
    shape = tuple(image_shape)[-2:]
    k, m = len(result.train_indices), len(result.targets)
    rows = max(k, 1)
    fig = Figure(figsize=(8.5, 2.2 * rows + 0.4))
    axes = fig.subplots(rows, 4, squeeze=False)
    span = float(result.raw_original.max())
    for r, i in enumerate(result.train_indices):
        orig, pert = result.raw_original[r].reshape(shape), result.raw_perturbed[r].reshape(shape)
        diff = pert - orig
        lim = max(1.0, float(np.abs(diff).max()))
        for ax, img, cmap, vmin, vmax, name in (
            (axes[r, 0], orig, "gray_r", 0, span, f"train #{i}: original"),
            (axes[r, 1], pert, "gray_r", 0, span, f"perturbed (L∞ {np.abs(diff).max():.3g})"),
            (axes[r, 2], diff, "RdBu_r", -lim, lim, "difference (levels)"),
        ):
            ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(name, fontsize=8)
    for r in range(rows):
        ax = axes[r, 3]
        if r < m:
            t = result.targets[r]
            ax.imshow(np.asarray(X_test_raw)[t].reshape(shape), cmap="gray_r", vmin=0, vmax=span)
            state = "FLIPPED" if result.flipped[r] else "not flipped"
            lab = f" ({labels[r]})" if labels is not None else ""
            ax.set_title(f"test #{t}{lab}: {state}", fontsize=8, color="red" if result.flipped[r] else "black")
        else:
            ax.set_visible(False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"training-set attack: {sum(result.flipped)}/{m} target(s) flipped after "
                 f"{result.iterations} step(s)", fontsize=9)
    return _save(fig, path)


def plot_sweep(sweeps: dict[str, Sweep], path: str | Path) -> Path:
    """PNG: flip rate against the number of perturbed training images, one line per model."""
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    for name, sweep in sweeps.items():
        ax.plot([r.n_points for r in sweep.rows], [100 * r.flip_rate for r in sweep.rows], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("perturbed training images")
    ax.set_ylabel("test predictions flipped (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------------------- compare (§5.1)
def plot_comparison(
    point: PointComparison,
    y_train,
    train_images: np.ndarray,
    test_image: np.ndarray,
    path: str | Path,
    image_shape: Sequence[int] = (8, 8),
    class_names: Sequence[str] | None = None,
) -> Path:
    """PNG in the layout of the paper's Fig 4: per model, the score vs squared-distance scatter
    (same label as the test point green, other label red) and its two most helpful training images."""
    shape = tuple(image_shape)[-2:]
    ytr = np.asarray(y_train).reshape(-1)
    name_of = (lambda c: class_names[c]) if class_names else str  # noqa: E731
    names = list(point.scores)
    fig = Figure(figsize=(10, 2.9 * len(names)))
    grid = fig.add_gridspec(len(names), 5, width_ratios=[3, 0.1, 1, 1, 1])
    same = ytr == point.label
    for r, name in enumerate(names):
        ax = fig.add_subplot(grid[r, 0])
        s = point.scores[name]
        ax.scatter(point.distances[~same], s[~same], s=8, c="tab:red", alpha=0.6,
                   label=f"label {name_of(1 - point.label) if len(set(ytr)) == 2 else 'other'}")
        ax.scatter(point.distances[same], s[same], s=8, c="tab:green", alpha=0.6, label=f"label {name_of(point.label)}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("‖x − x_test‖²")
        ax.set_ylabel("score (> 0 supports the prediction)")
        ax.set_title(f"{name}: Spearman(|score|, dist²) = {point.spearman[name]:+.2f}, "
                     f"Pearson = {point.pearson[name]:+.2f}", fontsize=8)
        ax.legend(fontsize=7)
        panels = [(test_image, f"test #{point.test_index} ({name_of(point.label)})")]
        panels += [(train_images[i], f"helpful #{j + 1}: train {i} ({name_of(int(ytr[i]))})")
                   for j, i in enumerate(point.top_helpful[name][:2])]
        for c, (img, title) in enumerate(panels):
            a = fig.add_subplot(grid[r, 2 + c])
            a.imshow(np.asarray(img).reshape(shape), cmap="gray_r")
            a.set_title(title, fontsize=7)
            a.set_xticks([])
            a.set_yticks([])
    return _save(fig, path)


# ---------------------------------------------------------------------------------- leave-one-out (§4.1, Fig 2)
def plot_loo_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """PNG in the layout of the paper's Fig 2: per panel ``(title, predicted, actual)``, the actual
    leave-one-out test-loss change against the predicted one, with the diagonal and Pearson's r."""
    fig = Figure(figsize=(3.4 * max(1, len(panels)), 3.4))
    axes = np.atleast_1d(fig.subplots(1, max(1, len(panels))))
    for ax, (title, pred, actual) in zip(axes, panels):
        pred, actual = np.asarray(pred, float), np.asarray(actual, float)
        lim = 1.05 * float(max(np.abs(pred).max(), np.abs(actual).max(), 1e-12))
        ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
        ax.scatter(actual, pred, s=9, alpha=0.7)
        r = float(np.corrcoef(pred, actual)[0, 1]) if len(pred) > 2 else float("nan")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xlabel("actual loss change (retrained)")
        ax.set_ylabel("predicted −(1/n)·I_up,loss")
        ax.set_title(f"{title}\nPearson r = {r:.3f} ({len(pred)} points)", fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)
