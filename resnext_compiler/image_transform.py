"""The evaluation transform: image -> model input, as an `InputContract` says (one copy).

Used by training's validation, `evaluate` (spec + weights, or a compiled artifact), `serve`
(`/v1/classify`) and int8 calibration, so all of them see identical pixels:

1. decode (JPEG at a reduced libjpeg scale when the resize target allows it), apply the EXIF
   orientation, convert to the contract's colour mode (grey `L` or `RGB`);
2. `resize_and_crop`: the contract's resize rule, bilinear (Pillow, antialiased when
   shrinking), centre crop offsets rounded as torchvision's CenterCrop does;
3. `normalise`: pixel * multiplier + offset per channel (`InputContract.affine`), NCHW.

Pillow is imported lazily; numpy only otherwise, so the ONNX path stays free of torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resnext_compiler.errors import UserError
from resnext_compiler.input_contract import UINT8_NHWC, InputContract
from resnext_compiler.limits import MAX_IMAGE_PIXELS, image_pixels_problem
from resnext_compiler.named_files import IMAGE, open_named

if TYPE_CHECKING:
    from PIL import Image as PILImage

PIL_MODES = {"grey": "L", "rgb": "RGB"}
# Files read as images wherever a folder of images is taken (data sets, int8 calibration).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def resize_target(image_width: int, image_height: int,
                  contract: InputContract) -> tuple[int, int]:
    """(width, height) the whole image is resized to before the centre crop."""
    if contract.resize == "direct":
        return contract.width, contract.height
    scale = max(contract.height / contract.crop_fraction / image_height,
                contract.width / contract.crop_fraction / image_width)
    return (max(contract.width, round(image_width * scale)),
            max(contract.height, round(image_height * scale)))


def draft(image: PILImage.Image, contract: InputContract) -> None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when the resize target is that small.

    Part of the transform (it changes pixels), so every caller decodes the same way.
    """
    if image.format == "JPEG":
        width, height = resize_target(image.width, image.height, contract)
        mode = "L" if contract.colour == "grey" else "RGB"
        image.draft(mode, (width, height))


def finish_decode(image: PILImage.Image, contract: InputContract) -> PILImage.Image:
    """Decode, apply EXIF orientation and convert to the contract's colour mode."""
    from PIL import ImageOps

    if contract.colour is None:
        raise UserError(f"a model with {contract.channels} input channels takes no images "
                        "(only 1-channel grey or 3-channel RGB models do)")
    image.load()
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # Pillow's EXIF parser raises struct.error, TypeError, KeyError...
        # a ValueError, as for any other unreadable file: callers name the file or answer 400
        raise ValueError(f"malformed EXIF data ({type(exc).__name__})") from None
    return image.convert(PIL_MODES[contract.colour])


def open_image(path: str | Path, contract: InputContract, *,
               reduce: bool = True) -> PILImage.Image:
    """An image file decoded as the contract says (`reduce=False`: no JPEG draft scaling, for
    callers that resize only a box of it, such as random-resized crops).

    Before decoding, the header's size and (with `reduce`) the resize target are held to
    `MAX_IMAGE_PIXELS`; a refusal names the file (UserError, exit 2)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_named(path, IMAGE, None) as handle, Image.open(handle) as image:
            target = resize_target(image.width, image.height, contract) if reduce else None
            problem = image_pixels_problem(image.size, target)
            if problem is not None:
                raise UserError(f"{path}: {problem}; refusing to decode it")
            if reduce:
                draft(image, contract)
            return finish_decode(image, contract)
    except Image.DecompressionBombError:  # Pillow's own guard, at twice its default limit
        raise UserError(f"{path}: image is more than {MAX_IMAGE_PIXELS} pixels; refusing to "
                        "decode it") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def resize_and_crop(image: PILImage.Image, contract: InputContract) -> np.ndarray:
    """uint8 [H, W, C] at the model's size, by the contract's resize rule."""
    from PIL import Image

    width, height = resize_target(image.width, image.height, contract)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    if (width, height) != (contract.width, contract.height):
        left = int(round((width - contract.width) / 2.0))  # torchvision CenterCrop
        top = int(round((height - contract.height) / 2.0))
        image = image.crop((left, top, left + contract.width, top + contract.height))
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def array_to_image(pixels: np.ndarray) -> PILImage.Image:
    """A uint8 [H, W, C] (C 1 or 3) array as a Pillow image (in-memory data sets)."""
    from PIL import Image

    return Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)


def normalise(pixels: np.ndarray, contract: InputContract) -> np.ndarray:
    """uint8 [N, H, W, C] (or one [H, W, C]) -> float32 [N, C, H, W], normalised."""
    if pixels.ndim == 3:
        pixels = pixels[None]
    multiplier, offset = contract.affine()
    out = pixels.astype(np.float32) * multiplier + offset
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def model_input(pixels: np.ndarray, contract: InputContract,
                dtype: np.dtype | type = np.float32) -> np.ndarray:
    """uint8 [N, H, W, C] pixels as the artifact takes them: raw uint8 NHWC for a model with
    in-graph preprocessing, else normalised NCHW in `dtype` (float16 for fp16 models)."""
    if contract.input_format == UINT8_NHWC:
        return np.ascontiguousarray(pixels if pixels.ndim == 4 else pixels[None])
    return normalise(pixels, contract).astype(dtype, copy=False)


def load_pixels(paths: Iterable[str | Path], contract: InputContract) -> np.ndarray:
    """uint8 [N, H, W, C] of image files after decoding, resize and crop."""
    arrays = [resize_and_crop(open_image(path, contract), contract) for path in paths]
    if not arrays:
        return np.zeros((0, contract.height, contract.width, contract.channels), np.uint8)
    return np.stack(arrays)


def load_images_for_model(paths: Iterable[str | Path], contract: InputContract) -> np.ndarray:
    """float32 [N, C, H, W]: image files through the whole evaluation transform."""
    return normalise(load_pixels(paths, contract), contract)

