"""Benchmark: meaningful perturbation vs baselines on the digits-on-clutter test-bed.

    PYTHONPATH=src python benchmarks/bench_saliency.py --n 200 --out whybox-out/saliency

Prints, per method: median class probability after the MP deletion mask, mean fraction deleted,
pointing-game accuracy, IoU with the object box (top-|box| pixels; MP also its own mask > 0.5),
deletion AUC (pixels → 0) and insertion AUC (from a blur), seconds per image; then Adam vs L-BFGS
convergence, and time per image vs image size. Writes JSON and figures to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from whybox.utils import machine_info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="correctly classified test-bed images to score")
    ap.add_argument("--iterations", type=int, default=300, help="MP Adam steps / L-BFGS evaluations")
    ap.add_argument("--variants", default="constant-adam,blur-adam,noise-adam,blur-lbfgs,constant-lbfgs",
                    help="MP variants PERTURBATION-OPTIMIZER[-mSIDE], comma-separated (e.g. blur-adam-m8: an 8×8 mask)")
    ap.add_argument("--baselines", default="gradient,gradxinput,occlusion,random")
    ap.add_argument("--blur-sigma", type=float, default=None, help="MP blur σ in px (default: the scaled paper value)")
    ap.add_argument("--mask-size", type=int, default=None, help="MP mask side (default: the scaled paper value)")
    ap.add_argument("--steps", type=int, default=32, help="deletion/insertion curve steps")
    ap.add_argument("--scaling-sizes", default="32,64,128", help="image sizes for the timing sweep ('' to skip)")
    ap.add_argument("--scaling-n", type=int, default=4, help="images per size in the timing sweep")
    ap.add_argument("--cache", default=None, help="test-bed model cache folder (default ~/.cache/whybox)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    ap.add_argument("--seed", type=int, default=2, help="test-bed seed for the scored images")
    ap.add_argument("--out", default="whybox-out/saliency")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from whybox.saliency import (
        MeaningfulPerturbation,
        deletion_curve,
        insertion_curve,
        iou_top_area,
        make_method,
        mask_iou,
        pointing_game,
    )
    from whybox.saliency.testbed import load_or_train, make_testbed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(machine_info())
    model, info = load_or_train(args.cache)
    print(f"test-bed CNN: accuracy {info['test_accuracy']:.3f} on held-out images ({info.get('source', 'cached')})")

    pool = make_testbed(int(args.n * 1.5) + 20, info["size"], "test", seed=args.seed)
    with torch.no_grad():
        pred = model(pool.images).argmax(1)
    ok = torch.nonzero(pred == pool.labels)[:, 0][: args.n]
    if len(ok) < args.n:
        print(f"warning: only {len(ok)} correctly classified images in the pool", file=sys.stderr)
    x, y, boxes = pool.images[ok], pool.labels[ok], pool.boxes[ok]
    from whybox.saliency.testbed import Testbed
    box_mask = Testbed(x, y, boxes, pool.masks[ok]).box_masks()
    print(f"scoring {len(ok)} correctly classified images of {pool.images.shape[-1]}×{pool.images.shape[-1]} px "
          f"(pool accuracy {(pred == pool.labels).float().mean():.3f})")

    rows, results, curves = [], {}, {}
    # the pointing game again with a tolerance of one cell of MP's default mask (2 px at 32 px): the finest
    # detail a mask can place; MP's maxima sit on a stroke's end, often 1-2 px past the tight box (docs/saliency.md)
    side = pool.images.shape[-1]
    cell = side / MeaningfulPerturbation(model).settings(side, side)["mask_hw"][0]
    methods = [("mp", v) for v in args.variants.split(",") if v] + [("base", b) for b in args.baselines.split(",") if b]
    for kind, name in methods:
        if kind == "mp":
            pert, opt, *rest = name.split("-")          # PERTURBATION-OPTIMIZER[-mSIDE]
            side = int(rest[0][1:]) if rest else args.mask_size
            res = MeaningfulPerturbation(model, perturbation=pert, optimizer=opt, iterations=args.iterations,
                                         blur_sigma=args.blur_sigma, mask_size=side,
                                         progress=True).explain(x, y)
            label = f"MP {pert} {opt}" + (f" m{side}" if rest else "")
        else:
            res = make_method(name, model).explain(x, y)
            label = name
        dele = deletion_curve(model, x, res.heatmap, y, steps=args.steps, baseline="zero")
        ins = insertion_curve(model, x, res.heatmap, y, steps=args.steps, baseline="blur")
        row = {
            "method": label,
            "p_before_median": float(res.prob_before.median()),
            "p_after_median": float(res.prob_after.median()) if kind == "mp" else None,
            "frac_deleted": float(res.fraction_deleted.mean()) if kind == "mp" else None,
            "pointing": float(pointing_game(res.heatmap, boxes).float().mean()),
            "pointing_cell": float(pointing_game(res.heatmap, boxes, tolerance=cell).float().mean()),
            "iou_top": float(iou_top_area(res.heatmap, box_mask).mean()),
            "iou_mask": float(mask_iou(res.heatmap > 0.5, box_mask).mean()) if kind == "mp" else None,
            "deletion_auc": float(dele.auc.mean()),
            "insertion_auc": float(ins.auc.mean()),
            "sec_per_image": res.seconds / len(y),
        }
        if kind == "mp":
            row["loss_final"] = float(res.loss_curve[-1].mean())
            row["evaluations"] = int(res.loss_curve.shape[0])
            row["converged"] = res.converged
            results[label] = res
        rows.append(row)
        curves[label] = (dele.probs.mean(0).tolist(), ins.probs.mean(0).tolist())
        print(f"  {label}: done in {res.seconds:.1f} s", flush=True)

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    head = f"{'method':<20}{'p before':>9}{'p after':>9}{'deleted':>9}{'pointing':>9}{'pt ±cell':>9}{'IoU top':>9}{'IoU m>.5':>9}{'del AUC↓':>9}{'ins AUC↑':>9}{'s/img':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['method']:<20}{f(r['p_before_median'], '.3f'):>9}{f(r['p_after_median'], '.4f'):>9}"
              f"{f(r['frac_deleted'], '.3f'):>9}{f(r['pointing'], '.3f'):>9}{f(r['pointing_cell'], '.3f'):>9}{f(r['iou_top'], '.3f'):>9}"
              f"{f(r['iou_mask'], '.3f'):>9}{f(r['deletion_auc'], '.3f'):>9}{f(r['insertion_auc'], '.3f'):>9}"
              f"{f(r['sec_per_image'], '.3f'):>8}")
    print(f"(pt ±cell = pointing game with a {cell:g}-px tolerance, one cell of the default mask)")
    print("(p = median softmax probability of the true class; deleted = mean fraction 1 − m; IoU top = top-|box| "
          "pixels vs the object box; del AUC: pixels set to 0 most-salient first; ins AUC: inserted into a blur)")

    # Adam vs L-BFGS: same perturbation, same objective family; evaluations = forward+backward passes.
    conv = {}
    for pert in ("blur", "constant", "noise"):
        a, b = results.get(f"MP {pert} adam"), results.get(f"MP {pert} lbfgs")
        if a is None or b is None:
            continue
        ca, cb = a.loss_curve.mean(1).numpy(), b.loss_curve.mean(1).numpy()
        target = float(ca[-10:].mean())
        reach_a = int(np.argmax(ca <= target * 1.01)) + 1 if (ca <= target * 1.01).any() else None
        reach_b = int(np.argmax(cb <= target * 1.01)) + 1 if (cb <= target * 1.01).any() else None
        fa, fb = float(a.extra["final_objective"].mean()), float(b.extra["final_objective"].mean())
        conv[pert] = {"adam_objective_no_jitter": fa, "lbfgs_objective_no_jitter": fb, "adam_final": target, "lbfgs_final": float(cb[-1]), "adam_evals_to_1pct": reach_a,
                      "lbfgs_evals_to_1pct": reach_b, "lbfgs_evals": len(cb), "lbfgs_converged": b.converged,
                      "lbfgs_message": b.extra.get("lbfgs_message"), "adam_s": a.seconds, "lbfgs_s": b.seconds}
        print(f"\nAdam vs L-BFGS ({pert}): mean loss Adam (last 10 of {len(ca)} steps) {target:.4f}, reached within 1 % "
              f"after {reach_a} steps; L-BFGS final {cb[-1]:.4f} after {len(cb)} evaluations "
              f"(converged={b.converged}: {b.extra.get('lbfgs_message')}), reached Adam's level after {reach_b}; "
              f"time {a.seconds:.1f} s vs {b.seconds:.1f} s; final masks' objective without jitter: "
              f"Adam {fa:.4f}, L-BFGS {fb:.4f}")
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(np.arange(1, len(ca) + 1), ca, label="Adam (stochastic jitter)")
        ax.plot(np.arange(1, len(cb) + 1), cb, label="L-BFGS-B (fixed jitter sample)")
        ax.set_xlabel("forward+backward evaluations"); ax.set_ylabel("mean loss"); ax.set_yscale("log")
        ax.set_title(f"MP {pert}: convergence"); ax.legend()
        fig.tight_layout(); fig.savefig(out / f"convergence_{pert}.png", dpi=120); plt.close(fig)

    # Deletion / insertion curves.
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    fr = np.linspace(0, 1, args.steps + 1)
    for label, (d, i) in curves.items():
        axes[0].plot(fr, d, label=label); axes[1].plot(fr, i, label=label)
    axes[0].set_title("deletion (lower is better)"); axes[1].set_title("insertion (higher is better)")
    for a in axes:
        a.set_xlabel("fraction of pixels"); a.set_ylabel("p(class)")
    axes[1].legend(fontsize=7)
    fig.tight_layout(); fig.savefig(out / "deletion_insertion.png", dpi=120); plt.close(fig)

    # Example grid.
    show = [r for r in results.values()][:2]
    if show:
        from whybox.saliency._common import display_image
        k = min(6, len(y))
        fig, axes = plt.subplots(k, 2 + len(show), figsize=(2 * (2 + len(show)), 2 * k), squeeze=False)
        for j in range(k):
            axes[j, 0].imshow(display_image(x[j])); b = boxes[j]
            axes[j, 0].add_patch(plt.Rectangle((b[1] - .5, b[0] - .5), b[3] - b[1], b[2] - b[0], fill=False, ec="r"))
            axes[j, 1].imshow(np.clip(display_image(show[0].perturbed[j]), 0, 1))
            for q, r in enumerate(show):
                axes[j, 2 + q].imshow(r.heatmap[j], cmap="jet", vmin=0, vmax=1)
                axes[j, 2 + q].set_title(f"{r.method} p={r.prob_after[j]:.2f}", fontsize=7)
            for a in axes[j]:
                a.axis("off")
        fig.tight_layout(); fig.savefig(out / "examples.png", dpi=100); plt.close(fig)

    # Time per image vs image size (default settings, MP blur Adam).
    scaling = []
    sizes = [int(s) for s in args.scaling_sizes.split(",") if s]
    if sizes:
        print(f"\nTime per image vs size (MP blur Adam, {args.iterations} steps, default scaled settings, "
              f"batches of {args.scaling_n} and of 1):")
        print(f"{'size':>6}{'mask':>8}{'jitter':>8}{'s/img batch':>13}{'s/img single':>14}")
        for s in sizes:
            tb = make_testbed(args.scaling_n, s, "test", seed=3)
            mp = MeaningfulPerturbation(model, perturbation="blur", iterations=args.iterations)
            rb = mp.explain(tb.images)
            r1 = mp.explain(tb.images[:1])
            st = rb.extra["settings"]
            scaling.append({"size": s, "mask": st["mask_hw"], "jitter": st["jitter"],
                            "sec_per_image_batched": rb.seconds / args.scaling_n, "sec_single": r1.seconds})
            print(f"{s:>6}{st['mask_hw'][0]:>8}{st['jitter']:>8}{rb.seconds / args.scaling_n:>13.3f}{r1.seconds:>14.3f}", flush=True)

    report = {"machine": machine_info(), "model": info, "n_images": int(len(y)), "iterations": args.iterations,
              "rows": rows, "convergence": conv, "scaling": scaling, "curves": curves}
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {out / 'results.json'} and figures in {out}/")
    return report


if __name__ == "__main__":
    main()
