"""Decode image bytes into RGB PIL images, with clear errors and bounded size."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from ..contract.errors import BadInput
from ..defaults import MAX_IMAGE_PIXELS


def decode_image(image_bytes: bytes, where: str = "the image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode `image_bytes` to an RGB image, as fastai's `PILImage.create` does.

    The pixels are taken as fastai took them in training (no EXIF rotation), so a
    served answer equals `learn.predict`. `where` names the instance in errors. A few-KB
    PNG can claim billions of pixels (a decompression bomb): its size is read from the
    header and refused before any pixel is decoded.
    """
    if not image_bytes:
        raise BadInput(f"{where} is empty: expected the bytes of a PNG, JPEG or other image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(image_bytes))
            width, height = image.size
            if width * height > max_pixels:
                raise BadInput(f"{where} is {width}x{height} pixels, over the limit of {max_pixels} pixels")
            image.load()
    except BadInput:
        raise
    except UnidentifiedImageError:
        raise BadInput(f"{where} is not an image this server can decode") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(f"{where} is over the limit of {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise BadInput(f"{where} could not be decoded: {error}") from None
    try:
        return image if image.mode == "RGB" else image.convert("RGB")
    except (OSError, ValueError) as error:
        raise BadInput(f"{where} has pixel mode {image.mode}, which cannot be read as RGB: {error}") from None
