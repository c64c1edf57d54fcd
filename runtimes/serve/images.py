"""Image preprocessing for `POST /v1/classify`, the way torchvision evaluates ImageNet models.

Resize so the crop is 87.5% of the shorter side (224 <- 256, torchvision's `Resize(256)` +
`CenterCrop(224)` evaluation transform), centre-crop to the model's H x W, scale to [0, 1] and
normalise with the ImageNet mean and standard deviation (torchvision `transforms.Normalize`
values). Only JPEG and PNG are decoded, and only after the header's pixel count passed the
decompression-bomb limit.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from resnext_compiler.runtimes.serve.errors import ServeError, bad_request

CROP_FRACTION = 0.875  # 224 / 256
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
FORMATS = ("JPEG", "PNG")


def decode_image(data: bytes, max_pixels: int, height: int, width: int) -> Image.Image:
    """Open a JPEG/PNG, refuse bombs by the header's size, then decode (JPEG at reduced scale)."""
    if not data:
        raise bad_request("empty image")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError:
        raise ServeError(413, f"image has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise ServeError(415, "not a JPEG or PNG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise bad_request(f"unreadable image: {exc}") from None
    image_width, image_height = image.size
    if image_width < 1 or image_height < 1:
        raise bad_request("image has no pixels")
    if image_width * image_height > max_pixels:
        raise ServeError(413, f"image is {image_width}x{image_height}, more than {max_pixels} "
                         "pixels")
    scale = _resize_scale(image_width, image_height, height, width)
    if image.format == "JPEG":  # let libjpeg decode at 1/2, 1/4 or 1/8 when that is enough
        image.draft("RGB", (math.ceil(image_width * scale), math.ceil(image_height * scale)))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except Image.DecompressionBombError:
        raise ServeError(413, f"image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise bad_request(f"unreadable image: {exc}") from None


def _resize_scale(image_width: int, image_height: int, height: int, width: int) -> float:
    """The factor making the image just cover the resize box (crop / CROP_FRACTION)."""
    return max(height / CROP_FRACTION / image_height, width / CROP_FRACTION / image_width)


def preprocess(image: Image.Image, height: int, width: int) -> np.ndarray:
    """RGB image -> normalised float32 [1, 3, height, width]."""
    scale = _resize_scale(image.width, image.height, height, width)
    resized_width = max(width, round(image.width * scale))
    resized_height = max(height, round(image.height * scale))
    image = image.resize((resized_width, resized_height), Image.Resampling.BILINEAR)
    left = round((resized_width - width) / 2)
    top = round((resized_height - height) / 2)
    image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def top_k(logits: np.ndarray, k: int, labels: list[str] | None) -> list[dict]:
    """The k best classes of one row of logits, with softmax scores (and labels if known)."""
    row = logits.reshape(-1).astype(np.float64)
    shifted = np.exp(row - row.max())
    scores = shifted / shifted.sum()
    order = np.argsort(-row, kind="stable")[: min(k, row.size)]
    return [
        {"index": int(index), "score": _finite(scores[index]), "logit": _finite(row[index]),
         **({"label": labels[index]} if labels else {})}
        for index in order
    ]



def _finite(value: float) -> float | None:
    """JSON has no NaN or infinity: a broken model's non-finite outputs become null."""
    return float(value) if math.isfinite(value) else None
