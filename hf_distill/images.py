"""Decoding dataset values to 8-bit RGB images, with errors that name the sample and the fix.

Every reader of images (the collators, the teacher cache, the label bank, the bad-input checks) goes
through :func:`load_image` (or its two halves :func:`open_image` / :func:`finish_image`, which let a JPEG be
decoded at a reduced scale once the views' sizes are known). The collators take the pixels as an (H, W, 3)
uint8 tensor from :func:`finish_pixels`, which decodes a JPEG straight into one with torchvision's decoder
(the same libjpeg-turbo output as PIL's, bit for bit; PIL decodes everything else).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageFile

try:  # torchvision's JPEG decoder writes (H, W, 3) pixels straight into a tensor; deprecated since 0.29
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _tv_decode_jpeg
    from torchvision.io.image import _has_image_ops

    if not _has_image_ops():
        _tv_decode_jpeg = None
except (
    ImportError
):  # removed in a later torchvision: PIL decodes JPEGs too (the same pixels, a little slower)
    _tv_decode_jpeg = None


def _decode_undecoded(value: dict[str, Any]) -> PILImage.Image:
    data, path = value.get("bytes"), value.get("path")
    image = PILImage.open(io.BytesIO(data)) if data is not None else PILImage.open(path)
    image.load()
    return image


def to_rgb(image: Any) -> PILImage.Image:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, I, F …) or array -> 8-bit RGB PIL image."""
    if isinstance(image, dict) and ("bytes" in image or "path" in image):
        image = _decode_undecoded(image)  # a datasets.Image(decode=False) value
    if isinstance(image, np.ndarray):
        image = PILImage.fromarray(image)
    if not isinstance(image, PILImage.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        with np.errstate(invalid="ignore"):  # signalling-NaN pixels raise a flag when widened
            array = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(array)  # NaN/inf pixels of float images become the darkest finite value
        lo, hi = (float(array[finite].min()), float(array[finite].max())) if finite.any() else (0.0, 0.0)
        array = np.where(finite, array, lo)
        scaled = np.zeros_like(array) if hi <= lo else (array - lo) * (255.0 / (hi - lo))
        image = PILImage.fromarray(np.rint(scaled).astype(np.uint8), mode="L")
    if image.mode == "La":  # premultiplied alpha: PIL converts it to LA only
        image = image.convert("LA")
    if image.mode in ("RGBA", "RGBa", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PILImage.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def _decode_message(sample_id: int, column: str, error: BaseException) -> str:
    fix = (
        "raise PIL.Image.MAX_IMAGE_PIXELS if the image is legitimately that large, or downscale it"
        if isinstance(error, PILImage.DecompressionBombError)
        else f"repair or drop that row (e.g. dataset.filter(..., with_indices=True)), or set "
        f"DistillationConfig.image_column_name if '{column}' is not the image column"
    )
    return f"sample_id={sample_id}: column '{column}' cannot be decoded as an image ({type(error).__name__}: {error}); {fix}"


def load_image(value: Any, sample_id: int, column: str = "image") -> PILImage.Image:
    """Decode one dataset value (PIL image, numpy array, ``{"bytes", "path"}`` dict of an undecoded
    ``datasets.Image``, or a file path) to an 8-bit RGB image; a failure names the sample and the fix."""
    return finish_image(open_image(value, sample_id, column), sample_id, column)[0]


def open_image(value: Any, sample_id: int, column: str = "image") -> PILImage.Image:
    """The first half of :func:`load_image`: an undecoded value (bytes or path) is only opened, so its size
    is known before any pixel is decoded (and a JPEG can still be decoded at a reduced scale, see
    :func:`finish_image`); anything else is converted to RGB. A failure names the sample and the fix."""
    try:
        if isinstance(value, (str, os.PathLike)):
            value = {"bytes": None, "path": os.fspath(value)}
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            data, path = value.get("bytes"), value.get("path")
            return PILImage.open(io.BytesIO(data)) if data is not None else PILImage.open(path)
        return to_rgb(value)
    except Exception as error:
        raise ValueError(_decode_message(sample_id, column, error)) from error


def finish_image(
    image: PILImage.Image, sample_id: int, column: str = "image", reduction: int = 1
) -> tuple[PILImage.Image, int]:
    """The second half of :func:`load_image`: decode an image from :func:`open_image` to 8-bit RGB.

    ``reduction`` (1, 2, 4 or 8) asks a JPEG that is not decoded yet for libjpeg's DCT-domain scaling
    (``PIL.Image.draft``): pixel ``(x, y)`` of the result covers the original pixels ``[r x, r (x + 1))`` x
    ``[r y, r (y + 1))``, so a box in original coordinates maps to the reduced image divided by ``r``. Returns
    the image and the reduction applied (1 for other formats, for decoded images, or when not asked). A
    failure names the sample and the fix."""
    try:
        applied = 1
        if reduction > 1 and image.format == "JPEG" and len(getattr(image, "tile", ()) or ()) == 1:
            width = image.width
            drafted = image.draft(None, (max(1, width // reduction), max(1, image.height // reduction)))
            if drafted is not None:
                applied = int(round(width / drafted[1][2]))
        image.load()
        return to_rgb(image), applied
    except Exception as error:
        raise ValueError(_decode_message(sample_id, column, error)) from error


def rgb_pixels(image: PILImage.Image) -> torch.Tensor:
    """An RGB PIL image's pixels as a writable, contiguous (H, W, 3) uint8 tensor."""
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def _tensor_decodable(image: PILImage.Image, reduction: int) -> bool:
    return (
        _tv_decode_jpeg is not None
        and reduction == 1
        and image.format == "JPEG"  # not MPO, not a decoded image
        and image.mode in ("RGB", "L")  # CMYK/YCCK: PIL's conversion to RGB is the reference
        and len(getattr(image, "tile", ()) or ()) == 1  # not decoded yet
        and getattr(image, "fp", None) is not None
        and not ImageFile.LOAD_TRUNCATED_IMAGES  # PIL's leniency with truncated files is the user's choice
    )


def finish_pixels(
    image: PILImage.Image, sample_id: int, column: str = "image", reduction: int = 1
) -> tuple[torch.Tensor, int]:
    """:func:`finish_image` returning the pixels as a contiguous (H, W, 3) uint8 tensor. A JPEG decoded at
    full scale goes through torchvision's decoder (libjpeg-turbo's output with PIL's settings: the same
    pixels PIL gives, without PIL's 4-byte pixels and the copy out of them); every other case is PIL's. A
    failure names the sample and the fix."""
    if reduction > 1 or not _tensor_decodable(image, 1):
        decoded, applied = finish_image(image, sample_id, column, reduction)
        return rgb_pixels(decoded), applied
    try:
        image.fp.seek(0)
        data = bytearray(image.fp.read())  # writable: torch keeps no read-only buffers
        image.close()
        pixels = _tv_decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception as error:
        message = str(error).rsplit(", ", 1)[-1]  # torchvision prefixes its source location
        raise ValueError(_decode_message(sample_id, column, type(error)(message))) from error
    return pixels.permute(1, 2, 0), 1  # the decoder's memory is (H, W, 3): a view, no copy


def load_pixels(value: Any, sample_id: int, column: str = "image") -> torch.Tensor:
    """:func:`load_image` as (H, W, 3) uint8 pixels (:func:`finish_pixels`)."""
    return finish_pixels(open_image(value, sample_id, column), sample_id, column)[0]
