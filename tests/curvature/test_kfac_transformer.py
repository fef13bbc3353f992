"""K-FAC / EK-FAC on a tiny ``nn.TransformerEncoder`` classifier: Linear layers on sequences (T > 1),
the restriction to factorable layers, and the fallback for the rest."""

from __future__ import annotations

import pytest
import torch

import whybox
from whybox import zoo

DT = torch.float64
T, VOCAB, CLASSES = 6, 24, 3

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # vmap over attention


@pytest.fixture(scope="module")
def task():
    d = zoo.make_token_sequences(n_train=40, n_test=4, vocab=VOCAB, length=T, n_classes=CLASSES, bigrams_per_class=1,
                                 distractors=1, seed=3)
    model = zoo.transformer_classifier(vocab=VOCAB, n_classes=CLASSES, length=T, d_model=4, heads=2, layers=1, ff=6,
                                       dtype=DT, seed=1)
    zoo.train_adam(model, d.X_train, d.y_train, epochs=2, lr=1e-2, batch_size=8)
    return d, model


def restricted(task, **kw) -> whybox.Objective:
    d, model = task
    return whybox.Objective(model, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01,
                            params=whybox.factorable_params(model), **kw)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def exact_ggn(obj: whybox.Objective) -> torch.Tensor:
    U = obj.gauss_newton_factors(torch.arange(obj.n))
    return torch.einsum("kpc,kqc->pq", U, U) / obj.n


def test_factorable_params_are_the_linear_layers_called_as_modules(task):
    _, model = task
    names = whybox.factorable_params(model)
    assert names == ["encoder.layers.0.linear1.weight", "encoder.layers.0.linear1.bias",
                     "encoder.layers.0.linear2.weight", "encoder.layers.0.linear2.bias", "head.weight", "head.bias"]
    curv = whybox.KFAC(damping=0.01).fit(restricted(task))
    assert [(l.module, l.d_out, l.d_in) for l in curv.layers] == [
        ("encoder.layers.0.linear1", 6, 5), ("encoder.layers.0.linear2", 4, 7), ("head", 3, 5)]
    assert curv.fallback_params == []


def test_sequence_factors_average_inputs_over_positions_and_sum_output_gradients(task):
    """A = (1/n) Σᵢ (1/T) Σ_t ā_t ā_tᵀ, G = (1/n) Σᵢ Σ_t J_tᵀ Λᵢ J_t for linear1 (fisher="ggn"), from
    a test-side hook and an explicit Jacobian of the output in a per-position shift of the layer's output."""
    d, model = task
    obj = restricted(task)
    curv = whybox.KFAC(damping=0.01, fisher="ggn").fit(obj)
    layer = curv.layers[0]
    lin = model.encoder.layers[0].linear1
    seen = []
    handle = lin.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        model(obj.X)
    handle.remove()
    a = torch.cat([seen[0], torch.ones(*seen[0].shape[:2], 1, dtype=DT)], 2)  # [n, T, d_in + 1]
    torch.testing.assert_close(layer.A, torch.einsum("nti,ntj->ij", a, a) / (obj.n * T), rtol=1e-10, atol=1e-14)
    G = torch.zeros(layer.d_out, layer.d_out, dtype=DT)
    for x in obj.X:
        def out(shift, x=x):
            h = lin.register_forward_hook(lambda m, i, o: o + shift)
            try:
                return model(x[None])[0]
            finally:
                h.remove()

        J = torch.func.jacrev(out)(torch.zeros(T, layer.d_out, dtype=DT))  # [C, T, d_out]
        p = torch.softmax(model(x[None])[0], 0).detach()
        Lam = torch.diag(p) - torch.outer(p, p)
        G += torch.einsum("cto,cd,dtq->oq", J, Lam, J)
    torch.testing.assert_close(layer.G, G / obj.n, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("cls", [whybox.KFAC, whybox.EKFAC])
@pytest.mark.parametrize("fisher", ["sampled", "ggn"])
def test_factored_scores_equal_the_flat_route_on_sequences(task, cls, fisher, monkeypatch):
    import whybox.attribution.kfac as factored

    monkeypatch.setattr(factored, "_BLOCK_ELEMENTS", 200)  # several row blocks per chunk
    d, _ = task
    obj = restricted(task, batch_size=16)
    curv = cls(damping=0.001, fisher=fisher)
    fast = whybox.KFACInfluence(obj, curv).fit()
    flat = whybox.InfluenceFunction(obj, curv).fit()
    assert rel(fast.scores(d.X_test, d.y_test), flat.scores(d.X_test, d.y_test)) < 1e-8
    assert rel(fast.scores(d.X_test, d.y_test, [7, 2, 30]), flat.scores(d.X_test, d.y_test, [7, 2, 30])) < 1e-8
    assert rel(fast.self_scores(), flat.self_scores()) < 1e-8
    # the flat route by its definition: K⁻¹ applied to explicit per-example gradients
    S = curv.solve(obj.grads(d.X_test, d.y_test))
    assert rel(fast.scores(d.X_test, d.y_test), S @ obj.grads().T / obj.n) < 1e-8


def test_ekfac_diagonal_is_the_gauss_newton_diagonal_in_its_basis_for_sequences(task):
    obj = restricted(task)
    ek = whybox.EKFAC(fisher="ggn").fit(obj)
    ggn = exact_ggn(obj)
    starts = dict(zip(obj.param_names, torch.tensor([0, *obj.sizes[:-1]]).cumsum(0).tolist()))
    for layer in ek.layers:
        pos = layer.index  # M[o, j] -> θ position
        assert pos.min() >= starts[layer.weight]
        block = ggn[pos][:, pos]
        Q = torch.kron(layer.eig_G[1], layer.eig_A[1])
        Lam = layer.extra["eigen_diagonal"].reshape(-1)
        torch.testing.assert_close(Lam, torch.diagonal(Q.T @ block @ Q), rtol=1e-8, atol=1e-14)
        assert (Q @ torch.diag(Lam) @ Q.T - block).norm() <= (torch.kron(layer.G, layer.A) - block).norm() + 1e-12


def test_unfactorable_parameters_are_refused_by_default_and_exact_when_asked(task):
    d, model = task
    obj = whybox.Objective(model, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    with pytest.raises(ValueError, match=r"in_proj_weight.*params=whybox\.factorable_params\(model\).*fallback='diagonal'"):
        whybox.KFAC(damping=0.01).fit(obj)
    with pytest.raises(ValueError, match="fallback must be one of"):
        whybox.KFAC(fallback="dense")
    curv = whybox.KFAC(damping=0.001, fisher="ggn", fallback="diagonal")
    with pytest.warns(RuntimeWarning, match="diagonal Gauss-Newton block"):
        fast = whybox.KFACInfluence(obj, curv).fit()
    idx = whybox.curvature.kfac.left_index(obj, curv.fallback_params)
    assert len(idx) == obj.p - sum(l.index.numel() for l in curv.layers)
    # the fallback block is the exact Gauss-Newton diagonal of those parameters (K = C vector-Jacobian products)
    torch.testing.assert_close(curv.left_diagonal, torch.diagonal(exact_ggn(obj))[idx], rtol=1e-8, atol=1e-14)
    with pytest.warns(RuntimeWarning, match="diagonal Gauss-Newton block"):
        flat = whybox.InfluenceFunction(obj, curv).fit()
    assert rel(fast.scores(d.X_test, d.y_test), flat.scores(d.X_test, d.y_test)) < 1e-8
