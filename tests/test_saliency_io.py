"""Test-bed generation and training, model/image loading, PNG output and the ``whybox saliency`` CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from whybox.cli import app
from whybox.io import load_model
from whybox.saliency import MeaningfulPerturbation, load_image, save_result
from whybox.saliency.testbed import load_or_train, make_testbed
from whybox.saliency.testbed import testbed_cnn as build_cnn

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


MODEL_PY = textwrap.dedent("""
    import torch
    from torch import nn

    class Model(nn.Module):
        '''Class 1 = bright centre (rows/cols 8..23 of 32): a ground-truth region model.'''
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 1, 1, bias=False)
            self.gain = nn.Parameter(torch.tensor(1.0))
        def forward(self, x):
            m = torch.zeros(x.shape[-2:]); m[8:24, 8:24] = 1
            s = (self.conv(x)[:, 0] * m).sum((1, 2)) / m.sum()
            z = self.gain * (s - 0.6)
            return torch.stack([torch.zeros_like(z), z], 1)
    """)


def _model():
    """MODEL_PY's network with fixed weights: class 1 = a bright centre square (rows/cols 8..23)."""
    ns: dict = {}
    exec(MODEL_PY, ns)
    net = ns["Model"]()
    with torch.no_grad():
        net.conv.weight.fill_(1 / 3)
        net.gain.fill_(30.0)
    return net


def _write_model(tmp_path: Path) -> tuple[Path, Path]:
    py = tmp_path / "net.py"
    py.write_text(MODEL_PY)
    net = _model()
    ck = tmp_path / "net.pt"
    torch.save(net.state_dict(), ck)
    return py, ck


def _write_image(tmp_path: Path, mode: str = "RGB") -> Path:
    from PIL import Image
    a = np.full((32, 32, 3), 70, np.uint8)
    a[8:24, 8:24] = 240
    p = tmp_path / "img.png"
    Image.fromarray(a if mode == "RGB" else a[..., 0], mode).save(p)
    return p


# --- test-bed ------------------------------------------------------------------------------------

def test_testbed_boxes_hold_the_objects_and_generation_is_deterministic():
    tb = make_testbed(20, 32, "test", seed=5)
    assert tb.images.shape == (20, 3, 32, 32) and tb.images.min() >= 0 and tb.images.max() <= 1
    inside = tb.box_masks()
    assert (tb.masks & ~inside).sum() == 0                # every object pixel lies in its box
    assert torch.equal(make_testbed(20, 32, "test", seed=5).images, tb.images)
    b = tb.boxes
    assert ((b[:, 2] - b[:, 0]) <= 16).all() and ((b[:, 3] - b[:, 1]) <= 16).all()
    # the digit is brighter than the clutter around it
    bright = tb.images.mean(1)
    assert (bright[tb.masks].mean() > bright[~inside].mean() + 0.3)


def test_a_tiny_testbed_cnn_learns_and_caches(tmp_path):
    model, info = load_or_train(tmp_path, progress=False, n_train=1500, epochs=4, width=8, n_test=200)
    assert info["cached"] is False and Path(info["cache"]).exists()
    assert info["test_accuracy"] > 0.6                   # chance is 0.1 (measured 0.87; the full model ~0.95)
    again, info2 = load_or_train(tmp_path, progress=False, n_train=1500, epochs=4, width=8, n_test=200)
    assert info2["cached"] is True
    x = make_testbed(4, 32, "test", seed=0).images
    assert torch.allclose(model(x), again(x))


def test_the_shipped_demo_weights_load_and_reach_the_reported_accuracy(tmp_path):
    """`saliency --demo` trains nothing: the default settings load the weights shipped in the package,
    and they score on the held-out test-bed exactly what scripts/train_saliency_testbed.py reported."""
    from whybox.saliency.testbed import DEFAULTS, SHIPPED, testbed_accuracy

    assert SHIPPED.exists() and SHIPPED.stat().st_size < 1_000_000
    model, info = load_or_train(tmp_path / "empty-cache", progress=False)
    assert info["source"] == "shipped" and info["cached"] is True
    assert not (tmp_path / "empty-cache").exists()           # nothing trained, nothing cached
    assert {k: info[k] for k in DEFAULTS} == DEFAULTS
    acc = testbed_accuracy(model, info["size"], info["seed"], info["n_test"])  # recomputed independently of the file
    assert acc == pytest.approx(info["test_accuracy"], abs=0.5 / info["n_test"])
    assert acc > 0.9                                          # chance is 0.1
    again, _ = load_or_train(tmp_path, progress=False)
    x = make_testbed(3, 32, "test", seed=4).images
    assert torch.equal(model(x), again(x))


# --- loading ---------------------------------------------------------------------------------------

def test_python_model_with_state_dict_and_torchscript(tmp_path):
    py, ck = _write_model(tmp_path)
    net = load_model(ck, code=py)
    x = load_image(_write_image(tmp_path))
    assert x.shape == (1, 3, 32, 32) and float(x.max()) == pytest.approx(240 / 255)
    assert torch.softmax(net(x), 1)[0, 1] > 0.99
    ts = tmp_path / "net.ts"
    torch.jit.script(net).save(str(ts))
    assert torch.allclose(load_model(ts)(x), net(x))
    # a torch.export program through the same loader; meaningful perturbation switches its mode freely
    pt2 = tmp_path / "net.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (x.expand(2, -1, -1, -1),), dynamic_shapes=({0: batch},)), str(pt2))
    exported = load_model(pt2)
    assert torch.allclose(exported(x.expand(3, -1, -1, -1)), net(x).expand(3, -1))
    res_pt2 = MeaningfulPerturbation(exported, perturbation="constant", iterations=20).explain(x)
    assert res_pt2.prob_before[0] == pytest.approx(float(torch.softmax(net(x), 1)[0, 1]), rel=1e-5)
    res = MeaningfulPerturbation(net, perturbation="constant", iterations=80).explain(x)
    files = save_result(res, tmp_path / "out")
    assert sorted(files) == ["heatmap", "mask", "original", "overlay", "perturbed"]
    from PIL import Image
    assert Image.open(files["overlay"]).size == (480, 400)


def test_figures_have_titles_colour_bars_and_the_object_box():
    """Checked on the Figure objects: every panel has a title naming what it shows, the maps have a
    colour bar, the box is drawn where it lies (pixel edges at ±0.5) and the maximum is marked."""
    from matplotlib.patches import Rectangle

    from whybox.saliency import max_point, result_figures

    net = _model()
    x = torch.full((1, 3, 32, 32), 70 / 255)
    x[..., 8:24, 8:24] = 240 / 255
    res = MeaningfulPerturbation(net, perturbation="constant", iterations=60).explain(x)
    box = (8, 8, 24, 24)
    figs = result_figures(res, 0, box=box)
    assert sorted(figs) == ["heatmap", "mask", "original", "overlay", "perturbed"]
    for name, fig in figs.items():
        ax = fig.axes[0]
        assert ax.get_title().strip(), name
        rects = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(rects) == 1, name
        assert rects[0].get_xy() == (7.5, 7.5) and rects[0].get_width() == 16 and rects[0].get_height() == 16
        has_bar = len(fig.axes) == 2
        assert has_bar == (name in ("heatmap", "overlay", "mask")), name
        assert tuple(fig.get_size_inches() * fig.dpi) == (480, 400)
    assert "class 1" in figs["original"].axes[0].get_title()
    assert "→" in figs["perturbed"].axes[0].get_title()
    with torch.no_grad():                                          # what the deletion turned the image into
        after = torch.softmax(net(res.perturbed), 1)
    assert torch.equal(res.class_after, after.argmax(1)) and torch.allclose(res.class_prob_after, after.max(1).values)
    (line,) = figs["heatmap"].axes[0].lines
    r, c = max_point(res.heatmap[0])
    assert (line.get_xdata()[0], line.get_ydata()[0]) == (c, r)
    assert figs["heatmap"].axes[1].get_ylabel()                    # the colour bar says what it measures
    assert all(not [p for p in f.axes[0].patches if isinstance(p, Rectangle)]
               for f in result_figures(res, 0).values())        # no box given: none drawn


def test_saving_pngs_sets_no_global_matplotlib_state(tmp_path):
    """save_result builds Figures directly: pyplot is never imported, no backend is chosen."""
    code = textwrap.dedent(f'''
        import sys, torch
        torch.set_num_threads(1)
        from whybox.saliency import GradientSaliency, save_result
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
        files = save_result(GradientSaliency(net).explain(torch.rand(1, 3, 16, 16)), {str(tmp_path)!r})
        assert sorted(files) == ["heatmap", "original", "overlay"], files
        assert "matplotlib.pyplot" not in sys.modules
        print("ok")
    ''')
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_loading_errors_are_clear(tmp_path):
    py, ck = _write_model(tmp_path)
    notimg = tmp_path / "notes.png"
    notimg.write_text("this is not an image")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(notimg)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_model(ck)
    bad = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(2, 3, 1, 1)}, bad)
    with pytest.raises(ValueError, match="does not fit the model"):
        load_model(bad, code=py)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ValueError, match="no build_model"):
        load_model(empty)
    with pytest.raises(ValueError, match="--mean needs 1 or 3 values"):
        load_image(_write_image(tmp_path), mean=[0.1, 0.2])


# --- CLI -------------------------------------------------------------------------------------------

def test_cli_writes_pngs_and_prints_probabilities(tmp_path):
    py, ck = _write_model(tmp_path)
    img = _write_image(tmp_path)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["saliency", str(img), "--model", str(py), "--checkpoint", str(ck),
                                 "--perturbation", "constant", "--iterations", "150", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "class 1: probability before" in r.output and "after the deletion mask" in r.output
    after = float(r.output.split("after the deletion mask")[1].split(":")[1].split("%")[0])
    assert after < 10.0
    for name in ("original", "mask", "heatmap", "perturbed", "overlay"):
        assert (out / f"{name}.png").exists()


def _main(capsys, monkeypatch, *args: str) -> tuple[int, str]:
    """Run the real entry point (``whybox.cli.main``) in-process; return (exit code, stderr)."""
    from whybox.cli import main
    monkeypatch.setattr(sys, "argv", ["whybox", "saliency", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def test_cli_bad_input_exits_2_with_one_clear_line(tmp_path, capsys, monkeypatch):
    py, ck = _write_model(tmp_path)
    notimg = tmp_path / "data.png"
    notimg.write_text("hello")
    code, err = _main(capsys, monkeypatch, str(notimg), "--model", str(py), "--checkpoint", str(ck))
    assert code == 2 and "not an image file" in err and err.count("\n") == 1
    gray = _write_image(tmp_path, "L")
    code, err = _main(capsys, monkeypatch, str(gray), "--model", str(py), "--checkpoint", str(ck), "--channels", "1")
    assert code == 2 and "expects 3 channel(s)" in err
    code, err = _main(capsys, monkeypatch, str(_write_image(tmp_path)), "--model", str(py), "--checkpoint", str(ck),
                      "--target", "5")
    assert code == 2 and "class 5 is out of range" in err
    code, err = _main(capsys, monkeypatch, "--no-progress")
    assert code == 2 and "--demo" in err
    code, err = _main(capsys, monkeypatch, str(_write_image(tmp_path)), "--model", str(ck))
    assert code == 2 and "not a TorchScript file" in err


def test_cli_end_to_end_in_a_fresh_process(tmp_path):
    notimg = tmp_path / "data.png"
    notimg.write_text("hello")
    py, ck = _write_model(tmp_path)
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "whybox", "saliency", str(notimg), "--model", str(py)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("whybox: error:") and "not an image file" in r.stderr


def test_cli_demo_uses_the_testbed(tmp_path, monkeypatch):
    import whybox.saliency.testbed as tbmod
    tiny = build_cnn(width=4)
    monkeypatch.setattr(tbmod, "load_or_train", lambda cache, progress=True: (
        tiny, {"test_accuracy": 0.1, "cache": str(cache), "cached": True, "size": 32}))
    r = CliRunner().invoke(app, ["saliency", "--demo", "--index", "2", "--iterations", "20", "--out",
                                 str(tmp_path), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "image 2: digit" in r.output and "pointing game" in r.output
    assert (tmp_path / "overlay.png").exists() and (tmp_path / "mask.png").exists()


def test_demo_runs_on_the_shipped_cnn_and_reports_where_the_maximum_is(tmp_path, monkeypatch):
    monkeypatch.setenv("WHYBOX_CACHE", str(tmp_path / "cache"))
    r = CliRunner().invoke(app, ["saliency", "--demo", "--iterations", "30", "--out", str(tmp_path / "out"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "weights shipped with whybox" in r.output and not (tmp_path / "cache").exists()
    assert "image 0: digit 8, object box rows 12–27, cols 13–23 (inclusive)" in r.output
    line = next(x for x in r.output.splitlines() if x.startswith("pointing game:"))
    assert ("hit" in line) != ("miss" in line) and "the heat map's maximum (row" in line
    assert (tmp_path / "out" / "overlay.png").exists()


def test_pointing_line_says_how_far_outside_and_compares_with_the_mask_cell():
    from whybox.cli.saliency import pointing_line
    from whybox.saliency import SaliencyResult, box_distance

    box = torch.tensor([4, 4, 8, 8])                      # rows/cols 4..7
    assert box_distance((5, 6), box) == 0 and box_distance((8, 5), box) == 1 and box_distance((1, 10), box) == 3

    def result(r, c, settings=True):
        heat = torch.zeros(1, 16, 16)
        heat[0, r, c] = 1.0
        extra = {"settings": {"mask_hw": (8, 8)}} if settings else {}
        return SaliencyResult(torch.zeros(1, 3, 16, 16), torch.tensor([0]), heat, torch.tensor([0.9]), "t", extra=extra)

    assert pointing_line(result(5, 6), box) == "pointing game: hit — the heat map's maximum (row 5, col 6) is inside the object box"
    miss = pointing_line(result(9, 6), box)
    assert "miss" in miss and "(row 9, col 6) is 2 px outside" in miss and "within one 2-px cell of the 8×8 mask" in miss
    assert "beyond one 2-px cell" in pointing_line(result(12, 6), box)
    assert pointing_line(result(12, 6, settings=False), box).endswith("is 5 px outside the object box")
