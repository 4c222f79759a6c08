"""The benchmark's workload, made offline: a resnet34 Learner at 224×224 and 256×256 JPEG tiles."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TILE_SIZE = 256
MODEL_SIZE = 224
CLASSES = ["background", "building", "road"]


def make_tiles(count: int, seed: int = 0) -> list[bytes]:
    """`count` 256×256 JPEG tiles that look a little like satellite imagery: texture and shapes.

    Tile i shows class CLASSES[i % 3]: its shapes are bright in colour channel i % 3.
    """
    rng = np.random.default_rng(seed)
    tiles = []
    for index in range(count):
        base = rng.integers(40, 120, size=3)
        pixels = np.clip(base + rng.normal(0, 18, size=(TILE_SIZE, TILE_SIZE, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 8))):
            x, y = rng.integers(0, TILE_SIZE - 40, size=2)
            w, h = rng.integers(12, 40, size=2)
            colour = [int(v) for v in rng.integers(0, 90, size=3)]
            colour[index % len(CLASSES)] = int(rng.integers(200, 256))
            draw.rectangle([int(x), int(y), int(x + w), int(y + h)], fill=tuple(colour))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        tiles.append(buffer.getvalue())
    return tiles


def make_learner(folder: Path) -> Path:
    """Export a resnet34 `vision_learner` (random init) that resizes tiles to 224×224; returns export.pkl."""
    from fastai.vision.all import CategoryBlock, DataBlock, ImageBlock, ItemGetter, Resize, resnet34, vision_learner

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index, tile in enumerate(make_tiles(len(CLASSES) * 16, seed=1)):
        path = folder / f"train_{index}.jpg"
        path.write_bytes(tile)
        items.append((path, CLASSES[index % len(CLASSES)]))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock), get_x=ItemGetter(0), get_y=ItemGetter(1), item_tfms=Resize(MODEL_SIZE)
    )
    dls = block.dataloaders(items, bs=8, num_workers=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn = vision_learner(dls, resnet34, pretrained=False)
        # A short training makes the model's answers confident, as a served model's are, so the
        # bf16 check compares real decisions rather than coin flips between near-equal classes.
        with learn.no_bar(), learn.no_logging():
            learn.fit_one_cycle(4, 1e-3)
    export_path = folder / "export.pkl"
    learn.export(export_path.resolve())
    return export_path
