"""Retrain the saliency test-bed CNN whose weights ship with whybox (src/whybox/saliency/testbed_cnn.pt).

    PYTHONPATH=src python scripts/train_saliency_testbed.py            # retrain and overwrite the file
    PYTHONPATH=src python scripts/train_saliency_testbed.py --check    # retrain, compare with the shipped file

Deterministic: one torch thread, torch.use_deterministic_algorithms(True), the settings in
whybox.saliency.testbed.DEFAULTS and seeded data, initialisation and batch order; on the same
machine and library versions the retrained weights are bit-identical. The file holds the state
dict and an ``info`` dict (settings, held-out accuracy, versions); `whybox saliency --demo` and
load_or_train() load it with torch.load(weights_only=True).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="retrain and compare with the shipped file; write nothing")
    ap.add_argument("--out", default=None, help="where to write (default: the shipped file's path)")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import numpy
    import sklearn

    from whybox.saliency.testbed import DEFAULTS, SHIPPED, train_testbed_model
    from whybox.utils import machine_info

    print(machine_info())
    t0 = time.perf_counter()
    model, info = train_testbed_model(**DEFAULTS)
    seconds = time.perf_counter() - t0
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    info = {k: v for k, v in info.items() if k != "train_seconds"}  # the file depends on the weights only
    info |= {"torch": str(torch.__version__), "numpy": str(numpy.__version__), "scikit-learn": str(sklearn.__version__)}
    n_params = sum(v.numel() for v in model.parameters())
    print(f"trained {n_params} parameters in {seconds:.1f} s; held-out accuracy {info['test_accuracy']:.4f} "
          f"on {info['n_test']} test-bed images")
    if args.check:
        blob = torch.load(SHIPPED, weights_only=True)
        diff = max(float((state[k].double() - blob["state_dict"][k].double()).abs().max()) for k in state)
        same = all(torch.equal(state[k], blob["state_dict"][k]) for k in state)
        print(f"shipped: accuracy {blob['info']['test_accuracy']:.4f} (torch {blob['info'].get('torch')}); "
              f"retrained: {info['test_accuracy']:.4f}; max |Δθ| = {diff:.3g}; bit-identical: {same}")
        return 0 if same else 1
    out = args.out or SHIPPED
    torch.save({"state_dict": state, "info": info}, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
