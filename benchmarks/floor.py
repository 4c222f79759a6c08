"""The floor: the cheapest decode + resize + normalize per image this machine does, on one thread.

Serving's CPU per image is divided by it (benchmarks/pipeline.py): on a GPU box the CPU is what runs
out, and this is what feeding the model an image cannot cost less than. Each candidate turns the
bench's JPEG tiles into one normalized N×3×224×224 batch (channels-last, as the served path gives the
model) with the libraries a Learner's pipeline allows: PIL (fastai's own), torchvision's JPEG decoder,
torch's antialiased resize on a uint8 batch. Each says how its pixels compare with fastai's (PIL
decode, PIL resize): the floor is the cheapest candidate, whatever its pixels; the cheapest one whose
pixels are fastai's is printed beside it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class FloorRow:
    name: str
    micros: float  # CPU µs per image, one thread
    pixels: str  # against fastai's: "equal", or how far off
    exact: bool


def _pil_decode(tile: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(tile))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _torchvision_decode(tile: bytes) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(torch.frombuffer(bytearray(tile), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return decoded.permute(1, 2, 0).numpy()  # H×W×3: the decoder's own memory, no copy


def _pil_resize(pixels: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.BILINEAR)) for p in pixels])


def _torch_resize(pixels: list[np.ndarray], size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    batch = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)  # channels-last view of N×H×W×3
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True).permute(0, 2, 3, 1).numpy()


def normalized(pixels: np.ndarray):
    """The batch as the model takes it: float, ÷255, ImageNet's statistics, in place on rows of W×3 values."""
    import torch

    count, height, width, channels = pixels.shape
    mean = torch.tensor(IMAGENET_MEAN).repeat(width)
    std = torch.tensor(IMAGENET_STD).repeat(width)
    batch = torch.from_numpy(np.ascontiguousarray(pixels)).float()
    batch.view(-1, width * channels).div_(255).sub_(mean).div_(std)
    return batch.permute(0, 3, 1, 2)


DECODERS: dict[str, Callable[[bytes], np.ndarray]] = {
    "PIL decode": _pil_decode,
    "torchvision decode_jpeg": _torchvision_decode,
}
RESIZERS: dict[str, Callable[[list[np.ndarray], int], np.ndarray]] = {
    "PIL resize": _pil_resize,
    "torch resize (uint8 batch, antialias)": _torch_resize,
}


def _cpu_seconds(call: Callable[[], object], repeat: int) -> float:
    """The least CPU time of `repeat` runs after a warm-up (other sessions share the machine)."""
    call()
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        call()
        best = min(best, time.process_time() - began)
    return best


def floor_rows(tiles: list[bytes], size: int, batch: int, repeat: int = 5) -> list[FloorRow]:
    """Every decoder × resizer on `tiles`, `batch` images at a time, on one torch thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reference = _pil_resize([_pil_decode(tile) for tile in tiles], size).astype(int)
    rows = []
    try:
        for decoder_name, decode in DECODERS.items():
            for resizer_name, resize in RESIZERS.items():

                def run(decode=decode, resize=resize) -> list:
                    return [
                        normalized(resize([decode(tile) for tile in tiles[first : first + batch]], size))
                        for first in range(0, len(tiles), batch)
                    ]

                micros = _cpu_seconds(run, repeat) / len(tiles) * 1e6
                pixels = np.concatenate(
                    [resize([decode(t) for t in tiles[i : i + batch]], size) for i in range(0, len(tiles), batch)]
                )
                off = np.abs(pixels.astype(int) - reference)
                exact = not off.any()
                note = "equal" if exact else f"up to {off.max()} levels off in {(off > 0).mean():.2%} of values"
                rows.append(FloorRow(f"{decoder_name}, {resizer_name}, normalize in place", micros, note, exact))
    finally:
        torch.set_num_threads(threads)
    return rows


def print_floor(rows: list[FloorRow]) -> None:
    print("\nthe floor: decode + resize + normalize per image, one thread (CPU µs; pixels against fastai's PIL)\n")
    print(f"| {'pipeline':<82} | {'µs/image':>8} | pixels |\n|{'-' * 84}|{'-' * 10}|---|")
    for row in sorted(rows, key=lambda r: r.micros):
        print(f"| {row.name:<82} | {row.micros:8.0f} | {row.pixels} |")


def the_floor(rows: list[FloorRow]) -> FloorRow:
    return min(rows, key=lambda row: row.micros)
