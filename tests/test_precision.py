"""The opt-in bf16 fast path (make-archive --precision bf16), in-process."""

from __future__ import annotations

import warnings

import torch

from fastai_serving.learner import BF16, FP32, has_fast_bf16, load_learner
from fastai_serving.predict import decode_images, predict_images

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
