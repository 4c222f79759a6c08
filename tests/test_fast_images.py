"""The vision fast path (fastai_serving.engine.fast_images): batches built without fastai's pipeline answer as `learn.predict`.

Every vision task kind, every resize method and padding mode fastai offers (on images wider,
taller and smaller than the target, and a target that is not square), a Learner with `Normalize`,
and Learners the fast path must leave to fastai's own pipeline.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastai_serving.engine import fast_images
from fastai_serving.engine.learner import load_learner
from fastai_serving.engine.predict import predict_images
from harness import learners

PROBABILITIES = 1e-5
SIZES = [(32, 32), (40, 25), (25, 40), (17, 9), (64, 48)]  # (width, height): wider, taller, smaller, larger


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)) for width, height in SIZES]


def fastai_learner(export: Path):
    from fastai.learner import load_learner as fastai_load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        learn = fastai_load_learner(export)
    learn.remove_cbs([cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"])
    return learn


def fastai_predictions(learn, pictures: list[Image.Image]) -> list[torch.Tensor]:
    from fastai.vision.core import PILImage

    with learn.no_bar():
        return [learn.predict(PILImage.create(np.asarray(picture)))[2] for picture in pictures]


def fast_predictions(served, pictures: list[Image.Image]) -> list:
    fast_images._plans.pop(served.learn, None)
    assert fast_images.image_plan(served.learn, served.device, pictures[0]) is not None, "the fast path was not taken"
    return predict_images(served, pictures, max_batch=2, fast=True)


@pytest.mark.parametrize("model", ["classifier", "multilabel", "regressor", "segmenter"])
def test_each_vision_task_answers_learn_predict_through_the_fast_path(small_learners, model):
    served = load_learner(small_learners[model])
    learn = fastai_learner(small_learners[model])
    pictures = images()
    for prediction, expected in zip(
        fast_predictions(served, pictures), fastai_predictions(learn, pictures), strict=True
    ):
        assert prediction.output.shape == expected.shape
        assert torch.allclose(prediction.output, expected.float(), atol=PROBABILITIES)


def set_resize(learn, **attributes) -> None:
    """Change the Learner's Resize (its validation pipeline, which test_dl and learn.predict both read)."""
    resize = next(t for t in learn.dls.valid.after_item.fs if type(t).__name__ == "Resize")
    for name, value in attributes.items():
        setattr(resize, name, value)


@pytest.mark.parametrize("method", ["crop", "pad", "squish"])
@pytest.mark.parametrize("pad_mode", ["zeros", "border", "reflection"])
def test_each_resize_method_and_padding_mode_answers_learn_predict(small_learners, method, pad_mode):
    export = small_learners["classifier"]
    served, learn = load_learner(export), fastai_learner(export)
    for target in (served.learn, learn):  # fastai stores (width, height): a target wider than tall
        set_resize(target, method=method, pad_mode=pad_mode, size=(40, 24))
    pictures = images()
    for prediction, expected in zip(
        fast_predictions(served, pictures), fastai_predictions(learn, pictures), strict=True
    ):
        assert torch.allclose(prediction.output, expected, atol=PROBABILITIES)


@pytest.mark.parametrize("resample", [Image.NEAREST, Image.BICUBIC, Image.LANCZOS])
def test_the_resizes_own_resampling_filter_is_used(small_learners, resample):
    export = small_learners["classifier"]
    served, learn = load_learner(export), fastai_learner(export)
    for target in (served.learn, learn):
        set_resize(target, mode=resample)
    pictures = images()
    for prediction, expected in zip(
        fast_predictions(served, pictures), fastai_predictions(learn, pictures), strict=True
    ):
        assert torch.allclose(prediction.output, expected, atol=PROBABILITIES)


def test_a_learner_with_normalize_answers_learn_predict(small_learners):
    from fastai.vision.all import Normalize, imagenet_stats

    export = small_learners["classifier"]
    served, learn = load_learner(export), fastai_learner(export)
    for target in (served.learn, learn):
        target.dls.valid.after_batch.add(Normalize.from_stats(*imagenet_stats, cuda=False))
    pictures = images()
    assert "Normalize" in fast_images.image_plan(served.learn, served.device, pictures[0]).names
    for prediction, expected in zip(
        fast_predictions(served, pictures), fastai_predictions(learn, pictures), strict=True
    ):
        assert torch.allclose(prediction.output, expected, atol=PROBABILITIES)


def test_a_learner_with_a_transform_the_fast_path_does_not_know_uses_fastais_pipeline(small_learners):
    served = load_learner(small_learners["with_utils"], utils_dir=learners.UTILS_DIR)
    assert fast_images.image_plan(served.learn, served.device, images()[0]) is None


def test_a_transform_fastai_runs_only_in_training_leaves_the_fast_path_on(small_learners):
    from fastai.vision.all import Brightness

    served, learn = load_learner(small_learners["classifier"]), fastai_learner(small_learners["classifier"])
    for target in (served.learn, learn):
        target.dls.valid.after_batch.add(Brightness(max_lighting=0.9, p=1.0))  # split_idx 0: training only
    pictures = images()
    for prediction, expected in zip(
        fast_predictions(served, pictures), fastai_predictions(learn, pictures), strict=True
    ):
        assert torch.allclose(prediction.output, expected, atol=PROBABILITIES)


def test_with_the_fast_path_off_the_batch_goes_through_a_test_dataloader(small_learners, monkeypatch):
    served = load_learner(small_learners["classifier"])
    calls = []
    real_test_dl = served.learn.dls.test_dl
    monkeypatch.setattr(
        served.learn.dls, "test_dl", lambda items, **kw: calls.append(len(items)) or real_test_dl(items, **kw)
    )
    fast = [p.output for p in predict_images(served, images(), max_batch=2, fast=True)]
    calls_with_fast_path = len(calls)
    slow = [p.output for p in predict_images(served, images(), max_batch=2, fast=False)]
    assert calls[calls_with_fast_path:] == [len(SIZES)]
    assert all(torch.allclose(a, b, atol=PROBABILITIES) for a, b in zip(fast, slow, strict=True))
