"""``whybox saliency``: which part of the image made the model say this? (meaningful perturbation)"""

from __future__ import annotations

from pathlib import Path

import typer

from whybox.cli._app import BadInput, app


def _floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BadInput(f"--{name} must be comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}") from None


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        vals = [int(p) for p in parts if p.strip()]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2) or min(vals) < 8:
        raise BadInput(f"--size must be SIDE or HxW with sides ≥ 8, e.g. 224 or 224x224; got {text!r}")
    return (vals[0], vals[-1])


@app.command()
def saliency(
    image: Path | None = typer.Argument(None, help="Image file to explain (PNG, JPEG, ...). Not needed with --demo."),
    model: Path | None = typer.Option(None, "--model", help="TorchScript file, a .pt2 torch.export program, or a Python file defining build_model() / one nn.Module class."),
    checkpoint: Path | None = typer.Option(None, help="State dict for a Python model file (loaded with weights_only=True)."),
    demo: bool = typer.Option(False, "--demo", help="Explain an image of the generated digits-on-clutter test-bed."),
    index: int = typer.Option(0, help="--demo: which test-bed image."),
    cache: Path | None = typer.Option(None, help="--demo: cache folder for the trained test-bed CNN (default ~/.cache/whybox)."),
    target: int | None = typer.Option(None, help="Class to explain (default: the predicted class)."),
    channels: int = typer.Option(3, help="Read the image as 3 (RGB) or 1 (grayscale) channels."),
    size: str | None = typer.Option(None, help="Resize the image to SIDE or HxW before explaining."),
    mean: str | None = typer.Option(None, help="Per-channel mean subtracted after scaling to [0, 1], e.g. 0.485,0.456,0.406."),
    std: str | None = typer.Option(None, help="Per-channel std divided by, e.g. 0.229,0.224,0.225."),
    method: str = typer.Option("meaningful", help="meaningful, gradient, gradxinput, occlusion or random."),
    perturbation: str = typer.Option("blur", help="Meaningful perturbation: blur, constant or noise."),
    mode: str = typer.Option("delete", help="delete (smallest deletion that kills the class) or preserve."),
    optimizer: str = typer.Option("adam", help="adam or lbfgs."),
    iterations: int = typer.Option(300, help="Adam steps / L-BFGS function evaluations."),
    out: Path = typer.Option(Path("whybox-out/saliency"), help="Folder for the PNGs."),
    seed: int = typer.Option(0, help="Random seed (jitter, noise)."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's; 1 with --demo, whose 32-px image "
                                                  "gains nothing from more and loses up to 7× on a busy machine)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Learn a meaningful-perturbation mask (or a baseline map) for one image and write original,
    mask, heat map, perturbed and overlay PNGs; print the class probability before and after."""
    import torch

    from whybox.saliency import make_method, save_result
    from whybox.saliency.perturbation import MeaningfulPerturbation

    if threads is not None and threads < 1:
        raise BadInput("--threads must be at least 1")
    if threads is None and demo:
        threads = 1  # one 32-px image: a second thread only adds synchronisation (measured: 35.6 s vs 5.1 s, loaded 2 cores)
    if threads is not None:
        torch.set_num_threads(threads)
    box = None
    if demo:
        if image is not None or model is not None:
            raise BadInput("--demo explains a generated test-bed image; drop IMAGE and --model, or drop --demo")
        from whybox.saliency.testbed import load_or_train, make_testbed

        if index < 0:
            raise BadInput("--index must be ≥ 0")
        net, info = load_or_train(cache, progress=progress)
        where = {"shipped": "weights shipped with whybox", "cache": "cached", "trained": "trained now"}.get(
            info.get("source", ""), "cached" if info.get("cached") else "trained now")
        print(f"test-bed CNN: test accuracy {info['test_accuracy']:.3f} ({where}: {info['cache']})")
        tb = make_testbed(index + 1, info["size"], "test", seed=1)
        x = tb.images[index:index + 1]
        box = tb.boxes[index]
        print(f"image {index}: digit {int(tb.labels[index])}, object box rows {int(box[0])}–{int(box[2]) - 1}, "
              f"cols {int(box[1])}–{int(box[3]) - 1} (inclusive)")
    else:
        if image is None or model is None:
            raise BadInput("give an IMAGE and --model MODEL (TorchScript or Python file), or use --demo")
        from whybox.io import load_model
        from whybox.saliency.io import load_image

        if model.suffix == ".py":
            net = load_model(checkpoint, code=model) if checkpoint is not None else load_model(model)
        elif checkpoint is not None:
            raise BadInput("--checkpoint goes with a Python model file (--model net.py); a TorchScript or .pt2 "
                           "file carries its own weights")
        else:
            net = load_model(model)
        x = load_image(image, channels, _size(size), _floats(mean, "mean"), _floats(std, "std"))
    if method in ("meaningful", "mp"):
        explainer = MeaningfulPerturbation(net, perturbation=perturbation, mode=mode, optimizer=optimizer,  # type: ignore[arg-type]
                                           iterations=iterations, seed=seed, progress=progress)
    else:
        explainer = make_method(method, net)
    res = explainer.explain(x, target)
    c = int(res.targets[0])
    print(f"class {c}: probability before {100 * float(res.prob_before[0]):.2f} %")
    if hasattr(res, "prob_after"):
        what = "deletion" if res.mode == "delete" else "preservation"
        print(f"after the {what} mask ({res.perturbation}, {res.optimizer}): {100 * float(res.prob_after[0]):.2f} %; "
              f"{100 * float(res.fraction_deleted[0]):.1f} % of the image deleted; {res.seconds:.1f} s")
        if int(res.class_after[0]) != c:
            print(f"the model now predicts class {int(res.class_after[0])} ({100 * float(res.class_prob_after[0]):.1f} %)")
    if box is not None:
        print(pointing_line(res, box))
    files = save_result(res, out, box=box)
    for name, p in files.items():
        print(f"wrote {name}: {p}")


def pointing_line(res, box) -> str:
    """The pointing game for one image, with where the maximum is: a miss says by how many pixels,
    and for a meaningful-perturbation mask whether that is within one mask cell (its resolution)."""
    from whybox.saliency.metrics import box_distance, max_point

    r, c = max_point(res.heatmap[0])
    gap = box_distance((r, c), box)
    where = f"the heat map's maximum (row {r}, col {c})"
    if gap == 0:
        return f"pointing game: hit — {where} is inside the object box"
    line = f"pointing game: miss — {where} is {gap} px outside the object box"
    settings = getattr(res, "extra", {}).get("settings")
    if settings is not None:
        cell = res.heatmap.shape[-2] / settings["mask_hw"][0]
        within = "within" if gap <= cell else "beyond"
        line += f" ({within} one {cell:g}-px cell of the {settings['mask_hw'][0]}×{settings['mask_hw'][1]} mask)"
    return line
