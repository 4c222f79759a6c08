"""Images as tensors on the worker's device: torchvision decodes them, torch crops, pads and resizes them a batch at once.

Where the worker has a GPU, JPEGs are decoded there (torchvision's `decode_jpeg` on CUDA: nvJPEG, one
call for the batch) and cropped, resized and normalized there: the CPU only reads the bytes. On a CPU
the same code runs on CPU tensors. It follows the Learner's own transforms, read by `fast_images`
(its `ResizeStep`s and batch steps), with two differences from PIL, which `learn.predict` uses:
- decoding: torchvision's JPEG decoder on the CPU gives PIL's pixels exactly (both are libjpeg-turbo);
  nvJPEG's may differ by a level here and there;
- resizing: torch's antialiased bilinear and bicubic filters are PIL's, with weights of lower precision
  on uint8 (CPU): up to 2 levels off in under 1% of the values; on a GPU in float, rounded as PIL
  rounds: up to 2 levels off in a few % of them.
So answers differ a little from `learn.predict`'s (measured: docs/pipeline.md). It is an archive
option (`--tensor-images`): `auto`, the default, takes it where the worker has a GPU only.
Images other than JPEGs, and Learners whose filter torch lacks (PIL's nearest, Lanczos, box,
Hamming), keep PIL.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..contract.errors import BadInput
from ..defaults import MAX_IMAGE_PIXELS
from .fast_images import PAD_MODES, ImagePlan, ResizeStep, image_plan
from .image_threads import map_slices
from .images import decode_image

logger = logging.getLogger(__name__)

AUTO, ON = "auto", "on"  # defaults.TENSOR_IMAGES_CHOICES, less "off"
# PIL's filters that torch's antialiased interpolate computes alike (PIL: Image.BILINEAR, Image.BICUBIC).
TORCH_FILTERS = {int(Image.BILINEAR): "bilinear", int(Image.BICUBIC): "bicubic"}
# torchvision's PIL padding modes (fast_images.PAD_MODES' values) -> torch.nn.functional.pad's.
TORCH_PADS = {"constant": "constant", "edge": "replicate", "reflect": "reflect"}
JPEG_START = b"\xff\xd8"
# JPEG start-of-frame markers (they carry the size): C0-CF less DHT (C4), JPG (C8) and DAC (CC).
FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def wanted(setting: str, device: torch.device) -> bool:
    """Whether the archive's `tensor_images` setting asks for this path on `device` (`auto`: on a GPU)."""
    return setting == ON or (setting == AUTO and device.type == "cuda")


# Per Learner: its image plan where every step runs on tensors, else None; decided at its first batch.
_plans: weakref.WeakKeyDictionary[Any, ImagePlan | None] = weakref.WeakKeyDictionary()


def tensor_plan(learn: Any, device: torch.device, images_bytes: Sequence[bytes]) -> ImagePlan | None:
    """The Learner's image plan where every step can run on tensors, else None (PIL serves it).

    At the Learner's first batch the plan is read from the first of `images_bytes` PIL can decode.
    """
    if learn not in _plans:
        example = next((image for image in map(_decoded_or_none, images_bytes) if image is not None), None)
        if example is None:
            return None  # no image to read the plan from (a batch of bad images): PIL answers this one
        plan = image_plan(learn, device, example)
        usable = plan is not None and all(step.resample in TORCH_FILTERS for step in plan.item_steps)
        _plans[learn] = plan if usable else None
        logger.info("fastai-serving image decoding on %s: %s", device, "torchvision and torch" if usable else "PIL")
    return _plans[learn]


def known_plan(learn: Any) -> ImagePlan | None:
    """The plan `tensor_plan` chose for the Learner (None: not chosen, or PIL's path)."""
    return _plans.get(learn)


def _decoded_or_none(data: bytes) -> Image.Image | None:
    try:
        return decode_image(data)
    except BadInput:
        return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None when `data` is no JPEG this reads."""
    if not data.startswith(JPEG_START):
        return None
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in FRAME_MARKERS:
            height, width = int.from_bytes(data[at + 5 : at + 7], "big"), int.from_bytes(data[at + 7 : at + 9], "big")
            return (width, height) if width and height else None
        at += 2 + length
    return None


def decode_tensors(
    images_bytes: Sequence[bytes], names: Sequence[str], device: torch.device, max_pixels: int = MAX_IMAGE_PIXELS
) -> list[torch.Tensor | BadInput]:
    """Each image as a 3×H×W uint8 tensor on `device` (its bytes H×W×3), or its `BadInput`.

    JPEGs go to torchvision (on a GPU, all in one call); anything else, and any JPEG torchvision
    refuses, to PIL, whose errors name the instance as the PIL path's do.
    """
    sizes = [jpeg_size(data) for data in images_bytes]
    decoded: list[torch.Tensor | BadInput | None] = [None] * len(images_bytes)
    jpegs = []
    for index, (size, name) in enumerate(zip(sizes, names, strict=True)):
        if size is not None and size[0] * size[1] > max_pixels:
            decoded[index] = BadInput(f"{name} is {size[0]}x{size[1]} pixels, over the limit of {max_pixels} pixels")
        elif size is not None:
            jpegs.append(index)
    for index, image in zip(jpegs, _decode_jpegs([images_bytes[i] for i in jpegs], device), strict=True):
        decoded[index] = image
    rest = [index for index, image in enumerate(decoded) if image is None]
    for index, image in zip(rest, _decode_with_pil([images_bytes[i] for i in rest], [names[i] for i in rest], max_pixels), strict=True):  # fmt: skip
        decoded[index] = image if isinstance(image, BadInput) else _as_tensor(image, device)
    return decoded


def _decode_jpegs(images_bytes: list[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """torchvision's decoder on each JPEG (None: it refused one; PIL then reads it and names the error)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def one(data: bytes) -> torch.Tensor | None:
        try:
            return decode_jpeg(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB, device=device
            )
        except RuntimeError:
            return None

    if device.type != "cuda" or len(images_bytes) <= 1:
        return map_slices(one, images_bytes)
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images_bytes]
    try:  # nvJPEG decodes the batch in one call
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one of them is corrupt: each alone, so only that one fails
        return [one(data) for data in images_bytes]


def _decode_with_pil(images_bytes: list[bytes], names: list[str], max_pixels: int) -> list[Image.Image | BadInput]:
    def one(pair: tuple[bytes, str]) -> Image.Image | BadInput:
        try:
            return decode_image(pair[0], pair[1], max_pixels)
        except BadInput as error:
            return error

    return map_slices(one, list(zip(images_bytes, names, strict=True)))


def _as_tensor(image: Image.Image, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).to(device).permute(2, 0, 1)


def tensor_batch(plan: ImagePlan, images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The model's input for decoded image tensors: the plan's resize steps on each group of images of one size
    (one interpolate call each), then its batch transforms, as `ImagePlan.batch` does it with PIL.

    Images stay H×W×3 in memory throughout (N×3×H×W channels-last views): stacking, resizing and
    normalizing never transpose a copy.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    resized = {}
    for indices in groups.values():
        batch = torch.stack([images[index].to(device).permute(1, 2, 0) for index in indices]).permute(0, 3, 1, 2)
        for step in plan.item_steps:
            batch = resize_step(step, batch)
        resized[tuple(indices)] = batch.permute(0, 2, 3, 1)  # N×H×W×3
    shapes = {tuple(batch.shape[1:]) for batch in resized.values()}
    if len(shapes) != 1:
        raise ValueError(f"images of different sizes after the Learner's transforms: {sorted(shapes)}")
    if len(resized) == 1:
        (pixels,) = resized.values()
    else:  # back in the requests' order
        rows = {index: row for indices, batch in resized.items() for index, row in zip(indices, batch, strict=True)}
        pixels = torch.stack([rows[index] for index in range(len(images))])
    return plan.finish(pixels.contiguous())


def resize_step(step: ResizeStep, batch: torch.Tensor, in_float: bool | None = None) -> torch.Tensor:
    """fastai's `Resize` (a validation item's crop, pad and resize) on an N×3×H×W uint8 batch of one image size.

    `in_float`: resize in float (CUDA's way; the default off the CPU) rather than in uint8 (the CPU's).
    """
    height, width = batch.shape[-2:]
    (left, top, right, bottom), (pad_left, pad_top, pad_right, pad_bottom) = step.crop_and_pad((width, height))
    batch = batch[..., top:bottom, left:right]
    if pad_left or pad_top or pad_right or pad_bottom:
        batch = _pad(batch, (pad_left, pad_right, pad_top, pad_bottom), step.pad_mode)
    in_float = batch.device.type != "cpu" if in_float is None else in_float
    return resize(batch, step.size, TORCH_FILTERS[step.resample], in_float)


def _pad(batch: torch.Tensor, padding: tuple[int, int, int, int], pad_mode: str) -> torch.Tensor:
    mode = TORCH_PADS[PAD_MODES[pad_mode]]
    height, width = batch.shape[-2:]
    if mode == "reflect" and (max(padding[:2]) >= width or max(padding[2:]) >= height):
        # numpy (which torchvision pads PIL images with) reflects again and again; torch reflects once
        left, right, top, bottom = padding
        array = np.pad(batch.cpu().numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)), mode="reflect")
        return torch.from_numpy(array).to(batch.device)
    if mode == "constant":
        return F.pad(batch, padding, mode=mode, value=0)
    return F.pad(batch, padding, mode=mode)


def resize(batch: torch.Tensor, size: tuple[int, int], mode: str, in_float: bool) -> torch.Tensor:
    """PIL's antialiased resize to `size` (width, height) on an N×3×H×W uint8 batch, values kept as uint8 levels.

    On the CPU torch resizes uint8 itself, as PIL does: across, rounded, then down. CUDA's antialiased
    kernels take floats (`in_float`): the same two passes in float, each rounded half up and clamped to
    levels as PIL's are (in one pass, a bicubic overshoot PIL clips in between came out 4 levels off).
    """
    width, height = size
    if tuple(batch.shape[-2:]) == (height, width):
        return batch
    batch = batch.contiguous(memory_format=torch.channels_last)
    if not in_float:
        return F.interpolate(batch, size=(height, width), mode=mode, antialias=True)
    resized = batch.float()
    for pass_size in ((resized.shape[-2], width), (height, width)):
        if tuple(resized.shape[-2:]) != pass_size:
            resized = (
                F.interpolate(resized, size=pass_size, mode=mode, antialias=True).add_(0.5).floor_().clamp_(0, 255)
            )
    return resized.to(torch.uint8)
