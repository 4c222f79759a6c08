"""The handler's settings, with their defaults, read from the archive's model config.

make-archive writes them under the `handler:` key of the model's YAML config, so they
travel with the archive and survive a reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .images import DEFAULT_MAX_IMAGE_PIXELS
from .learner import FP32
from .payloads import DEFAULT_MAX_INSTANCES
from .predict import DEFAULT_MAX_BATCH


@dataclass(frozen=True)
class HandlerSettings:
    max_batch: int = DEFAULT_MAX_BATCH  # images per forward pass; larger batches are chunked
    max_instances: int = DEFAULT_MAX_INSTANCES  # instances one request may carry
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # width × height of one decoded image
    torch_threads: int = 0  # torch threads per worker; 0: the machine's cores ÷ the model's workers
    utils_dir: str = ""  # folder inside the archive holding the modules the pickle needs
    precision: str = FP32  # "bf16": bfloat16 autocast + channels-last, where the device has fast bf16
    channels_last: int = 1  # 1: the model's weights channels-last (about 20% faster on CPU, same results)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> HandlerSettings:
        """Settings from a mapping (the model config's `handler:` section); unknown keys are ignored."""
        values = values or {}
        known = {field.name: field.type for field in fields(cls)}
        return cls(
            **{
                name: (str(values[name]) if known[name] == "str" else int(values[name]))
                for name in known
                if name in values and values[name] is not None
            }
        )
