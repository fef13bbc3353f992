"""Why leave-one-out ground truth for the digits CNN was slow, and a cheaper one that reaches the same minimum.

    python benchmarks/bench_cnn_loo.py                 # 2 top-influence + 1 random point, 1 LDS subset
    python benchmarks/bench_cnn_loo.py --points 5 --lds-subsets 0

The task is the benchmark's ``digits_cnn`` (``evaluation.benchmark.TASKS``: zoo CNN, p = 1,898,
float64, weight decay 0.01, full-batch L-BFGS). Steps, each timed:

1. train it (``task.train``), and report ‖∇R(θ̂)‖ recomputed at the returned θ;
2. form the Hessian H at θ̂ (what ``Exact`` influence forms too) and its spectrum (is θ̂ a minimum?);
3. polish θ̂ with chord-Newton steps θ ← θ − H⁻¹∇R(θ) (H frozen at θ̂) to ‖∇R‖ ≤ 1e-10;
4. for the highest-loss test point, remove each chosen training point and retrain from θ̂ twice:
   chord-Newton (H frozen, to ‖∇R₋ᵢ‖ ≤ 1e-10, at most 100 steps) and the benchmark's L-BFGS
   (``zoo.fit`` to ‖∇R₋ᵢ‖ ≤ 1e-8, ≤ 5,000 iterations); compare the test-loss changes and the θ they reach;
5. time one LDS-style retraining (half the training points removed) by L-BFGS from θ̂.

θ̂ and H are cached under --cache (a rerun skips steps 1-2). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from whybox import zoo
from whybox.evaluation.benchmark import TASKS
from whybox.utils import machine_info, markdown_table
from whybox.zoo.train import fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=3, help="LOO points: about 2/3 by |influence|, the rest random")
    ap.add_argument("--lds-subsets", type=int, default=1, help="half-data retrainings to time")
    ap.add_argument("--cache", default="whybox-out/cnn_loo")
    ap.add_argument("--out", default="benchmarks/results/cnn_loo.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    lines = [machine_info()]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    task = TASKS["digits_cnn"]
    d = zoo.load("digits")
    X, X_test, y_test = d.X_train.reshape(-1, *d.image_shape), d.X_test.reshape(-1, *d.image_shape), d.y_test
    if (cache / "theta.pt").exists():
        obj = zoo.train(task.build(d), "cross_entropy", X, d.y_train, weight_decay=task.weight_decay, max_iter=1)[0]
        obj = obj.with_theta(torch.load(cache / "theta.pt"))
        say(f"θ̂ from the cache ({cache / 'theta.pt'})")
    else:
        start = time.perf_counter()
        obj, _, _, reported, _ = task.train()
        torch.save(obj.theta, cache / "theta.pt")
        say(f"training (task.train, L-BFGS ≤ 5,000 iterations): {time.perf_counter() - start:.0f} s, "
            f"reported ‖∇R‖ = {reported:.2e}")

    def grad(theta: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        th = theta.detach().clone().requires_grad_(True)
        return torch.autograd.grad(obj.risk(th, weights), th)[0]

    say(f"‖∇R(θ̂)‖ recomputed at the returned θ: {float(grad(obj.theta).norm()):.2e}")
    if (cache / "H.pt").exists():
        H = torch.load(cache / "H.pt")
        say("H from the cache")
    else:
        start = time.perf_counter()
        H = obj.hessian()
        torch.save(H, cache / "H.pt")
        say(f"forming H (p = {obj.p:,}, {obj.p} HVP columns over n = {obj.n:,}): {time.perf_counter() - start:.0f} s")
    ev = torch.linalg.eigvalsh(H)
    say(f"spectrum of H at θ̂: min {ev[0]:.2e}, max {ev[-1]:.2e}, {(ev < 0).sum().item()} negative, "
        f"condition {ev[-1] / ev[0]:.1e}")
    chol = torch.linalg.cholesky(H)  # fails when θ̂ is not a minimum

    def chord(theta: torch.Tensor, weights: torch.Tensor | None = None, tol: float = 1e-10, steps: int = 100):
        norms = []
        for _ in range(steps + 1):
            g = grad(theta, weights)
            norms.append(float(g.norm()))
            if norms[-1] <= tol or len(norms) > steps:
                break
            theta = theta - torch.cholesky_solve(g[:, None], chol)[:, 0]
        return theta, norms

    start = time.perf_counter()
    theta_star, norms = chord(obj.theta)
    say(f"chord polish of θ̂: {len(norms) - 1} step(s), {time.perf_counter() - start:.1f} s, ‖∇R‖ {norms[0]:.1e} → "
        f"{norms[-1]:.1e}, |Δθ| = {float((theta_star - obj.theta).norm()):.1e}")
    star = obj.with_theta(theta_star)
    t = int(star.losses(X_test, y_test).argmax())
    x, y = X_test[t : t + 1], y_test[t : t + 1]
    s_test = torch.cholesky_solve(star.grads(x, y)[0][:, None], chol)[:, 0]
    predicted = star.train_grads(slice(None)) @ s_test / star.n  # influence (undamped H), positive = supports
    n_top = max(1, round(2 * a.points / 3))
    chosen = torch.argsort(predicted.abs(), descending=True)[:n_top].tolist()
    chosen += sorted(np.random.default_rng(0).choice(star.n, a.points - n_top, replace=False).tolist())
    base = float(star.losses(x, y))
    rows = []
    for i in chosen:
        w = torch.ones(star.n, dtype=star.dtype)
        w[i] = 0
        start = time.perf_counter()
        th_c, nc = chord(theta_star, w)
        chord_s = time.perf_counter() - start
        start = time.perf_counter()
        res = fit(star, weights=w, tol=1e-8, max_iter=5000)
        lbfgs_s = time.perf_counter() - start
        ac, al = float(star.losses(x, y, theta=th_c)) - base, float(star.losses(x, y, theta=res.theta)) - base
        rows.append({"train point": i, "influence": float(predicted[i]), "chord Δloss": ac, "L-BFGS Δloss": al,
                     "rel. diff": abs(ac - al) / abs(al), "chord steps": len(nc) - 1, "chord ‖∇R₋ᵢ‖": nc[-1],
                     "chord s": chord_s, "L-BFGS its": res.iterations, "L-BFGS ‖∇R₋ᵢ‖": res.grad_norm,
                     "L-BFGS s": lbfgs_s, "|θ_chord − θ_lbfgs|": float((th_c - res.theta).norm()),
                     "|θ₋ᵢ − θ̂|": float((th_c - theta_star).norm())})
        print(json.dumps(rows[-1]), flush=True)
    say(f"leave-one-out for test point {t} (highest loss), from θ̂ polished:")
    say(markdown_table(rows, ".3g"))
    for j in range(a.lds_subsets):
        mask = np.random.default_rng(j).permutation(star.n) < star.n // 2
        w = torch.as_tensor(mask, dtype=star.dtype)
        start = time.perf_counter()
        res = fit(star, weights=w, tol=1e-8, max_iter=5000)
        say(f"half-data retraining {j} (L-BFGS from θ̂, ≤ 5,000 iterations toward 1e-8): {time.perf_counter() - start:.0f} s, "
            f"{res.iterations} iterations, ‖∇R‖ = {res.grad_norm:.1e}, |Δθ| = {float((res.theta - theta_star).norm()):.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(f"`python benchmarks/bench_cnn_loo.py {' '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in vars(a).items() if k in ('points', 'lds_subsets'))}`\n\n"
                           + "\n\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
