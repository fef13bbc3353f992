"""Why the saliency demo's pointing game misses: where each method's heat-map maximum lies relative to
the object box, on the demo's own images (the shipped test-bed CNN, `whybox saliency --demo`).

    PYTHONPATH=src python benchmarks/bench_saliency_pointing.py [--n 60]

Prints, for demo image 0, the maximum and the class the deletion turns the image into for three mask
seeds and three perturbations (blur also without jitter), the heat map down the maximum's column, and
then, over the first --n demo images the model classifies correctly, how many pixels each method's
maximum misses the box by (0 = a hit).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from whybox.utils import machine_info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="demo images (make_testbed(n, 32, 'test', seed=1)) to score")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from whybox.saliency import GradientSaliency, MeaningfulPerturbation, Occlusion, box_distance, max_point
    from whybox.saliency.testbed import load_or_train, make_testbed

    print(machine_info())
    net, info = load_or_train(progress=False)
    tb = make_testbed(args.n, info["size"], "test", seed=1)
    with torch.no_grad():
        probs = torch.softmax(net(tb.images), 1)
    box = tb.boxes[0].tolist()
    top = torch.topk(probs[0], 2)
    print(f"image 0: digit {int(tb.labels[0])}; model: " + ", ".join(f"{int(c)} {float(p):.3f}" for p, c in zip(*top))
          + f"; box rows {box[0]}–{box[2] - 1}, cols {box[1]}–{box[3] - 1} (inclusive)")
    print(f"{'perturbation':<14}{'seed':>5}{'maximum':>10}{'px out':>7}  after deletion")
    for pert, kw in (("blur", {}), ("blur, jitter 0", {"jitter": 0}), ("constant", {}), ("noise", {})):
        for seed in (0, 1, 2):
            res = MeaningfulPerturbation(net, perturbation=pert.split(",")[0], seed=seed, **kw).explain(tb.images[:1])
            pt = max_point(res.heatmap[0])
            print(f"{pert:<14}{seed:>5}{str(pt):>10}{box_distance(pt, box):>7}  class {int(res.class_after[0])} "
                  f"({float(res.class_prob_after[0]):.3f})")
            if pert == "blur" and seed == 0:
                column = res.heatmap[0][:, pt[1]]
                rows = range(max(0, box[2] - 4), min(column.numel(), box[2] + 3))
                print("    heat down column", pt[1], ":", ", ".join(f"row {r} {float(column[r]):.2f}" for r in rows),
                      f"(the digit's last row is {box[2] - 1})")
    ok = (probs.argmax(1) == tb.labels).numpy()
    print(f"\nfirst {args.n} demo images, {int(ok.sum())} classified correctly: pixels by which the maximum misses the box")
    for method in (MeaningfulPerturbation(net, perturbation="blur", seed=0), GradientSaliency(net), Occlusion(net)):
        res = method.explain(tb.images[ok], tb.labels[ok])
        gaps = np.array([box_distance(max_point(h), b) for h, b in zip(res.heatmap, tb.boxes[ok])])
        print(f"{res.method:<16} hits {np.mean(gaps == 0):.3f}; misses {int((gaps > 0).sum())}: "
              f"{sorted(gaps[gaps > 0].tolist())} px")


if __name__ == "__main__":
    main()
