"""Loading the user's data and models: formats, round trips, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox import io, zoo
from whybox.study import DataSettings, ModelSettings, load_study


@pytest.fixture(scope="module")
def iris_net(tmp_path_factory):
    """A tanh MLP (random weights: equality of eager and scripted influence needs no training),
    saved as TorchScript and as a state dict + code file."""
    root = tmp_path_factory.mktemp("iris")
    d = zoo.load("iris")
    net = zoo.mlp(4, 3, hidden=(5,)).eval()
    obj = whybox.Objective(net, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    torch.jit.save(torch.jit.script(net), root / "net_ts.pt")
    torch.save(net.state_dict(), root / "net_sd.pt")
    (root / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Sequential):\n"
        "    def __init__(self):\n"
        "        super().__init__(nn.Linear(4, 5, dtype=torch.float64), nn.Tanh(), nn.Linear(5, 3, dtype=torch.float64))\n"
    )
    return root, d, obj


def write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_csv_round_trip_with_string_labels(tmp_path):
    p = write_csv(tmp_path / "a.csv", ["f1", "species", "f2"], [[1.5, "cat", 2], [0, "dog", -1], [3, "cat", 4e-3]])
    data = io.load_csv(p, "species")
    np.testing.assert_array_equal(data.X, [[1.5, 2], [0, -1], [3, 4e-3]])
    assert data.feature_names == ["f1", "f2"]
    (y,), names = io.encode_labels(data.y)
    assert names == ["cat", "dog"] and y.tolist() == [0, 1, 0]


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (["a", "b"], [[1, 2]], "no label column 'label'"),
        (["a", "label"], [[1, 0], [2]], "line 3 has 1 fields"),
        (["a", "label"], [["x", 0]], "'x' is not a number"),
        (["a", "label"], [], "header row and at least one data row"),
        (["a", "label"], [["nan", 1]], "NaN or inf"),
        (["label"], [[1]], "no feature columns"),
    ],
)
def test_bad_csv_names_the_problem(tmp_path, header, rows, message):
    p = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(ValueError, match=message):
        io.load_csv(p)


def test_npz_splits_and_errors(tmp_path):
    X, y = np.random.default_rng(0).normal(size=(6, 3)), np.array([0, 1, 0, 1, 1, 0])
    np.savez(tmp_path / "ok.npz", X=X, y=y, X_test=X[:2], y_test=y[:2])
    parts = io.load_npz(tmp_path / "ok.npz")
    assert set(parts) == {"train", "test"} and parts["test"].X.shape == (2, 3)
    np.savez(tmp_path / "short.npz", X=X, y=y[:5])
    with pytest.raises(ValueError, match="6 rows but .* 5 labels"):
        io.load_npz(tmp_path / "short.npz")
    np.savez(tmp_path / "nokeys.npz", data=X)
    with pytest.raises(ValueError, match="needs arrays 'X' and 'y'"):
        io.load_npz(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "obj.npz", X=np.array([{"a": 1}] * 6, dtype=object), y=y)
    with pytest.raises(ValueError, match="not a readable .npz"):  # object arrays would need pickle: refused
        io.load_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        io.load_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        io.load_data(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unknown format"):
        io.load_data(write_csv(tmp_path / "x.txt", ["a"], []))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (6, 5), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    data = io.load_image_folder(tmp_path / "imgs")
    assert data.X.shape == (6, 1, 6, 5) and data.image_shape == (1, 6, 5)
    assert 0 <= data.X.min() and data.X.max() <= 1
    assert data.y.tolist() == ["cat"] * 3 + ["dog"] * 3
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(tmp_path / "imgs" / "dog" / "big.png")
    with pytest.raises(ValueError, match="different sizes"):
        io.load_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "dog" / "big.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot be read"):
        io.load_image_folder(tmp_path / "imgs")


def test_torchscript_model_gives_the_same_influence(iris_net):
    root, d, obj = iris_net
    model = io.load_model(root / "net_ts.pt")
    ts_obj = whybox.Objective(model, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01)
    torch.testing.assert_close(ts_obj.risk_grad(), obj.risk_grad())
    torch.testing.assert_close(ts_obj.hessian(), obj.hessian())
    want = whybox.InfluenceFunction(obj, whybox.Exact(damping=1.0)).fit().up_loss(d.X_test[:3], d.y_test[:3])
    got = whybox.InfluenceFunction(ts_obj, whybox.Exact(damping=1.0)).fit().up_loss(d.X_test[:3], d.y_test[:3])
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_state_dict_with_code_file(iris_net):
    root, d, obj = iris_net
    model = io.load_model(root / "net_sd.pt", code=root / "net.py")
    torch.testing.assert_close(model(d.X_test), obj.outputs(d.X_test).detach())


def test_model_errors_are_one_line(iris_net, tmp_path):
    root, d, _ = iris_net
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="cannot be read as weights") as e:
        io.load_model(tmp_path / "corrupt.pt", code=root / "net.py")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        io.load_model(tmp_path / "corrupt.pt")
    (tmp_path / "raises.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    with pytest.raises(ValueError, match="raised RuntimeError: boom second line") as e:
        io.load_model(root / "net_sd.pt", code=tmp_path / "raises.py")
    assert "\n" not in str(e.value)
    (tmp_path / "other.py").write_text("import torch\nfrom torch import nn\ndef build_model():\n    return nn.Linear(2, 2)\n")
    with pytest.raises(ValueError, match="does not fit the model"):
        io.load_model(root / "net_sd.pt", code=tmp_path / "other.py")
    # a whole pickled module is not a state dict: weights_only=True refuses to unpickle it
    torch.save(nn.Linear(2, 2), tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="cannot be read as weights"):
        io.load_model(tmp_path / "pickled.pt", code=tmp_path / "other.py")


def test_load_study_sklearn_splits_and_standardises(tmp_path):
    d = zoo.load("iris", standardize=False)
    X, y = d.X_train.numpy(), d.y_train.numpy()
    p = write_csv(tmp_path / "iris.csv", ["a", "b", "c", "e", "label"], [list(r) + [int(t)] for r, t in zip(X, y)])
    study = load_study(DataSettings(train=p, standardize=True, test_fraction=0.25), ModelSettings(sklearn="logistic", C=2.0))
    n = len(X)
    assert study.objective.n + len(study.X_test) == n
    assert len(study.X_test) == round(0.25 * n)
    assert study.objective.weight_decay == {"weight": pytest.approx(1 / (2.0 * study.objective.n)), "bias": 0.0}
    assert abs(study.objective.X.mean().item()) < 1e-9  # standardised on the training part
    assert study.show_train is not None and study.show_train.max() > 2  # raw values kept for display
    with pytest.raises(ValueError, match="needs its test data"):
        load_study(DataSettings(train=p), ModelSettings(model=p))
    with pytest.raises(ValueError, match="exactly one model"):
        load_study(DataSettings(train=p))


def test_string_labels_in_another_class_order_are_detected_and_fixed(tmp_path):
    """A model whose outputs are (dog, cat, bird) — not the sorted order — is refused with the order
    that fits, and explained correctly once the order is given."""
    import subprocess
    import sys

    d = zoo.load("iris")
    names = np.array(["dog", "cat", "bird"])  # output k of the trained model is names[k]
    net = nn.Linear(4, 3, dtype=torch.float64)
    zoo.train(net, "cross_entropy", d.X_train, d.y_train, weight_decay=0.01, tol=1e-9)
    (tmp_path / "net.py").write_text("import torch\nfrom torch import nn\n\ndef build_model():\n"
                                     "    return nn.Linear(4, 3, dtype=torch.float64)\n")
    torch.save(net.state_dict(), tmp_path / "net.pt")
    np.savez(tmp_path / "d.npz", X=d.X_train.numpy(), y=names[d.y_train.numpy()],
             X_test=d.X_test.numpy(), y_test=names[d.y_test.numpy()])
    base = [sys.executable, "-m", "whybox", "explain", "--train", str(tmp_path / "d.npz"), "--model",
            str(tmp_path / "net.pt"), "--model-code", str(tmp_path / "net.py"), "--weight-decay", "0.01", "-q"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--class-order dog,cat,bird" in r.stderr, r.stderr
    r = subprocess.run(base + ["--class-order", "dog,cat,bird", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    import json

    doc = json.loads(r.stdout)
    study = load_study(DataSettings(train=tmp_path / "d.npz"),
                       ModelSettings(model=tmp_path / "net.pt", model_code=tmp_path / "net.py", weight_decay=0.01,
                                     class_order=["dog", "cat", "bird"]))
    assert study.class_names == ["dog", "cat", "bird"]
    acc = (study.objective.predict()[0] == study.objective.y).double().mean()
    assert acc > 0.9 and doc["label"] in (0, 1, 2)


def test_integer_labels_beyond_int64_are_read_as_numbers():
    from whybox.io import _labels_array

    assert _labels_array(["1", "0", "2"]).dtype == np.int64
    big = _labels_array(["9.223372036854776e+18", "1"])
    assert big.dtype == np.float64 and big[0] == 2.0**63
