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


def make_tabular_workload(folder: Path) -> Path:
    """Export a tabular_learner with fastai's default layers (200, 100), trained briefly on the synthetic table."""
    from fastai.tabular.all import Categorify, FillMissing, Normalize, TabularDataLoaders, tabular_learner

    from harness.learners import TABULAR_CATEGORICAL, TABULAR_CONTINUOUS, tabular_frame

    frame = tabular_frame(rows=2000)
    dls = TabularDataLoaders.from_df(
        frame,
        y_names="quality",
        cat_names=list(TABULAR_CATEGORICAL),
        cont_names=list(TABULAR_CONTINUOUS),
        procs=[Categorify, FillMissing, Normalize],
        valid_idx=list(range(1600, 2000)),
        bs=64,
        num_workers=0,
    )
    learn = tabular_learner(dls)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(1, 1e-2)
    folder.mkdir(parents=True, exist_ok=True)
    learn.export((folder / "export.pkl").resolve())
    return folder / "export.pkl"


def make_text_workload(folder: Path) -> Path:
    """Export a text_classifier_learner with fastai's default AWD-LSTM (not pretrained), trained one short epoch."""
    from fastai.text.all import AWD_LSTM, TextDataLoaders, text_classifier_learner

    from harness.learners import text_corpus

    dls = TextDataLoaders.from_df(
        text_corpus(count=200), text_col="text", label_col="label", valid_pct=0.2, seed=0, bs=32, num_workers=0
    )
    learn = text_classifier_learner(dls, AWD_LSTM, pretrained=False)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(1, 1e-3)
    folder.mkdir(parents=True, exist_ok=True)
    learn.export((folder / "export.pkl").resolve())
    return folder / "export.pkl"


def make_texts(count: int, seed: int = 0) -> list[str]:
    """`count` reviews of 5 to 120 words (a long tail, as real reviews have), from the test corpus's words."""
    from harness.learners import BAD_WORDS, FILLER_WORDS, GOOD_WORDS

    rng = np.random.default_rng(seed)
    words = FILLER_WORDS * 3 + GOOD_WORDS + BAD_WORDS
    lengths = np.clip(rng.lognormal(mean=3.0, sigma=0.7, size=count), 5, 120).astype(int)
    return [" ".join(rng.choice(words, length)).capitalize() + "." for length in lengths]


def make_near_free_learner(folder: Path) -> Path:
    """Export a vision Learner whose model costs almost nothing (a pooling layer and a linear layer) behind the
    usual pipeline: the 256×256 tiles resized to 224² and normalized with ImageNet's statistics. Not trained:
    it measures what serving costs around a model, not what the model answers."""
    from fastai.vision.all import (
        CategoryBlock,
        CrossEntropyLossFlat,
        DataBlock,
        ImageBlock,
        ItemGetter,
        Learner,
        Normalize,
        Resize,
        imagenet_stats,
        nn,
    )

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index, tile in enumerate(make_tiles(len(CLASSES) * 2, seed=1)):
        path = folder / f"train_{index}.jpg"
        path.write_bytes(tile)
        items.append((path, CLASSES[index % len(CLASSES)]))
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=ItemGetter(0),
        get_y=ItemGetter(1),
        item_tfms=Resize(MODEL_SIZE),
        batch_tfms=Normalize.from_stats(*imagenet_stats, cuda=False),
    )
    dls = block.dataloaders(items, bs=2, num_workers=0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(CLASSES)))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    export_path = folder / "export.pkl"
    learn.export(export_path.resolve())
    return export_path
