"""Small real fastai Learners for the tests, one per served task, made from synthetic images.

Each is trained for one short epoch on a few dozen generated images (no download), then
exported; the tests compare what the server answers with `learn.predict` in-process.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32
UTILS_DIR = (
    Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "utils"
)  # tile_utils: a module the pickle needs


def synthetic_images(folder: Path, count: int = 24, seed: int = 0) -> list[Path]:
    """`count` random RGB PNGs, each with one bright quadrant or two; returns their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 80, size=(SIZE, SIZE, 3), dtype=np.uint8)
        for quadrant in rng.choice(4, size=1 + index % 2, replace=False):
            row, col = divmod(int(quadrant), 2)
            half = SIZE // 2
            pixels[row * half : (row + 1) * half, col * half : (col + 1) * half, index % 3] = 255
        path = folder / f"{index:03d}_{'rgb'[index % 3]}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def _bright_quadrants(path: Path) -> list[str]:
    pixels = np.asarray(Image.open(path)).max(axis=2)
    half = SIZE // 2
    names = ["top_left", "top_right", "bottom_left", "bottom_right"]
    return [
        name
        for name, (row, col) in zip(names, [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True)
        if pixels[row * half : (row + 1) * half, col * half : (col + 1) * half].mean() > 200
    ]


def _color(path: Path) -> str:
    return {"r": "red", "g": "green", "b": "blue"}[path.stem[-1]]


def _brightness(path: Path) -> float:
    return float(np.asarray(Image.open(path)).mean() / 255)


def _fit_and_export(learn, export_path: Path) -> Path:
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(1, 1e-3)
    learn.export(export_path.resolve())
    return export_path


def _dataloaders(items: list[tuple], blocks: tuple, item_tfms=None):
    """DataLoaders over (image path, target) pairs. fastai's own ItemGetter reads them, so
    the exported pickle refers to no test module (the server could not import one)."""
    from fastai.vision.all import DataBlock, ItemGetter, Resize

    block = DataBlock(blocks=blocks, get_x=ItemGetter(0), get_y=ItemGetter(1), item_tfms=item_tfms or [Resize(SIZE)])
    return block.dataloaders(items, bs=8, num_workers=0)


def make_classifier(folder: Path, item_tfms=None) -> Path:
    """Single-label: the colour of the bright quadrants (red, green, blue)."""
    from fastai.vision.all import CategoryBlock, ImageBlock, resnet18, vision_learner

    items = [(path, _color(path)) for path in synthetic_images(folder / "images")]
    dls = _dataloaders(items, (ImageBlock, CategoryBlock), item_tfms)
    return _fit_and_export(vision_learner(dls, resnet18, pretrained=False), folder / "export.pkl")


def make_multilabel(folder: Path) -> Path:
    """Multi-label: which quadrants are bright."""
    from fastai.vision.all import ImageBlock, MultiCategoryBlock, resnet18, vision_learner

    items = [(path, _bright_quadrants(path)) for path in synthetic_images(folder / "images")]
    dls = _dataloaders(items, (ImageBlock, MultiCategoryBlock))
    return _fit_and_export(vision_learner(dls, resnet18, pretrained=False), folder / "export.pkl")


def make_regressor(folder: Path) -> Path:
    """Regression: the image's mean brightness."""
    from fastai.vision.all import ImageBlock, RegressionBlock, resnet18, vision_learner

    items = [(path, _brightness(path)) for path in synthetic_images(folder / "images")]
    dls = _dataloaders(items, (ImageBlock, RegressionBlock))
    return _fit_and_export(vision_learner(dls, resnet18, pretrained=False, n_out=1), folder / "export.pkl")


def make_segmenter(folder: Path) -> Path:
    """Segmentation (unet_learner): background vs bright pixels."""
    from fastai.vision.all import ImageBlock, MaskBlock, resnet18, unet_learner

    masks = folder / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    items = []
    for path in synthetic_images(folder / "images"):
        bright = (np.asarray(Image.open(path)).max(axis=2) > 200).astype(np.uint8)
        Image.fromarray(bright).save(masks / path.name)
        items.append((path, masks / path.name))
    dls = _dataloaders(items, (ImageBlock, MaskBlock(codes=["background", "bright"])))
    return _fit_and_export(unet_learner(dls, resnet18, pretrained=False), folder / "export.pkl")


def make_learner_needing_utils(folder: Path) -> Path:
    """A classifier whose pipeline holds transforms from tests/fixtures/utils (`tile_utils`):
    one inverts images, one raises on 13×13 images (a model that fails on some input)."""
    from fastai.vision.all import Resize

    sys.path.insert(0, str(UTILS_DIR))
    try:
        from tile_utils import FailOnOddSize, Invert

        return make_classifier(folder, item_tfms=[FailOnOddSize(), Resize(SIZE), Invert()])
    finally:
        sys.path.remove(str(UTILS_DIR))


def make_uncompilable(folder: Path) -> Path:
    """A classifier whose head starts with tile_utils.RefusesCompile: it serves eagerly, but torch.compile fails on it."""
    from fastai.vision.all import CategoryBlock, ImageBlock, nn, resnet18, vision_learner

    sys.path.insert(0, str(UTILS_DIR))
    try:
        from tile_utils import RefusesCompile

        items = [(path, _color(path)) for path in synthetic_images(folder / "images")]
        learn = vision_learner(_dataloaders(items, (ImageBlock, CategoryBlock)), resnet18, pretrained=False)
        learn.model[1] = nn.Sequential(RefusesCompile(), learn.model[1])
        return _fit_and_export(learn, folder / "export.pkl")
    finally:
        sys.path.remove(str(UTILS_DIR))
