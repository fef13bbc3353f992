"""The CUDA path: the same numbers on a GPU as on the CPU. Skipped, with the reason, on machines
without one (the project's CI has none; run this file on a GPU machine to check the device path)."""

from __future__ import annotations

import copy

import pytest
import torch

import whybox
from whybox.engine import score_to_store

# Objective.to moves its model in place: each test moves a deep copy, never the shared fixture.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.mark.parametrize("make", [lambda: whybox.Exact(damping=0.01), lambda: whybox.CG(damping=0.01),
                                  lambda: whybox.CG(damping=0.01, curvature="ggn")], ids=["exact", "cg", "cg-ggn"])
def test_influence_on_cuda_equals_cpu(digits_lr, make):
    d, obj = digits_lr
    X, y = d.X_test[:4], d.y_test[:4]
    cpu = whybox.InfluenceFunction(obj, make()).fit().scores(X, y)
    gpu_obj = copy.deepcopy(obj).to("cuda")
    gpu = whybox.InfluenceFunction(gpu_obj, make()).fit().scores(X.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-8, atol=1e-12)


def test_mlp_kfac_on_cuda_equals_cpu(iris_mlp):
    d, obj = iris_mlp
    X, y = d.X_test[:4], d.y_test[:4]
    cpu = whybox.KFACInfluence(obj, whybox.KFAC(damping=0.01, fisher="ggn")).fit().scores(X, y)
    gpu_obj = copy.deepcopy(obj).to("cuda")
    gpu = whybox.KFACInfluence(gpu_obj, whybox.KFAC(damping=0.01, fisher="ggn")).fit().scores(X.cuda(), y.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-12)


def test_store_from_a_cuda_attributor(binary_lr, tmp_path):
    d, obj = binary_lr
    inf = whybox.InfluenceFunction(copy.deepcopy(obj).to("cuda")).fit()
    arr = score_to_store(inf, d.X_test[:6].cuda(), d.y_test[:6].cuda(), tmp_path / "s.zarr", train_chunk=100,
                         progress=False)
    torch.testing.assert_close(torch.from_numpy(arr[:]), inf.scores(d.X_test[:6].cuda(), d.y_test[:6].cuda()).cpu())
