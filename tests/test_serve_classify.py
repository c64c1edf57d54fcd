"""POST /v1/classify: image upload -> torchvision-style preprocessing -> top-k classes."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from test_serve_helpers import NUM_CLASSES, load_tiny, running_server, write_tiny_onnx

from resnext_compiler.dataset_types import IMAGENET_MEAN as _MEAN
from resnext_compiler.dataset_types import IMAGENET_STD as _STD
from resnext_compiler.input_contract import InputContract, default_contract
from resnext_compiler.runtimes.serve.images import preprocess

IMAGENET_MEAN, IMAGENET_STD = np.array(_MEAN), np.array(_STD)
CONTRACT_32 = default_contract(3, 32, 32)  # what a model without a recorded contract gets

LABELS = [f"class-{index}" for index in range(NUM_CLASSES)]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("classify") / "tiny.onnx", seed=5)


@pytest.fixture(scope="module")
def server(tiny_path: Path):
    with running_server([load_tiny(tiny_path)], labels={"tiny": LABELS},
                        max_image_pixels=100_000) as running:
        yield running


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def gradient_image(width: int = 64, height: int = 48) -> Image.Image:
    x, y = np.meshgrid(np.linspace(0, 255, width), np.linspace(0, 255, height))
    pixels = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def logits_for(path: Path, pixels: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": pixels})[0][0]


def test_preprocessing_matches_torchvision_eval_transform() -> None:
    transforms = pytest.importorskip("torchvision.transforms")
    image = gradient_image()
    # torchvision's ImageNet evaluation transform scaled to a 32x32 model: 32 / 0.875 = 36.6 -> 37
    expected = transforms.Compose([
        transforms.Resize(37), transforms.CenterCrop(32), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist()),
    ])(image).numpy()
    crop_contract = InputContract(3, 32, 32, "crop", 0.875)  # the ImageNet recipe at 32 px
    np.testing.assert_allclose(preprocess(image, crop_contract)[0], expected, atol=1e-5)


def test_uniform_colour_normalises_to_imagenet_statistics() -> None:
    pixels = preprocess(Image.new("RGB", (50, 70), (255, 0, 128)), CONTRACT_32)
    assert pixels.shape == (1, 3, 32, 32) and pixels.dtype == np.float32
    expected = (np.array([1.0, 0.0, 128 / 255]) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(pixels[0, :, 5, 7], expected, rtol=1e-6)
    np.testing.assert_allclose(pixels[0, 0], expected[0], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_classify_uploaded_image_returns_labelled_top_k(server, tiny_path: Path,
                                                         fmt: str) -> None:
    data = encoded(gradient_image(), fmt)
    response = httpx.post(f"{server.url}/v1/classify?top_k=3",
                          files={"file": (f"image.{fmt.lower()}", data, f"image/{fmt.lower()}")})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (32, 32))  # the transform lets libjpeg decode small when it can
    logits = logits_for(tiny_path, preprocess(image.convert("RGB"), CONTRACT_32))
    assert [p["index"] for p in predictions] == list(np.argsort(-logits)[:3])
    assert [p["label"] for p in predictions] == [LABELS[p["index"]] for p in predictions]
    np.testing.assert_allclose([p["logit"] for p in predictions], np.sort(logits)[::-1][:3],
                               rtol=1e-4, atol=1e-4)
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert predictions[0]["score"] == pytest.approx(softmax.max(), rel=1e-4)


def test_classify_accepts_a_raw_png_body(server) -> None:
    data = encoded(gradient_image(40, 40), "PNG")
    response = httpx.post(f"{server.url}/v1/classify", content=data,
                          headers={"content-type": "image/png"})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 5  # the default top_k


def test_images_over_the_pixel_limit_are_refused_before_decoding(server) -> None:
    big = encoded(Image.new("RGB", (400, 400)), "PNG")  # 160,000 pixels > 100,000
    response = httpx.post(f"{server.url}/v1/classify", files={"file": ("big.png", big)})
    assert response.status_code == 413 and "pixels" in response.json()["error"]


def test_non_images_and_other_formats_are_415(server) -> None:
    for name, data in [("notes.txt", b"hello, world"),
                       ("image.gif", encoded(gradient_image(), "GIF"))]:
        response = httpx.post(f"{server.url}/v1/classify", files={"file": (name, data)})
        assert response.status_code == 415, name
        assert "JPEG or PNG" in response.json()["error"]
