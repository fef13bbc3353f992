"""DataInf (Kwon et al. 2023) against its own definition written out with explicit per-example
gradients and dense inverses, and against exact influence on small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import whybox
from whybox.curvature import DataInf


def _explicit_grads(obj):
    """Per-example loss gradients by one autograd call per training point, ``[n, p]``."""
    model = obj.model
    params = [p for n, p in model.named_parameters() if n in obj.param_names]
    rows = []
    for x, y in zip(obj.X, obj.y):
        loss = obj.loss_fn(model(x[None]), y[None]).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def test_datainf_is_the_mean_of_per_example_damped_inverses(iris_mlp):
    _, obj = iris_mlp
    obj.write_to_model()
    G = _explicit_grads(obj)
    solver = DataInf(damping=0.003).fit(obj)
    V = torch.randn(3, obj.p, dtype=obj.dtype, generator=torch.Generator().manual_seed(0))
    X = solver.solve(V)
    # layers of the 4-8-3 MLP: "0" (weight 32 + bias 8) and "2" (weight 24 + bias 3)
    blocks = [torch.arange(0, 40), torch.arange(40, obj.p)]
    assert solver.diagnostics["layers"] == ["0", "2"] and obj.p == 67
    expected = torch.empty_like(V)
    for b, idx in enumerate(blocks):
        g = G[:, idx]
        lam = 0.1 * g.square().mean() + obj.weight_decay + 0.003
        assert solver.diagnostics["lambdas"][b] == pytest.approx(float(lam), rel=1e-12)
        eye = torch.eye(len(idx), dtype=obj.dtype)
        mean_inverse = sum(torch.linalg.inv(torch.outer(gi, gi) + lam * eye) for gi in g) / obj.n
        expected[:, idx] = V[:, idx] @ mean_inverse
    torch.testing.assert_close(X, expected, rtol=1e-9, atol=1e-12)
    assert solver.diagnostics["relative_residual"] is None  # an approximation: no residual claim
    with pytest.raises(ValueError, match="no dense matrix"):
        solver.dense()


def test_datainf_influence_against_exact(digits_lr):
    """On L2 logistic regression (n = 1,200, p = 650) DataInf's influence ranks training points like
    exact influence to a degree, and far from perfectly: the swap of inverse and mean is not exact."""
    d, obj = digits_lr
    X, y = d.X_test[:5], d.y_test[:5]
    exact = whybox.InfluenceFunction(obj, whybox.Exact()).fit().scores(X, y)
    approx = whybox.InfluenceFunction(obj, DataInf()).fit().scores(X, y)
    rho = np.mean([stats.spearmanr(a, b)[0] for a, b in zip(exact.numpy(), approx.numpy())])
    r = np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(exact.numpy(), approx.numpy())])
    print(f"DataInf vs exact influence on digits LR: Pearson {r:.3f}, Spearman {rho:.3f}")
    assert 0.3 < rho < 0.999 and r > 0.3
