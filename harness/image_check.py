"""Check a running fastai-serving container the way chip-n-scale uses it.

Asks `GET /analyze` for TF Serving's model status, then posts what chip-n-scale's
download-and-predict lambda posts (`requests.post(url, data=json.dumps({"instances": [...]}))`,
no headers) with sample images, and checks each answer against the same Learner's
`learn.predict` run here, in-process. Exits non-zero, saying why, when anything differs.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import warnings
from pathlib import Path

import requests

from fastai_serving.engine.learner import load_learner

PROBABILITY_TOLERANCE = 1e-4


def in_process_probabilities(
    learner_path: Path, images: list[Path], utils_dir: Path | None
) -> tuple[list[str], list[list[float]]]:
    """The Learner's classes, and what `learn.predict` gives for each image, on this machine's own fastai."""
    from fastai.vision.all import PILImage

    served = load_learner(learner_path, utils_dir=utils_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probabilities = [[float(p) for p in served.learn.predict(PILImage.create(image))[2]] for image in images]
    return served.classes, probabilities


def model_status(url: str) -> dict:
    response = requests.get(f"{url}/analyze", timeout=5)
    if response.status_code != 200:
        raise SystemExit(f"GET /analyze answered {response.status_code}: {response.text}")
    return response.json()


def chip_n_scale_predict(url: str, images: list[Path]) -> list[list[float]]:
    instances = [{"image_bytes": {"b64": base64.b64encode(image.read_bytes()).decode()}} for image in images]
    response = requests.post(f"{url}/analyze:predict", data=json.dumps({"instances": instances}), timeout=60)
    if response.status_code != 200:
        raise SystemExit(f"POST /analyze:predict answered {response.status_code}: {response.text}")
    return response.json()["predictions"]


def differences(served: list[list[float]], expected: list[list[float]]) -> list[str]:
    """Each way the served answers differ from the in-process ones, in words."""
    if len(served) != len(expected):
        return [f"{len(served)} predictions for {len(expected)} instances"]
    problems = []
    for index, (got, want) in enumerate(zip(served, expected, strict=True)):
        if len(got) != len(want):
            problems.append(f"instance {index}: {len(got)} probabilities, expected {len(want)}")
        elif abs(sum(got) - 1) > 1e-3:
            problems.append(f"instance {index}: probabilities sum to {sum(got):.5f}")
        elif max(abs(g - w) for g, w in zip(got, want, strict=True)) > PROBABILITY_TOLERANCE:
            problems.append(
                f"instance {index}: probabilities differ from learn.predict by more than {PROBABILITY_TOLERANCE}"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the container's shim, e.g. http://127.0.0.1:8501")
    parser.add_argument("--learner", type=Path, required=True, help="the export.pkl the image serves")
    parser.add_argument(
        "--samples", type=Path, required=True, help="folder of PNGs; named <class>.png, argmax is checked too"
    )
    parser.add_argument("--utils", type=Path, help="the modules the Learner's pickle needs (the image's UTILS_DIR)")
    args = parser.parse_args(argv)

    images = sorted(args.samples.glob("*.png"), key=lambda path: path.stem)
    status = model_status(args.url)
    states = [version["state"] for version in status.get("model_version_status", [])]
    if "AVAILABLE" not in states:
        raise SystemExit(f"GET /analyze: no AVAILABLE version in {status}")
    served = chip_n_scale_predict(args.url, images)
    classes, expected = in_process_probabilities(args.learner, images, args.utils.resolve() if args.utils else None)
    problems = differences(served, expected)
    for problem in problems:
        print(f"image-check: {problem}", file=sys.stderr)
    summary = f"{len(served)} predictions"
    if not problems and all(image.stem in classes for image in images):
        right = sum(classes[p.index(max(p))] == image.stem for p, image in zip(served, images, strict=True))
        summary += f", {right}/{len(images)} argmax right"
    verdict = f"all equal to learn.predict within {PROBABILITY_TOLERANCE}" if not problems else "MISMATCHED"
    print(f"image-check: GET /analyze {states}; POST /analyze:predict with {len(images)} PNGs: {summary}, {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
