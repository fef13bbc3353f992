"""``whybox explain`` on small data: every option path, outputs for scripts, and exit code 2 with
one clear line for bad input (including a hypothesis fuzz of malformed CSV/NPZ files)."""

from __future__ import annotations

import csv
import json
import re
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whybox import zoo
from whybox.cli import main


def run(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["whybox", *map(str, args)]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    d = zoo.load("iris", standardize=False)
    header = ["sepal_l", "sepal_w", "petal_l", "petal_w", "label"]

    def table(path, X, y):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows([list(np.round(r, 2)) + [int(t)] for r, t in zip(X, y)])

    table(root / "train.csv", d.X_train.numpy(), d.y_train.numpy())
    table(root / "test.csv", d.X_test.numpy(), d.y_test.numpy())
    Xs = zoo.load("iris")
    np.savez(root / "data.npz", X=Xs.X_train.numpy(), y=Xs.y_train.numpy(), X_test=Xs.X_test.numpy(), y_test=Xs.y_test.numpy())
    net = zoo.logistic_regression(4, 3)
    zoo.train(net, "cross_entropy", Xs.X_train, Xs.y_train, weight_decay=0.01, tol=1e-9)
    torch.jit.save(torch.jit.script(net), root / "lr_ts.pt")
    torch.save(net.state_dict(), root / "lr_sd.pt")
    (root / "lr.py").write_text("import torch\nfrom torch import nn\ndef build_model():\n    return nn.Linear(4, 3, dtype=torch.float64)\n")
    (root / "raises.py").write_text("import torch\nraise ImportError('no module named fancy_layers')\n")
    (root / "corrupt.pt").write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    np.savez(root / "mismatch.npz", X=Xs.X_train.numpy(), y=Xs.y_train.numpy()[:-3])
    with open(root / "wrongcols.csv", "w") as fh:
        fh.write("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,1,0\n")
    return root


def test_every_verb_has_help(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "explain" in out
    code, out, _ = run(["explain", "--help"], capsys)
    assert code == 0
    for option in ("--train", "--model", "--model-code", "--sklearn", "--loss", "--weight-decay", "--solver",
                   "--damping", "--top-k", "--device", "--out", "--report", "--json", "--quiet"):
        assert option in out


def test_embedded_dataset_json(capsys):
    code, out, err = run(["explain", "--dataset", "iris", "--json", "-q", "--top-k", "3"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["helpful"]) == 3 and "positive = the training point supports" in doc["sign"]
    scores = [r["score"] for r in doc["helpful"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert doc["label"] != doc["prediction"]  # the default test point is a misclassified one


def test_gauss_newton_curvature_equals_the_hessian_on_a_linear_model(capsys):
    docs = []
    for curvature in ("hessian", "ggn"):
        code, out, err = run(["explain", "--dataset", "iris", "--json", "-q", "--curvature", curvature], capsys)
        assert code == 0, err
        docs.append(json.loads(out))
    assert docs[1]["settings"]["curvature"] == "ggn"
    for a, b in zip(docs[0]["helpful"] + docs[0]["harmful"], docs[1]["helpful"] + docs[1]["harmful"]):
        assert a["index"] == b["index"] and a["score"] == pytest.approx(b["score"], rel=1e-8)


def test_store_on_a_local_dask_cluster_equals_the_in_process_scores(tmp_path, capsys):
    import zarr

    from whybox.study import DataSettings, load_study

    path = tmp_path / "scores.zarr"
    code, out, err = run(["explain", "--dataset", "iris", "-q", "--store", path, "--workers", "2"], capsys)
    assert code == 0, err
    assert f"wrote {path}" in out
    study = load_study(DataSettings(dataset="iris"))
    stored = zarr.open_group(str(path), mode="r")
    expected = study.attributor.scores(study.X_test, study.y_test).numpy()
    np.testing.assert_allclose(stored["scores"][:], expected, rtol=1e-10, atol=1e-15)
    assert stored["done"][:].all() and stored.attrs["sign"] == study.attributor.sign


def test_sklearn_on_csv_writes_json_csv_and_report(files, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run(["explain", "--train", files / "train.csv", "--test", files / "test.csv", "--sklearn", "logistic",
                          "--C", "2", "--standardize", "--out", out_dir, "--report", out_dir / "r.html", "--n-test", "3",
                          "--top-k", "4", "-q"], capsys)
    assert code == 0, err
    doc = json.loads((out_dir / "explanations.json").read_text())
    assert len(doc["test_points"]) == 3 and doc["settings"]["C"] == 2.0
    rows = list(csv.DictReader(open(out_dir / "scores.csv")))
    assert len(rows) == 3 * 2 * 4
    first = doc["test_points"][0]
    assert float(rows[0]["score"]) == pytest.approx(first["helpful"][0]["score"])
    assert "positive = the training point supports" in doc["sign_convention"] == first["sign"]
    selfs = list(csv.DictReader(open(out_dir / "self_scores.csv")))
    assert len(selfs) == 105 and float(selfs[0]["self_score"]) >= float(selfs[-1]["self_score"]) >= 0
    html = (out_dir / "r.html").read_text()
    assert html.count('class="test"') == 3 and "petal_l" in html


@pytest.mark.parametrize("model_args", [["--model", "lr_ts.pt"], ["--model", "lr_sd.pt", "--model-code", "lr.py"]])
def test_own_torch_model(files, model_args, capsys):
    args = [a if not a.endswith((".pt", ".py")) else files / a for a in model_args]
    code, out, err = run(["explain", "--train", files / "data.npz", *args, "--weight-decay", "0.01",
                          "--solver", "cg", "--json", "-q"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["settings"]["loss"] == "cross_entropy"  # inferred: integer labels, 3 outputs
    assert doc["settings"]["train_grad_norm"] < 1e-6  # the checkpoint is the trained optimum
    assert doc["diagnostics"]["relative_residual"] < 1e-8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train", "nope.csv", "--sklearn", "logistic"], "does not exist"),
        (["--train", "wrongcols.csv", "--test", "test.csv", "--sklearn", "logistic"], "shape"),
        (["--train", "train.csv", "--sklearn", "logistic", "--label-column", "species"], "no label column 'species'"),
        (["--train", "mismatch.npz", "--sklearn", "logistic"], "rows but"),
        (["--train", "data.npz", "--model", "corrupt.pt", "--model-code", "lr.py"], "cannot be read as weights"),
        (["--train", "data.npz", "--model", "corrupt.pt"], "not a TorchScript file"),
        (["--train", "data.npz", "--model", "lr_sd.pt", "--model-code", "raises.py"], "raised ImportError"),
        (["--train", "train.csv", "--sklearn", "forest"], "--sklearn must be one of"),
        (["--train", "train.csv", "--model", "lr_ts.pt"], "needs its test data"),
        (["--train", "data.npz", "--model", "lr_ts.pt", "--device", "tpu"], "not available"),
        (["--dataset", "iris", "--top-k", "0"], "--top-k must be >= 1"),
        (["--dataset", "cifar10"], "unknown data set"),
        (["--dataset", "iris", "--report", "r.pdf"], ".html"),
        (["--dataset", "iris", "--curvature", "fisher"], "--curvature must be one of hessian, ggn"),
        (["--dataset", "iris", "--workers", "2"], "add --store"),
        (["--dataset", "iris", "--store", "s.zarr", "--scheduler", "localhost"], "tcp://host:8786"),
        (["--train", "data.npz", "--model", "lr_ts.pt", "--loss", "hinge"], "hinge"),
    ],
)
def test_bad_input_exits_2_with_one_line(files, args, message, capsys, monkeypatch):
    monkeypatch.chdir(files)
    code, out, err = run(["explain", *args, "-q"], capsys)
    assert code == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("whybox: error:"), err
    assert message in lines[0]
    assert "Traceback" not in err


def _check_no_crash(path, capsys, extra=()):
    code, out, err = run(["explain", "--train", path, "--sklearn", "logistic", "-q", "--n-test", "1", "--top-k", "2", *extra], capsys)
    assert "Traceback" not in err + out
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("whybox: error:"), err


cells = st.one_of(st.integers(-3, 3).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.sampled_from(["", "a", "1e400", "-", '"', "0x1", " 2 "]))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.sampled_from(["label", "a", "b", "c", ""]), min_size=0, max_size=4),
       rows=st.lists(st.lists(cells, min_size=0, max_size=5), min_size=0, max_size=12))
def test_fuzz_malformed_csv_never_crashes(header, rows, tmp_path, capsys):
    p = tmp_path / "fuzz.csv"
    p.write_text("\n".join(",".join(r) for r in [header] + rows) + "\n")
    _check_no_crash(p, capsys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["bytes", "arrays"]), data=st.binary(max_size=200),
       n=st.integers(0, 12), m=st.integers(0, 12), d=st.integers(0, 3), dtype=st.sampled_from(["f8", "i4", "U3", "c16", "bool"]),
       keys=st.sampled_from([("X", "y"), ("X", "label"), ("X_train", "y_train"), ("X", "y", "X_test")]))
def test_fuzz_malformed_npz_never_crashes(kind, data, n, m, d, dtype, keys, tmp_path, capsys):
    p = tmp_path / "fuzz.npz"
    if kind == "bytes":
        p.write_bytes(data)
    else:
        rng = np.random.default_rng(n * 13 + m)
        X = rng.normal(size=(n,) + (d,) * min(d, 2)).astype(dtype) if dtype != "U3" else np.full((n, d), "ab")
        y = rng.integers(0, 2, size=m).astype(dtype) if dtype != "U3" else np.full(m, "c")
        arrays = dict(zip(keys, [X, y, X]))
        np.savez(p, **arrays)
    _check_no_crash(p, capsys)


def test_image_folder_and_regression(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, level in (("dark", 40), ("light", 200)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(np.clip(rng.normal(level, 30, (5, 5)), 0, 255).astype(np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    code, out, err = run(["explain", "--train", tmp_path / "imgs", "--sklearn", "logistic", "--test-fraction", "0.25",
                          "--report", tmp_path / "img.html", "--n-test", "2", "--top-k", "2", "--json", "-q"], capsys)
    assert code == 0, err
    html = (tmp_path / "img.html").read_text()
    assert html.count("<img") >= 2 * (2 + 4) and "light" in html  # images drawn, class names shown
    # regression: float labels, ridge, predictions are numbers
    X = rng.normal(size=(30, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=30)
    with open(tmp_path / "reg.csv", "w") as fh:
        fh.write("a,b,c,label\n" + "\n".join(",".join(f"{v:.4f}" for v in [*r, t]) for r, t in zip(X, y)) + "\n")
    code, out, err = run(["explain", "--train", tmp_path / "reg.csv", "--sklearn", "ridge", "--C", "10", "--json", "-q",
                          "--report", tmp_path / "reg.html"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["settings"]["loss"] == "squared_error" and isinstance(doc["prediction"], float)
    assert doc["confidence"] is None  # no confidence for a regression
    reg_html = (tmp_path / "reg.html").read_text()
    assert "WRONG" not in reg_html
    assert "✗" not in reg_html and "✓" not in reg_html
    assert re.search(r'class="status right">error [-+]', reg_html)


def test_ekfac_rank_tolerance_option(capsys):
    """--ekfac-rank-tolerance 0 is the exact dense EK-FAC route; a positive value the low-rank one."""
    for tol, scoring in (("0", "dense"), ("0.05", "low_rank")):
        code, out, err = run(["explain", "--dataset", "iris", "--solver", "ekfac", "--damping", "1e-3",
                              "--ekfac-rank-tolerance", tol, "--json", "-q"], capsys)
        assert code == 0, err
        assert json.loads(out)["diagnostics"]["scoring"] == scoring
    code, _, err = run(["explain", "--dataset", "iris", "--solver", "ekfac", "--ekfac-rank-tolerance", "1"], capsys)
    assert code == 2 and "--ekfac-rank-tolerance must be in [0, 1)" in err
