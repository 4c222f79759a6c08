"""The vision fast path: a batch tensor built straight from PIL images, for Learners whose transforms are all known.

fastai's `test_dl` runs each image through a per-item pipeline of typed transforms, collates
fastai tensor subclasses and runs the batch transforms on them; for a model that costs little
(a small head, bf16, compiled, any GPU) that is most of the time. Most vision Learners hold only
`Resize`, `ToTensor`, `IntToFloatTensor` and `Normalize`. For those, `image_plan` reads the
Learner's own transforms (their sizes, methods, padding modes, resampling filters, divisors and
statistics, in the Learner's order) from the test DataLoader fastai itself would build, and
`image_batch` does the same arithmetic: the PIL crop, pad and resize fastai's `Resize` does for
a validation item (a centred crop), one uint8 array for the batch, then the batch transforms on
one plain tensor. Anything else in the pipeline (another transform that acts at inference, a
custom type transform, a grayscale image type) gives no plan: fastai's pipeline is used as today.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .image_threads import map_slices

logger = logging.getLogger(__name__)

# fastai's PadMode names -> torchvision's padding modes, as fastai's `_do_crop_pad` maps them.
PAD_MODES = {"zeros": "constant", "border": "edge", "reflection": "reflect"}
# Transforms that change nothing about an image at inference: a MaskBlock's codes act on masks only.
IMAGE_NEUTRAL = ("AddMaskCodes",)
# The type transform that reads a decoded image, as a test DataLoader of PIL images keeps it.
IMAGE_READER = "PILBase.create"


@dataclass(frozen=True)
class ResizeStep:
    """fastai's `Resize` on a validation item: centred crop (or pad) to the target's aspect, then resize."""

    size: tuple[int, int]  # (width, height), as PIL takes it
    method: str  # "crop", "pad" or "squish"
    pad_mode: str  # fastai's PadMode: "zeros", "border" or "reflection"
    resample: int  # PIL's resampling filter for images

    def apply(self, image: Image.Image) -> Image.Image:
        """fastai's `_do_crop_pad` for a PIL image: crop what lies inside, pad what lies outside, then resize."""
        from torchvision.transforms.functional import pad

        box, padding = self.crop_and_pad(image.size)
        if box != (0, 0, *image.size):  # a crop to the whole image is a copy of the same pixels: skipped
            image = image.crop(box)
        if any(padding):  # fastai also pads by nothing when the crop ends at the edge: the same pixels
            image = pad(image, list(padding), padding_mode=PAD_MODES[self.pad_mode])
        return image.resize(self.size, self.resample)

    def crop_and_pad(self, original: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """For an image of `original` (width, height): the box kept (left, top, right, bottom) and the padding
        added around it (left, top, right, bottom), as fastai's `Resize` and `_do_crop_pad` work them out."""
        width, height = original
        if self.method == "squish":
            size, top_left = (width, height), (0, 0)
        else:
            ratio_w, ratio_h = width / self.size[0], height / self.size[1]
            # Crop keeps the smaller ratio (fills the target), pad the larger (fits inside it): fastai's rule.
            larger = ratio_w > ratio_h if self.method == "pad" else ratio_w < ratio_h
            ratio = ratio_w if larger else ratio_h
            size = (int(ratio * self.size[0]), int(ratio * self.size[1]))
            top_left = (int(0.5 * (width - size[0])), int(0.5 * (height - size[1])))
        end = (top_left[0] + size[0], top_left[1] + size[1])
        box = (max(top_left[0], 0), max(top_left[1], 0), min(end[0], width), min(end[1], height))
        before = (max(-top_left[0], 0), max(-top_left[1], 0))
        after = (max(end[0] - width, 0), max(end[1] - height, 0))
        return box, (*before, *after)


@dataclass(frozen=True)
class ImagePlan:
    """What the Learner does to an image at inference, as plain steps: PIL steps, then tensor steps, in its order."""

    item_steps: tuple[ResizeStep, ...]
    batch_steps: tuple[Callable[[torch.Tensor], torch.Tensor], ...]
    names: tuple[str, ...]  # the Learner's transforms, for the log

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One image after the PIL steps, as an H×W×3 uint8 array."""
        for step in self.item_steps:
            image = step.apply(image)
        return np.asarray(image)

    def batch(self, images: Sequence[Image.Image], device: torch.device) -> torch.Tensor:
        """The model's input for `images`: as fastai's collate and batch transforms give it, a plain tensor.

        The uint8 batch is N×H×W×3 in memory, viewed as N×3×H×W: channels-last, as the model's weights are.
        """
        arrays = map_slices(self.pixels, images)
        shapes = {array.shape for array in arrays}
        if len(shapes) != 1:
            raise ValueError(f"images of different sizes after the Learner's transforms: {sorted(shapes)}")
        return self.finish(torch.from_numpy(np.stack(arrays)).to(device))

    def finish(self, pixels: torch.Tensor) -> torch.Tensor:
        """The batch transforms on an N×H×W×C uint8 batch, then viewed as N×C×H×W (channels-last in memory)."""
        batch = pixels
        for step in self.batch_steps:
            batch = step(batch)
        return batch.permute(0, 3, 1, 2)


class _IntToFloat:
    """fastai's IntToFloatTensor on an image batch: one float copy, divided in place."""

    def __init__(self, div: float) -> None:
        self.div = div

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float().div_(self.div)


class _Normalize:
    """fastai's Normalize on an N×H×W×C batch: the same subtraction and division per element, in place.

    Done on rows of W×C values with the channels' statistics repeated along the row: a per-channel
    broadcast over a channels-last batch (innermost dimension 3) runs about ten times slower.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean.flatten(), std.flatten()
        self._rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch if batch.is_floating_point() else batch.float()  # fastai's (x - mean) / std promotes too
        width, channels = batch.shape[-2], batch.shape[-1]
        if (width, channels) not in self._rows:
            rows = (self.mean.expand(channels).repeat(width), self.std.expand(channels).repeat(width))
            self._rows[(width, channels)] = rows
        mean, std = self._rows[(width, channels)]
        batch.view(-1, width * channels).sub_(mean).div_(std)
        return batch


# One plan per loaded Learner (None: fastai's pipeline), read at its first batch.
_plans: weakref.WeakKeyDictionary[Any, ImagePlan | None] = weakref.WeakKeyDictionary()


def image_plan(learn: Any, device: torch.device, example: Image.Image) -> ImagePlan | None:
    """The Learner's fast path, or None when its pipeline holds a transform this module does not know.

    `example` is one decoded image: the plan is read from the test DataLoader fastai builds for it,
    so the type transforms fastai drops for a decoded image are dropped here too.
    """
    if learn not in _plans:
        try:
            _plans[learn] = _read_plan(learn, device, example)
        except Exception:  # a pipeline this module cannot read: fastai's own path still serves it
            logger.exception("fastai-serving: could not read the Learner's image transforms; using fastai's pipeline")
            _plans[learn] = None
        plan = _plans[learn]
        if plan is None:
            logger.info(
                "fastai-serving image path: fastai's pipeline (the Learner has transforms the fast path does not know)"
            )
        else:
            logger.info("fastai-serving image path: fast batch builder for %s", ", ".join(plan.names))
    return _plans[learn]


def _read_plan(learn: Any, device: torch.device, example: Image.Image) -> ImagePlan | None:
    test_dl = learn.dls.test_dl([example], bs=1, num_workers=0)
    readers = list(test_dl.dataset.tls[0].fs)
    if len(test_dl.dataset.tls) != 1 or len(readers) != 1 or not _reads_rgb_images(readers[0], example):
        return None
    if list(getattr(test_dl.before_batch, "fs", [])):
        return None
    item_steps, batch_steps, names, to_tensor = [], [], [], False
    for transform in _acting(test_dl.after_item.fs):
        name = type(transform).__name__
        names.append(name)
        if name in IMAGE_NEUTRAL:
            continue
        if name == "Resize" and not to_tensor:
            item_steps.append(_resize_step(transform))
        elif name == "ToTensor" and not to_tensor:
            to_tensor = True
        else:
            return None
    if not to_tensor:
        return None
    for transform in _acting(test_dl.after_batch.fs):
        name = type(transform).__name__
        names.append(name)
        if name == "IntToFloatTensor" and isinstance(transform.div, (int, float)) and transform.div:
            batch_steps.append(_IntToFloat(float(transform.div)))
        elif name == "Normalize" and _per_channel(transform.mean) and _per_channel(transform.std):
            mean, std = (
                getattr(transform, key).as_subclass(torch.Tensor).float().to(device) for key in ("mean", "std")
            )
            batch_steps.append(_Normalize(mean, std))
        else:
            return None
    return ImagePlan(tuple(item_steps), tuple(batch_steps), tuple(names))


def _per_channel(statistic: Any) -> bool:
    """A Normalize statistic this path applies: one value, or one per channel of an RGB image (fastai's 1×3×1×1)."""
    if not isinstance(statistic, torch.Tensor) or statistic.numel() not in (1, 3):
        return False
    # Its values along the channel dimension (third from last), size 1 everywhere else.
    return statistic.numel() == 1 or (statistic.dim() >= 3 and statistic.shape[-3] == 3)


def _acting(transforms: Sequence[Any]) -> list[Any]:
    """The transforms that act on a test item: fastai skips one whose split_idx is the training set's (0)."""
    return [t for t in transforms if getattr(t, "split_idx", None) != 0]


def _reads_rgb_images(reader: Any, example: Image.Image) -> bool:
    """The type transform is fastai's `PILImage.create`, giving back the RGB image as it is (not grayscale, not custom)."""
    from fastai.vision.core import PILImage

    if str(getattr(reader, "name", "")).split(" -- ")[0] != IMAGE_READER:
        return False
    read = reader(example)
    return type(read) is PILImage and read.mode == "RGB" and read.size == example.size


def _resize_step(transform: Any) -> ResizeStep:
    width, height = transform.size  # fastai stores (width, height)
    method, pad_mode = str(transform.method), str(transform.pad_mode)
    if method not in ("crop", "pad", "squish") or pad_mode not in PAD_MODES:
        raise ValueError(f"Resize with method {method!r} and pad mode {pad_mode!r}")
    return ResizeStep((int(width), int(height)), method, pad_mode, int(transform.mode))
