"""One loop, one contract: train on an image folder, export with the command `train` prints,
and `/v1/classify`, `evaluate MODEL.onnx` and `evaluate SPEC --weights` agree image for image;
the Triton repository carries the class names (tritonclient's classification request)."""

from __future__ import annotations

import csv
import io
import shlex
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image

from resnext_compiler.runtimes.serve.config import ServeConfig
from resnext_compiler.runtimes.serve.server import BackgroundServer, load_models

# Classes told apart by colour (RGB) or by brightness and stripes (grey).
RGB_CLASSES = {"crimson": (200, 30, 40), "forest": (30, 150, 50), "navy": (30, 40, 170)}
GREY_CLASSES = {"dark": 40, "light": 215, "stripes": None}


def tiny_spec(channels: int, classes: int) -> str:
    # crop 0.875 on the RGB model so the resize rule that differs from a plain resize is used
    preprocess = "preprocess: {resize: crop, crop_fraction: 0.875}\n" if channels == 3 else ""
    return f"""\
spec_version: 1
name: loop_{'rgb' if channels == 3 else 'grey'}
input: {{channels: {channels}, height: 16, width: 16}}
stem: cifar
block: {{type: bottleneck, cardinality: 2, base_width: 16}}
stages: [{{depth: 1, width: 8}}, {{depth: 1, width: 16, stride: 2}}]
head: {{num_classes: {classes}}}
train: {{dataset: imagefolder, epochs: 6, batch_size: 12, lr: 0.05, schedule: cosine,
         augment: none, weight_decay: 0.0}}
{preprocess}"""


def rgb_image(colour: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    height, width = rng.integers(18, 30, size=2)
    noise = rng.integers(-25, 26, size=(height, width, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8), "RGB")


def grey_image(level: int | None, rng: np.random.Generator) -> Image.Image:
    height, width = rng.integers(18, 30, size=2)
    if level is None:  # horizontal stripes, 4 px
        pixels = np.where((np.arange(height)[:, None] // 4) % 2 == 0, 30, 220)
        pixels = np.broadcast_to(pixels, (height, width))
    else:
        pixels = np.full((height, width), level)
    noise = rng.integers(-20, 21, size=(height, width))
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "L")


def write_data(root: Path, grey: bool) -> None:
    rng = np.random.default_rng(1)
    classes = GREY_CLASSES if grey else RGB_CLASSES
    for split, count in (("train", 12), ("val", 5)):
        for name, value in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = grey_image(value, rng) if grey else rgb_image(value, rng)
                fmt = "JPEG" if i % 2 else "PNG"
                image.save(folder / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}", format=fmt)


def read_predictions(path: Path) -> dict[str, tuple[int, str]]:
    return {image: (index, label) for image, (index, label, _) in read_answers(path).items()}


def read_answers(path: Path) -> dict[str, tuple[int, str, float]]:
    """image -> (top-1 index, its label, its logit) from `evaluate --predictions`."""
    with path.open() as handle:
        return {row["image"]: (int(row["predicted"]), row["label"], float(row["logit"]))
                for row in csv.DictReader(handle)}


def export_command(train_output: str) -> list[str]:
    lines = train_output.splitlines()
    command = lines[lines.index("export it with:") + 1].strip()
    words = shlex.split(command)
    assert words[0] == "resnext-compile"
    return words[1:]


@pytest.mark.parametrize("grey", [False, True], ids=["rgb", "grey"])
def test_served_evaluated_and_trained_forms_agree_image_for_image(
        grey: bool, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    classes = list(GREY_CLASSES if grey else RGB_CLASSES)
    write_data(tmp_path / "data", grey)
    spec = tmp_path / "spec.yaml"
    spec.write_text(tiny_spec(1 if grey else 3, len(classes)))
    run = tmp_path / "run"
    trained = run_cli("train", spec, "--data", tmp_path / "data", "--run-dir", run,
                      "--workers", "0", "--threads", "1")
    assert trained.code == 0, trained
    assert (run / "labels.txt").read_text().splitlines() == sorted(classes)

    exported = run_cli(*export_command(trained.out))  # the exact command: into the run dir
    assert exported.code == 0, exported
    model = run / "model.onnx"
    assert exported.out.strip() == f"wrote {model}"

    onnx_csv, spec_csv = tmp_path / "onnx.csv", tmp_path / "spec.csv"
    by_onnx = run_cli("evaluate", model, "--data", tmp_path / "data", "--predictions", onnx_csv)
    assert by_onnx.code == 0, by_onnx
    by_spec = run_cli("evaluate", run / "spec.yaml", "--weights", run / "model.safetensors",
                      "--data", tmp_path / "data", "--workers", "0", "--predictions", spec_csv)
    assert by_spec.code == 0, by_spec
    onnx_answers, spec_answers = read_predictions(onnx_csv), read_predictions(spec_csv)
    assert len(onnx_answers) == 5 * len(classes)

    models, labels = load_models(model, ServeConfig(device="cpu", max_batch=4))
    served, served_logits = {}, {}
    with BackgroundServer(models, labels=labels) as server:
        for image in onnx_answers:
            data = Path(image).read_bytes()
            reply = httpx.post(f"{server.url}/v1/classify?top_k=1",
                               files={"file": (Path(image).name, data)})
            assert reply.status_code == 200, reply.text
            top = reply.json()["predictions"][0]
            assert reply.json()["label"] == top["label"]
            served[image] = (top["index"], top["label"])
            served_logits[image] = top["logit"]
        if grey:  # a grey model takes colour images too (converted to one channel)
            first = sorted(onnx_answers)[0]
            buffer = io.BytesIO()
            Image.open(first).convert("RGB").save(buffer, format="PNG")
            reply = httpx.post(f"{server.url}/v1/classify", content=buffer.getvalue(),
                               headers={"content-type": "image/png"})
            assert reply.status_code == 200, reply.text
            if first.endswith(".png"):  # lossless: the same pixels, so the same answer
                assert reply.json()["predictions"][0]["index"] == served[first][0]
    assert served == onnx_answers == spec_answers
    # The same pixels, not only the same answers: the served top-1 logit is evaluate's (same
    # file, same transform), and the PyTorch form's up to float rounding of folded BatchNorm.
    onnx_logits = {k: v[2] for k, v in read_answers(onnx_csv).items()}
    spec_logits = {k: v[2] for k, v in read_answers(spec_csv).items()}
    for image, logit in served_logits.items():
        assert logit == pytest.approx(onnx_logits[image], rel=1e-5, abs=1e-5), image
        assert logit == pytest.approx(spec_logits[image], rel=1e-4, abs=1e-4), image
    for image, (_, label) in served.items():
        assert label == Path(image).parent.name, image


def test_a_grey_model_classifies_colour_images_as_their_grey_version(tmp_path: Path) -> None:
    from resnext_compiler.image_transform import open_image, resize_and_crop
    from resnext_compiler.input_contract import InputContract

    contract = InputContract(1, 8, 8, "direct", 1.0, (0.5,), (0.25,))
    colour = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8))
    colour.save(tmp_path / "c.png")
    colour.convert("L").save(tmp_path / "g.png")
    pixels = resize_and_crop(open_image(tmp_path / "c.png", contract), contract)
    assert pixels.shape == (8, 8, 1)
    np.testing.assert_array_equal(
        pixels, resize_and_crop(open_image(tmp_path / "g.png", contract), contract))


@pytest.fixture(scope="module")
def trained_rgb_run(tmp_path_factory: pytest.TempPathFactory):
    """A run directory from a short training on the generated RGB folder."""
    from resnext_compiler.cli import main

    root = tmp_path_factory.mktemp("rgb_run")
    write_data(root / "data", grey=False)
    (root / "spec.yaml").write_text(tiny_spec(3, len(RGB_CLASSES)).replace("epochs: 6",
                                                                           "epochs: 2"))
    try:
        main(["train", str(root / "spec.yaml"), "--data", str(root / "data"), "--run-dir",
              str(root / "run"), "--workers", "0", "--threads", "1"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    return root


def test_triton_repository_names_classes_for_the_classification_extension(
        trained_rgb_run: Path, run_cli) -> None:
    root = trained_rgb_run
    result = run_cli(root / "run" / "spec.yaml", "--backend", "triton", "--weights",
                     root / "run" / "model.safetensors", "-o", root / "repo")
    assert result.code == 0, result
    model_dir = root / "repo" / "loop_rgb"
    config = (model_dir / "config.pbtxt").read_text()
    assert 'label_filename: "labels.txt"' in config
    assert 'key: "preprocess.crop_fraction"' in config and 'key: "preprocess.mean"' in config
    assert (model_dir / "labels.txt").read_text().splitlines() == sorted(RGB_CLASSES)

    from resnext_compiler.artifact_format import read_contract
    from resnext_compiler.image_transform import load_images_for_model

    contract = read_contract(root / "repo")
    assert contract.labels == tuple(sorted(RGB_CLASSES)) and contract.crop_fraction == 0.875
    images = sorted((root / "data" / "val").glob("*/0.png"))
    batch = load_images_for_model(images, contract)
    models, labels = load_models(root / "repo", ServeConfig(device="cpu", max_batch=4))
    with BackgroundServer(models, labels=labels) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.port}") as client:
            tensor = triton.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            wanted = triton.InferRequestedOutput("logits", class_count=2)
            answer = client.infer("loop_rgb", [tensor], outputs=[wanted]).as_numpy("logits")
    assert answer.shape == (len(images), 2)
    evaluated = run_cli("evaluate", root / "repo", "--data", root / "data", "--json")
    assert evaluated.code == 0, evaluated
    for image, row in zip(images, answer, strict=True):
        score, index, label = row[0].decode().split(":")
        assert label == contract.labels[int(index)] == image.parent.name
        assert float(score) >= float(row[1].decode().split(":")[0])


def test_in_graph_preprocessing_equals_the_external_transform(trained_rgb_run: Path,
                                                              run_cli) -> None:
    import onnxruntime as ort

    from resnext_compiler.artifact_format import read_contract
    from resnext_compiler.image_transform import load_pixels, normalise
    from resnext_compiler.input_contract import UINT8_NHWC

    root = trained_rgb_run
    common = [root / "run" / "spec.yaml", "--weights", root / "run" / "model.safetensors"]
    assert run_cli(*common, "-o", root / "float.onnx").code == 0
    result = run_cli(*common, "--image-input", "-o", root / "uint8.onnx")
    assert result.code == 0, result
    contract = read_contract(root / "uint8.onnx")
    assert contract.input_format == UINT8_NHWC
    pixels = load_pixels(sorted((root / "data" / "val").glob("*/*")), contract)
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (16, 16, 3)

    def run(path: Path, array: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": array})[0]

    in_graph = run(root / "uint8.onnx", pixels)
    external = run(root / "float.onnx", normalise(pixels, read_contract(root / "float.onnx")))
    np.testing.assert_allclose(in_graph, external, rtol=0, atol=1e-5)

    evaluated = run_cli("evaluate", root / "uint8.onnx", "--data", root / "data", "--json")
    assert evaluated.code == 0, evaluated


def test_fp16_files_evaluate_with_their_contract(trained_rgb_run: Path, run_cli) -> None:
    root = trained_rgb_run
    common = [root / "run" / "spec.yaml", "--weights", root / "run" / "model.safetensors"]
    assert run_cli(*common, "--dtype", "fp16", "-o", root / "half.onnx").code == 0
    assert run_cli(*common, "-o", root / "full.onnx").code == 0
    half = run_cli("evaluate", root / "half.onnx", "--data", root / "data", "--predictions",
                   root / "half.csv")
    full = run_cli("evaluate", root / "full.onnx", "--data", root / "data", "--predictions",
                   root / "full.csv")
    assert half.code == 0 and full.code == 0, (half, full)
    same = [a == b for a, b in zip(read_predictions(root / "half.csv").values(),
                                    read_predictions(root / "full.csv").values(), strict=True)]
    assert sum(same) >= len(same) - 1  # fp16 rounding may flip a near tie, no more
    assert "float16" in half.out or "fp16" in half.out


def test_inspect_prints_the_contract_of_a_compiled_model(trained_rgb_run: Path,
                                                        run_cli) -> None:
    root = trained_rgb_run
    assert run_cli(root / "run" / "spec.yaml", "-o", root / "inspect.onnx").code == 0
    text = run_cli("inspect", root / "inspect.onnx").out
    assert "scale to cover 18x18 (crop fraction 0.875), centre crop 16x16" in text
    assert "classes    3: crimson, forest, navy" in text


def test_evaluating_and_inspecting_a_compiled_model_never_imports_torch(trained_rgb_run: Path,
                                                                      run_cli) -> None:
    import subprocess
    import sys

    from test_onnx_backend import NO_TORCH

    root = trained_rgb_run
    assert run_cli(root / "run" / "spec.yaml", "--weights", root / "run" / "model.safetensors",
                   "--image-input", "-o", root / "notorch.onnx").code == 0
    for args in (["evaluate", str(root / "notorch.onnx"), "--data", str(root / "data")],
                 ["inspect", str(root / "notorch.onnx")]):
        done = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "no torch" in done.stdout, done.stderr
