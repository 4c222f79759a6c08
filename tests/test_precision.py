"""The opt-in bf16 fast path (make-archive --precision bf16), in-process."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from fastai_serving.compiled.aot import clear_decisions
from fastai_serving.contract.vocabulary import MULTI_LABEL, SEGMENTATION, SINGLE_LABEL
from fastai_serving.engine.learner import BF16, FP32, has_fast_bf16, load_learner
from fastai_serving.engine.predict import decode_images, predict_images

TOLERANCE = 0.05  # the largest probability difference bf16 may make (docs/performance.md)


def test_bf16_agrees_with_fp32_or_falls_back_to_it(small_learners):
    path = small_learners["classifier"]
    images = sorted((path.parent / "images").glob("*.png"))
    decoded = decode_images([image.read_bytes() for image in images], [image.name for image in images])
    fp32 = torch.stack([p.output for p in predict_images(load_learner(path, precision=FP32), decoded)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = load_learner(path, precision=BF16)
    if has_fast_bf16(torch.device("cpu")):
        assert served.precision == BF16 and served.describe()["precision"] == BF16
        bf16 = torch.stack([p.output for p in predict_images(served, decoded)])
        assert bf16.dtype == torch.float32
        assert (bf16 - fp32).abs().max() < TOLERANCE
        top2 = fp32.topk(2, dim=1).values
        decided = (top2[:, 0] - top2[:, 1]) > 2 * TOLERANCE  # a decision bf16's rounding cannot flip
        assert torch.equal(bf16.argmax(dim=1)[decided], fp32.argmax(dim=1)[decided])
    else:
        assert served.precision == FP32 and served.describe()["precision"] == FP32
        assert any("no fast bfloat16" in str(w.message) for w in caught)


def test_a_bf16_package_is_checked_on_the_decisions_eager_makes_clearly_and_near_ties_are_left_out():
    """make-archive --compile aot --precision bf16 compares decoded answers only where eager bf16 decides by
    more than bf16's rounding: a near-tie may fall either way in another kernel's arithmetic."""
    classifier = SimpleNamespace(task=SINGLE_LABEL, learn=SimpleNamespace(loss_func=None))
    probabilities = torch.tensor([[0.3479, 0.2909, 0.3612], [0.70, 0.20, 0.10]])  # 0.013 apart; 0.5 apart
    assert clear_decisions(classifier, probabilities).tolist() == [False, True]
    segmenter = SimpleNamespace(task=SEGMENTATION, learn=SimpleNamespace(loss_func=None))
    masks = torch.tensor([[[[0.51, 0.9]], [[0.49, 0.1]]]])  # one image, two classes, a 1x2 mask
    assert clear_decisions(segmenter, masks).tolist() == [[[False, True]]]
    multilabel = SimpleNamespace(task=MULTI_LABEL, learn=SimpleNamespace(loss_func=SimpleNamespace(thresh=0.5)))
    assert clear_decisions(multilabel, torch.tensor([[0.505, 0.9, 0.1]])).tolist() == [[False, True, True]]
