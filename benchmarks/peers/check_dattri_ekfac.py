"""Why dattri's EK-FAC disagrees with the other EK-FACs: its eigenbasis rotation.

    .venv-bench/bin/python benchmarks/peers/check_dattri_ekfac.py [--n 2000]

dattri 0.3.0 (``dattri.func.fisher.estimate_eigenvector``) keeps ``torch.linalg.eigh``'s eigenvector
matrices Q (eigenvectors in the columns) and rotates a layer gradient V as Q_S V Q_Aᵀ (fitting the
diagonal and in ``IFAttributorEKFAC.transform_test_rep``); the Kronecker eigenbasis is Q_Sᵀ V Q_A.
And ``transform_test_rep`` builds the layer matrix V = [W | b] of a test gradient by reshaping
``cat(W.flatten(), b)`` to ``[d_out, d_in + 1]``, which shifts every row of W (b is not its last
column), while its diagonal was fitted on [W | b] from the layer hooks.

This script scores the MLP task of bench_scale.py with ``IFAttributorEKFAC`` -- as shipped, with
``estimate_eigenvector`` returning the transposed matrices (so the rotation becomes Q_Sᵀ V Q_A), and
with that plus a ``transform_test_rep`` that places the bias as the last column (otherwise dattri's
own formula) -- and compares each with whybox's EK-FAC of the same curvature (empirical Fisher,
λ = weight decay + damping added to the eigen-diagonal) computed the slow way.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import DAMPING, LAMBDA, WEIGHT_DECAY, _dattri_task, make_mlp_task, mlp  # noqa: E402


def transform_bias_last(self, ckpt_idx: int, test_rep: torch.Tensor) -> torch.Tensor:
    """dattri's EK-FAC transform with V = [W | b] (bias as the last column) for Linear layers."""
    params = dict(self.task.model.named_parameters())
    out, at = [], 0
    for name in self.module_name:
        W, b = params[name + ".weight"], params[name + ".bias"]
        Vw = test_rep[:, at : at + W.numel()].reshape(-1, *W.shape)
        Vb = test_rep[:, at + W.numel() : at + W.numel() + b.numel()]
        at += W.numel() + b.numel()
        V = torch.cat([Vw, Vb[:, :, None]], dim=2)
        q_a, q_s = self.cached_q[name]
        U = q_s.T @ ((q_s @ V @ q_a.T) / (self.cached_lambdas[name] + self.damping)) @ q_a
        out += [U[:, :, :-1].flatten(1), U[:, :, -1]]
    return torch.cat(out, dim=1)


def dattri_scores(model, X, y, Xt, yt, transpose: bool, bias_last: bool = False) -> torch.Tensor:
    import dattri.func.fisher as fisher
    from dattri.algorithm.influence_function import IFAttributorEKFAC

    original, transform = fisher.estimate_eigenvector, IFAttributorEKFAC.transform_test_rep
    if transpose:
        fisher.estimate_eigenvector = lambda cov: {k: (qa.T, qs.T) for k, (qa, qs) in original(cov).items()}
    if bias_last:
        IFAttributorEKFAC.transform_test_rep = transform_bias_last
    try:
        att = IFAttributorEKFAC(task=_dattri_task(model), damping=LAMBDA)
        train = DataLoader(TensorDataset(X, y), batch_size=512)
        att.cache(train)
        with torch.no_grad():
            return att.attribute(train, DataLoader(TensorDataset(Xt, yt), batch_size=len(Xt))).T
    finally:
        fisher.estimate_eigenvector, IFAttributorEKFAC.transform_test_rep = original, transform


def main() -> None:
    import whybox
    from whybox.utils import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--tests", type=int, default=20)
    ap.add_argument("--rows", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    task = make_mlp_task(args.n, args.tests)
    model = mlp()
    model.load_state_dict(task["state"])
    model.eval()
    n = args.n
    X, y, Xt, yt = task["X"][:n], task["y"][:n], task["X"][n:], task["y"][n:]
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(1))[: args.rows]
    obj = whybox.Objective(model, "cross_entropy", X, y, weight_decay=WEIGHT_DECAY)
    ref = whybox.InfluenceFunction(obj, whybox.EKFAC(damping=DAMPING, fisher="empirical")).fit().scores(Xt, yt, rows)
    print(machine_info())
    print(f"MLP task, n = {n}, {args.tests} test points, {args.rows} rows; Pearson r with whybox EK-FAC (empirical), slow way")
    for transpose, bias_last, label in [(False, False, "as shipped"),
                                        (True, False, "eigenvectors transposed (rotation Q_Sᵀ V Q_A)"),
                                        (True, True, "eigenvectors transposed and V = [W | b]")]:
        s = dattri_scores(model, X, y, Xt, yt, transpose, bias_last)[:, rows].double().numpy()
        r = np.corrcoef(s.reshape(-1), ref.double().numpy().reshape(-1))[0, 1]
        rel = np.linalg.norm(s / np.linalg.norm(s) - ref.numpy() / ref.norm().item()) if r > 0 else float("nan")
        print(f"dattri IFAttributorEKFAC, {label}: r = {r:.6f} (relative difference of the normalised scores {rel:.2e})")


if __name__ == "__main__":
    main()
