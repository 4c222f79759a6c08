"""The handler's settings, read from the archive's model config.

make-archive writes them under the `handler:` key of the model's YAML config, so they
travel with the archive and survive a reload. Their defaults are in `defaults`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import defaults
from ..config import settings_from

HANDLER_KEY = "handler"


@dataclass(frozen=True)
class HandlerSettings:
    max_batch: int = defaults.MAX_BATCH  # images (or texts) per forward pass; larger batches are chunked
    max_row_batch: int = defaults.MAX_ROW_BATCH  # tabular and collab rows per forward pass
    max_instances: int = defaults.MAX_INSTANCES  # instances one request may carry
    max_image_pixels: int = defaults.MAX_IMAGE_PIXELS  # width × height of one decoded image
    max_text_chars: int = defaults.MAX_TEXT_CHARS  # characters in one text instance
    torch_threads: int = defaults.TORCH_THREADS  # torch threads per worker; 0: cores ÷ the model's workers
    utils_dir: str = ""  # folder inside the archive holding the modules the pickle needs
    precision: str = defaults.PRECISION  # "bf16": bfloat16 autocast, where the device has fast bf16
    channels_last: bool = defaults.CHANNELS_LAST  # the model's weights channels-last (faster on CPU, same results)
    compile: bool = defaults.COMPILE  # torch.compile at worker start, warmed for every batch size
    aot_dir: str = ""  # folder inside the archive holding an AOTInductor package (make-archive --compile aot)
    fast_images: bool = defaults.FAST_IMAGES  # the vision fast path; fastai's pipeline when off or not applicable
    fast_rows: bool = (
        defaults.FAST_ROWS
    )  # the tabular and collab fast path; fastai's test_dl when off or not applicable
    tensor_images: str = defaults.TENSOR_IMAGES  # vision: decode and resize as tensors on the device (auto: GPUs)
    kind: str = ""  # the Learner's kind as make-archive found it; the worker checks it finds the same
    max_queue_s: float = defaults.MAX_QUEUE_S  # a request without a deadline of its own waits at most this long

    def __post_init__(self) -> None:
        if self.tensor_images not in defaults.TENSOR_IMAGES_CHOICES:
            choices = ", ".join(defaults.TENSOR_IMAGES_CHOICES)
            raise ValueError(f"{HANDLER_KEY}.tensor_images={self.tensor_images!r}: expected one of {choices}")

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any] | None) -> HandlerSettings:
        """Settings from the model config's `handler:` section; unknown keys are ignored."""
        section = (model_config or {}).get(HANDLER_KEY)
        return settings_from(cls, section, lambda name: f"{HANDLER_KEY}.{name} in the archive's model config")
