"""The demo model: a real fastai `vision_learner` trained offline on scikit-learn's digits.

The 1,797 8×8 digit images ship inside scikit-learn, so this needs no download. They are
written as 32×32 grayscale PNGs, a resnet18 (random init) is trained on them for a few
epochs (about 20 s on two CPU cores), and the Learner is exported.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32


def write_digit_images(folder: Path) -> Path:
    """Every digit as <folder>/<label>/<index>.png, 32×32 grayscale; returns the folder."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        class_dir = folder / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8), mode="L")
        image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST).save(class_dir / f"{index}.png")
    return folder


def train_digits(out_dir: Path, epochs: int = 4, seed: int = 0) -> tuple[Path, float]:
    """Train and export the demo Learner; returns (export.pkl path, validation accuracy)."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit notices at fastai import
    from fastai.vision.all import ImageDataLoaders, Resize, accuracy, resnet18, set_seed, vision_learner

    out_dir.mkdir(parents=True, exist_ok=True)
    images = write_digit_images(out_dir / "images")
    set_seed(seed, reproducible=True)
    dls = ImageDataLoaders.from_folder(
        images, valid_pct=0.2, seed=seed, item_tfms=Resize(IMAGE_SIZE), bs=64, num_workers=0
    )
    learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit_one_cycle(epochs, 3e-3)
        accuracy_value = float(learn.validate()[1])
    export_path = out_dir / "export.pkl"
    learn.export(export_path.resolve())
    write_samples(out_dir / "samples", dls.valid_ds.items)
    return export_path, accuracy_value


def write_samples(samples: Path, validation_images: list[Path]) -> None:
    """One held-out image per digit, as <samples>/<digit>.png, for example requests."""
    samples.mkdir(parents=True, exist_ok=True)
    for image in sorted(validation_images, key=lambda path: int(path.stem)):
        target = samples / f"{image.parent.name}.png"
        if not target.exists():
            target.write_bytes(image.read_bytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/demo"), help="output folder (default: build/demo)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    export_path, accuracy_value = train_digits(args.out, args.epochs)
    print(
        f"demo model: {export_path}, validation accuracy {accuracy_value:.3f}; sample images in {args.out / 'samples'}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
