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
import warnings
from dataclasses import dataclass
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


# Start-of-frame markers of the JPEGs both decoders read alike: baseline, extended and progressive Huffman
# (not lossless, not arithmetic-coded, whose support depends on how each library was built).
_SOF_MARKERS = (0xC0, 0xC1, 0xC2)
_ANY_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 reserved, CC DAC


@dataclass(frozen=True)
class JpegSource:
    """An undecoded 8-bit JPEG of one (grey) or three (colour) components, known by its header only, so the
    views can be drawn from its size before any pixel is decoded."""

    data: bytes
    size: tuple[int, int]
    format = "JPEG"


def _jpeg_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG :class:`JpegSource` can hold, read from its frame header; None for anything
    else (PIL then opens it: other formats, CMYK, 12-bit, lossless, multi-picture, a damaged header)."""
    if data[:2] != b"\xff\xd8":
        return None
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if length < 2 or marker == 0xDA:  # a scan before any frame header
            return None
        if marker == 0xE2 and data[position + 4 : position + 8] == b"MPF\x00":
            return None  # a multi-picture file: PIL reads it as MPO
        if marker in _ANY_SOF:
            if marker not in _SOF_MARKERS or position + 10 > end:
                return None
            precision = data[position + 4]
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            components = data[position + 9]
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            return width, height
        position += 2 + length
    return None


def _check_pixel_count(size: tuple[int, int]) -> None:
    """PIL's decompression-bomb rule (``PIL.Image.MAX_IMAGE_PIXELS``), for JPEGs PIL does not open."""
    limit, pixels = PILImage.MAX_IMAGE_PIXELS, size[0] * size[1]
    if limit is None or pixels <= limit:
        return
    message = f"Image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression bomb DOS attack."
    if pixels > 2 * limit:
        raise PILImage.DecompressionBombError(message)
    warnings.warn(message, PILImage.DecompressionBombWarning, stacklevel=3)


def open_source(value: Any, sample_id: int, column: str = "image") -> JpegSource | PILImage.Image:
    """:func:`open_image` for the collators: the undecoded bytes of an ordinary JPEG (from a
    ``{"bytes", "path"}`` value or a path) come back as a :class:`JpegSource` (its header read, nothing
    decoded), everything else as :func:`open_image` gives it. A failure names the sample and the fix."""
    if _tv_decode_jpeg is not None:
        data = None
        try:
            if isinstance(value, (str, os.PathLike)):
                value = {"bytes": None, "path": os.fspath(value)}
            if isinstance(value, dict) and ("bytes" in value or "path" in value):
                data = value.get("bytes")
                if data is None and value.get("path") is not None:
                    with open(value["path"], "rb") as handle:
                        data = handle.read()
            size = _jpeg_header(data) if isinstance(data, (bytes, bytearray)) else None
            if size is not None:
                _check_pixel_count(size)
                return JpegSource(bytes(data), size)
        except Exception as error:
            raise ValueError(_decode_message(sample_id, column, error)) from error
        if data is not None:
            value = {"bytes": data, "path": None}
    return open_image(value, sample_id, column)


def finish_pixels(
    source: JpegSource | PILImage.Image, sample_id: int, column: str = "image", reduction: int = 1
) -> tuple[torch.Tensor, int]:
    """:func:`finish_image` returning the pixels as a contiguous (H, W, 3) uint8 tensor. A
    :class:`JpegSource` decoded at full scale goes through torchvision's decoder (libjpeg-turbo's output
    with PIL's settings: the same pixels PIL gives, without PIL's 4-byte pixels and the copy out of them);
    a reduced decode, a truncated file that ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` allows, and every
    other image are PIL's. A failure names the sample and the fix."""
    if isinstance(source, JpegSource):
        if reduction > 1 or ImageFile.LOAD_TRUNCATED_IMAGES:
            source = open_image({"bytes": source.data, "path": None}, sample_id, column)
        else:
            try:
                data = torch.frombuffer(bytearray(source.data), dtype=torch.uint8)  # torch wants writable
                pixels = _tv_decode_jpeg(data, mode=ImageReadMode.RGB)
            except Exception as error:
                message = str(error).rsplit(", ", 1)[-1]  # torchvision prefixes its source location
                raise ValueError(_decode_message(sample_id, column, type(error)(message))) from error
            return pixels.permute(1, 2, 0), 1  # the decoder's memory is (H, W, 3): a view, no copy
    decoded, applied = finish_image(source, sample_id, column, reduction)
    return rgb_pixels(decoded), applied


def load_pixels(value: Any, sample_id: int, column: str = "image") -> torch.Tensor:
    """:func:`load_image` as (H, W, 3) uint8 pixels (:func:`finish_pixels`)."""
    return finish_pixels(open_source(value, sample_id, column), sample_id, column)[0]
