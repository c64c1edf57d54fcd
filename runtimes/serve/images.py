"""Images for `POST /v1/classify`: decode safely, then the model's own evaluation transform.

Only JPEG and PNG are decoded, and only after the header's pixel count passed the
decompression-bomb limit. Everything after the checks (JPEG draft scale, EXIF orientation,
colour mode, resize rule, crop, normalisation) is `resnext_compiler.image_transform` applied
with the model's `InputContract`, the same code `evaluate` and training's validation run.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnext_compiler.image_transform import (
    draft,
    finish_decode,
    model_input,
    resize_and_crop,
    resize_target,
)
from resnext_compiler.input_contract import InputContract
from resnext_compiler.runtimes.serve.errors import ServeError, bad_request
from resnext_compiler.runtimes.serve.limits import check_pixels

FORMATS = ("JPEG", "PNG")


def open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Open a JPEG/PNG (header only) and refuse it when it is empty or a pixel bomb."""
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
    check_pixels("image", image_width, image_height, max_pixels)
    return image


def decode_image(data: bytes, max_pixels: int, contract: InputContract) -> Image.Image:
    """The checked image decoded as the contract says (grey or RGB, EXIF-oriented)."""
    image = open_checked(data, max_pixels)
    check_pixels("resize target", *resize_target(image.width, image.height, contract),
                 max_pixels)
    try:
        draft(image, contract)
        return finish_decode(image, contract)
    except Image.DecompressionBombError:
        raise ServeError(413, f"image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise bad_request(f"unreadable image: {exc}") from None


def preprocess(image: Image.Image, contract: InputContract,
               dtype: np.dtype | type = np.float32) -> np.ndarray:
    """A decoded image -> one batch row [1, ...] of the model's input."""
    return model_input(resize_and_crop(image, contract)[None], contract, dtype)


def check_image_model(contract: InputContract) -> None:
    """Refuse (400) a model that takes no images before reading the upload."""
    if contract.colour is None:
        raise bad_request(f"the model takes {contract.channels}-channel inputs, not images "
                          "(only 1-channel grey and 3-channel RGB models do)")


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
