"""One batched forward pass over many instances, as `learn.get_preds` does it; images decoded for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..contract.errors import BadInput
from ..defaults import FAST_IMAGES, MAX_BATCH, MAX_IMAGE_PIXELS
from .fast_images import image_plan
from .image_threads import map_slices
from .images import decode_image
from .learner import BF16, ServedLearner
from .settings import HandlerSettings


@dataclass
class Prediction:
    """One instance's result: the model's activated output and its decoded meaning."""

    output: torch.Tensor  # probabilities, scores or values (segmentation: per-pixel probabilities)
    decoded: torch.Tensor  # class index, multi-label flags, values, or the mask


class Predictions(Sequence[Prediction]):
    """A batch's results, one `Prediction` per row of its outputs, each made only when asked for.

    A slice is the rows' slice of the same tensors, so a request's answer can be written from its
    rows at once (responses.py) rather than from a tensor view per instance (about 2 µs each).
    """

    def __init__(self, outputs: torch.Tensor, decoded: torch.Tensor) -> None:
        self.outputs, self.decoded = outputs, decoded

    def __len__(self) -> int:
        return len(self.outputs)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Predictions(self.outputs[index], self.decoded[index])
        return Prediction(output=self.outputs[index], decoded=self.decoded[index])

    def __iter__(self):
        return (Prediction(output=o, decoded=d) for o, d in zip(self.outputs, self.decoded, strict=True))


def decode_images(
    images_bytes: Sequence[bytes], names: Sequence[str], max_pixels: int = MAX_IMAGE_PIXELS
) -> list[Image.Image | BadInput]:
    """Decode every image in parallel; a bad one yields its `BadInput` in its place."""

    def decode_one(pair: tuple[bytes, str]) -> Image.Image | BadInput:
        try:
            return decode_image(pair[0], pair[1], max_pixels)
        except BadInput as error:
            return error

    return map_slices(decode_one, list(zip(images_bytes, names, strict=True)))


def decode_for(
    served: ServedLearner, images_bytes: Sequence[bytes], names: Sequence[str], settings: HandlerSettings
) -> list[Image.Image | torch.Tensor | BadInput]:
    """Every image decoded as the Learner's path takes it: tensors on its device where the archive's
    `tensor_images` asks for them and the Learner's transforms allow, else PIL images; a bad one its `BadInput`."""
    from . import tensor_images

    if settings.fast_images and images_bytes and tensor_images.wanted(settings.tensor_images, served.device):
        if tensor_images.tensor_plan(served.learn, served.device, images_bytes) is not None:
            return tensor_images.decode_tensors(images_bytes, names, served.device, settings.max_image_pixels)
    return decode_images(images_bytes, names, settings.max_image_pixels)


def predict_images(
    served: ServedLearner,
    images: Sequence[Image.Image | torch.Tensor],
    max_batch: int = MAX_BATCH,
    fast: bool = FAST_IMAGES,
) -> Sequence[Prediction]:
    """Predict every image, `max_batch` images per forward pass: with the fast batch builder where the
    Learner's transforms are all ones it knows (`fast`; images decoded as tensors: on them), else with one
    fastai test DataLoader."""
    from .tensor_images import known_plan, tensor_batch

    if not images:
        return []
    chunks = [images[start : start + max_batch] for start in range(0, len(images), max_batch)]
    if isinstance(images[0], torch.Tensor):
        plan = known_plan(served.learn)
        if plan is not None:
            return predict_tensors(served, ((tensor_batch(plan, chunk, served.device),) for chunk in chunks))
        images = [Image.fromarray(image.permute(1, 2, 0).cpu().numpy()) for image in images]
    plan = image_plan(served.learn, served.device, images[0]) if fast else None
    if plan is not None:
        return predict_tensors(served, ((plan.batch(chunk, served.device),) for chunk in chunks))
    test_dl = served.learn.dls.test_dl(list(images), bs=max_batch, num_workers=0)
    return predict_loader(served, test_dl)


def predict_tensors(
    served: ServedLearner, batches: Iterable[tuple[torch.Tensor, ...]], count: int | None = None
) -> Sequence[Prediction]:
    """The model on batches of ready input tensors (the fast paths), then as `predict_loader` from its outputs
    (`count`: as there, each instance's outputs as one row)."""
    model, outputs = served.learn.model, []
    with torch.inference_mode(), precision_context(served):
        for inputs in batches:
            output = model(*inputs)
            outputs.append(output.as_subclass(torch.Tensor).detach().float().cpu())
    raw_outputs = torch.cat(outputs)
    return predictions_of(served, raw_outputs if count is None else raw_outputs.reshape(count, -1))


def predict_loader(
    served: ServedLearner, test_dl: Any, count: int | None = None, reorder: bool = True
) -> Sequence[Prediction]:
    """Every instance of `test_dl` through the model: as `learn.get_preds(with_decoded=True)`, except that
    the loss function's activation and decoding run in float32 after the forward pass, which may run in
    bfloat16. `count`: the number of instances, to give each its own row of outputs (fastai squeezes a
    one-row batch of a model with one output per row, such as a collaborative-filtering dot product).
    """
    from fastcore.basics import noop

    learn = served.learn
    with precision_context(served):
        raw_outputs, _ = learn.get_preds(dl=test_dl, act=noop, reorder=reorder)
    if count is not None:
        raw_outputs = raw_outputs.reshape(count, -1)
    return predictions_of(served, raw_outputs)


def predictions_of(served: ServedLearner, raw_outputs: torch.Tensor) -> Predictions:
    """The loss function's activation and decoding of the model's raw outputs, in float32, one Prediction per row."""
    from fastcore.basics import getcallable

    loss_func = served.learn.loss_func
    outputs = getcallable(loss_func, "activation")(raw_outputs.float())
    decoded = getcallable(loss_func, "decodes")(outputs)
    if len(decoded) != len(outputs):
        raise RuntimeError(f"{len(decoded)} decoded outputs for {len(outputs)} outputs")
    return Predictions(outputs.as_subclass(torch.Tensor), decoded.as_subclass(torch.Tensor))


def precision_context(served: ServedLearner) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the bf16 fast path; nothing for float32."""
    if served.precision == BF16:
        return torch.autocast(device_type=served.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
