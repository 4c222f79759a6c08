"""Small real fastai Learners for the tests, one per served task and kind, made from synthetic data.

Vision Learners train for one short epoch on a few dozen generated images; tabular ones on a
generated table with categorical and continuous columns and missing values; text classifiers
(AWD-LSTM, pretrained=False, a tiny config) on generated reviews; a collaborative-filtering
Learner on generated ratings. Nothing is downloaded. Each is exported; the tests compare what
the server answers with `learn.predict` on the export.
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


def make_regressor_in_the_tens(folder: Path) -> Path:
    """Regression of values in the tens: the image's mean brightness as a value from 0 to 90 (y_range)."""
    from fastai.vision.all import ImageBlock, RegressionBlock, resnet18, vision_learner

    items = [(path, 90 * _brightness(path)) for path in synthetic_images(folder / "images")]
    dls = _dataloaders(items, (ImageBlock, RegressionBlock))
    learn = vision_learner(dls, resnet18, pretrained=False, n_out=1, y_range=(0, 90))
    return _fit_and_export(learn, folder / "export.pkl")


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


PATTERN_SIZE = 64  # the pattern segmenter's input: the window size predict-batch's scene tests send


def make_pattern_segmenter(folder: Path, size: int = PATTERN_SIZE, epochs: int = 8) -> Path:
    """Segmentation a test can check for accuracy: finds harness/rasters.py's bright shapes on dark noise.

    A three-layer fully convolutional net (no pooling, so each pixel's class comes from its own
    neighbourhood), trained on chips of the pattern: seconds on a CPU, and near pixel-exact.
    """
    from fastai.vision.all import CrossEntropyLossFlat, ImageBlock, Learner, MaskBlock, Resize, nn

    from harness.rasters import draw, random_shapes

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(48):
        pixels, truth = draw(size, size, random_shapes(size, size, 3, rng, size // 2), seed=index)
        image, mask = folder / "images" / f"{index:03d}.png", folder / "masks" / f"{index:03d}.png"
        Image.fromarray(pixels.transpose(1, 2, 0)).save(image)
        Image.fromarray(truth.astype(np.uint8)).save(mask)
        items.append((image, mask))
    dls = _dataloaders(items, (ImageBlock, MaskBlock(codes=["background", "shape"])), item_tfms=[Resize(size)])
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 2, 1)
    )
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(axis=1))
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit_one_cycle(epochs, 1e-2)
    learn.export((folder / "export.pkl").resolve())
    return folder / "export.pkl"


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


# --- Tabular, text and collaborative-filtering Learners ------------------------------------------------

COLOURS = ("red", "green", "blue")
SHAPES = ("round", "square", "flat")
# Tuples: fastai's FillMissing appends "<name>_na" to the cat_names list it is given.
TABULAR_CATEGORICAL = ("colour", "shape", "grade")  # strings, strings, integers
TABULAR_CONTINUOUS = ("size", "weight")  # "size" has missing values in training, "weight" none
MULTI_LABELS = ("is_big", "is_red")


def tabular_frame(rows: int = 240, seed: int = 0):
    """A synthetic table: categorical and continuous columns (some values missing) and every target the
    tabular Learners below learn: a class, two labels, and two values."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "colour": rng.choice(COLOURS, rows).astype(object),
            "shape": rng.choice(SHAPES, rows).astype(object),
            "grade": rng.integers(1, 6, rows),
            "size": rng.normal(10, 3, rows).round(2),
            "weight": rng.normal(50, 10, rows).round(1),
        }
    )
    frame.loc[rng.choice(rows, rows // 10, replace=False), "size"] = np.nan
    frame.loc[rng.choice(rows, rows // 20, replace=False), "colour"] = None
    size = frame["size"].fillna(10)
    frame["quality"] = np.select([size > 12, frame["weight"] > 55], ["high", "mid"], "low")
    frame["is_big"] = (size > 10).astype(int)
    frame["is_red"] = (frame["colour"] == "red").astype(int)
    frame["price"] = frame["weight"] * 2 + size + frame["grade"]
    frame["volume"] = frame["weight"] / 3 - size
    return frame


def _tabular_learner(folder: Path, y_names: list[str], y_block=None) -> Path:
    from fastai.tabular.all import Categorify, FillMissing, Normalize, TabularDataLoaders, tabular_learner

    frame = tabular_frame()
    dls = TabularDataLoaders.from_df(
        frame,
        y_names=y_names,
        y_block=y_block,
        cat_names=list(TABULAR_CATEGORICAL),
        cont_names=list(TABULAR_CONTINUOUS),
        procs=[Categorify, FillMissing, Normalize],
        valid_idx=list(range(200, len(frame))),
        bs=32,
        num_workers=0,
    )
    folder.mkdir(parents=True, exist_ok=True)
    return _fit_and_export(tabular_learner(dls, layers=[16, 8]), folder / "export.pkl")


def make_tabular_classifier(folder: Path) -> Path:
    """tabular_learner, single-label: the quality class (low, mid, high)."""
    return _tabular_learner(folder, ["quality"])


def make_tabular_multilabel(folder: Path) -> Path:
    """tabular_learner, multi-label: two 0/1 label columns."""
    from fastai.tabular.all import MultiCategoryBlock

    return _tabular_learner(folder, list(MULTI_LABELS), MultiCategoryBlock(encoded=True, vocab=list(MULTI_LABELS)))


def make_tabular_regressor(folder: Path) -> Path:
    """tabular_learner, regression of one target: the price."""
    return _tabular_learner(folder, ["price"])


def make_tabular_multi_regressor(folder: Path) -> Path:
    """tabular_learner, regression of two targets: price and volume."""
    return _tabular_learner(folder, ["price", "volume"])


GOOD_WORDS = "great wonderful lovely excellent superb happy".split()
BAD_WORDS = "awful terrible poor sad horrible dull".split()
FILLER_WORDS = "the a movie film plot actor scene was is and it this very".split()
TEXT_SEQ_LEN = 8  # small chunks, so that short test texts already span several of them
TEXT_MAX_LEN = 3 * TEXT_SEQ_LEN  # texts longer than this many tokens keep only their last outputs


def text_corpus(count: int = 60, seed: int = 0):
    """Short reviews of 3 to 20 words: "pos" or "neg" by their words; "long" too when over 12 words."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        positive = index % 2 == 0
        words = [*rng.choice(FILLER_WORDS, rng.integers(1, 18)), *rng.choice(GOOD_WORDS if positive else BAD_WORDS, 2)]
        rng.shuffle(words)
        label = "pos" if positive else "neg"
        rows.append((" ".join(words).capitalize() + ".", label, label + (";long" if len(words) > 12 else "")))
    return pd.DataFrame(rows, columns=["text", "label", "tags"])


def _text_dataloaders(label_col: str | None, multi_label: bool = False, bs: int = 16):
    """TextDataLoaders.from_df's DataBlock, with tokenization in this process: no pool of processes to fork."""
    from fastai.text.all import (
        CategoryBlock,
        ColReader,
        DataBlock,
        MultiCategoryBlock,
        RandomSplitter,
        TextBlock,
    )

    is_lm = label_col is None
    text = TextBlock.from_df("text", is_lm=is_lm, seq_len=TEXT_SEQ_LEN, n_workers=0)
    labels = [] if is_lm else [MultiCategoryBlock if multi_label else CategoryBlock]
    block = DataBlock(
        blocks=(text, *labels),
        get_x=ColReader("text"),
        get_y=None if is_lm else ColReader(label_col, label_delim=";" if multi_label else None),
        splitter=RandomSplitter(0.2, seed=0),
    )
    return block.dataloaders(text_corpus(), bs=bs, seq_len=TEXT_SEQ_LEN, num_workers=0)


def _text_classifier(folder: Path, label_col: str, multi_label: bool = False) -> Path:
    from fastai.text.all import AWD_LSTM, awd_lstm_clas_config, text_classifier_learner

    dls = _text_dataloaders(label_col, multi_label)
    config = {**awd_lstm_clas_config, "emb_sz": 16, "n_hid": 32, "n_layers": 2}
    # drop_mult above 0: with no weight dropout at all, fastai 2.8's WeightDropout fails to train on this torch.
    learn = text_classifier_learner(
        dls, AWD_LSTM, pretrained=False, config=config, seq_len=TEXT_SEQ_LEN, max_len=TEXT_MAX_LEN, drop_mult=0.1
    )
    folder.mkdir(parents=True, exist_ok=True)
    return _fit_and_export(learn, folder / "export.pkl")


def make_text_classifier(folder: Path) -> Path:
    """text_classifier_learner (AWD-LSTM, pretrained=False), single-label: pos or neg."""
    return _text_classifier(folder, "label")


def make_text_multilabel(folder: Path) -> Path:
    """text_classifier_learner, multi-label: pos/neg, and long."""
    return _text_classifier(folder, "tags", multi_label=True)


def ratings_frame(count: int = 600, seed: int = 0):
    """Synthetic ratings: integer user ids, string item ids, ratings from 0.5 to 5."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    users = rng.integers(0, 30, count)
    items = rng.integers(0, 20, count)
    ratings = np.clip(1 + (users % 5) * 0.5 + (items % 4) * 0.6 + rng.normal(0, 0.3, count), 0.5, 5).round(1)
    return pd.DataFrame({"user": users, "item": [f"m{i}" for i in items], "rating": ratings})


def make_collab(folder: Path) -> Path:
    """collab_learner (dot product with biases): the rating a user gives an item."""
    from fastai.collab import CollabDataLoaders, collab_learner

    dls = CollabDataLoaders.from_df(ratings_frame(), user_name="user", item_name="item", rating_name="rating", bs=64)
    folder.mkdir(parents=True, exist_ok=True)
    return _fit_and_export(collab_learner(dls, n_factors=8, y_range=(0, 5.5)), folder / "export.pkl")


# --- Learners fastai-serving refuses, for make-archive's messages ----------------------------------------


def make_language_model(folder: Path) -> Path:
    """language_model_learner: predicts the next token, not a class; exported untrained."""
    from fastai.text.all import AWD_LSTM, awd_lstm_lm_config, language_model_learner

    dls = _text_dataloaders(None, bs=8)
    config = {**awd_lstm_lm_config, "emb_sz": 16, "n_hid": 32, "n_layers": 2}
    learn = language_model_learner(dls, AWD_LSTM, pretrained=False, config=config)
    folder.mkdir(parents=True, exist_ok=True)
    learn.export((folder / "export.pkl").resolve())
    return folder / "export.pkl"


def make_tensor_learner(folder: Path) -> Path:
    """A plain Learner over DataLoaders of bare tensors: no kind fastai-serving knows how to read."""
    import torch
    from fastai.data.core import Datasets
    from fastai.data.transforms import ItemGetter
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat

    pairs = [(torch.randn(4), torch.randn(1)) for _ in range(16)]
    datasets = Datasets(pairs, tfms=[[ItemGetter(0)], [ItemGetter(1)]], splits=[list(range(12)), list(range(12, 16))])
    learn = Learner(datasets.dataloaders(bs=4, num_workers=0), torch.nn.Linear(4, 1), loss_func=MSELossFlat())
    folder.mkdir(parents=True, exist_ok=True)
    learn.export((folder / "export.pkl").resolve())
    return folder / "export.pkl"
