"""The opt-in bf16 fast path (make-archive --precision bf16), in-process."""

from __future__ import annotations

import warnings

import torch

from fastai_serving.learner import BF16, FP32, has_fast_bf16, load_learner
from fastai_serving.predict import decode_images, predict_images


def test_bf16_agrees_with_fp32_or_falls_back_to_it(exported_learners):
    path = exported_learners["digits"]
    images = decode_images([p.read_bytes() for p in sorted((path.parent / "samples").glob("*.png"))], ["x"] * 10)
    fp32 = torch.stack([p.output for p in predict_images(load_learner(path, precision=FP32), images)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        served = load_learner(path, precision=BF16)
    if has_fast_bf16(torch.device("cpu")):
        assert served.precision == BF16
        bf16 = torch.stack([p.output for p in predict_images(served, images)])
        assert bf16.dtype == torch.float32
        assert torch.equal(bf16.argmax(dim=1), fp32.argmax(dim=1))
        assert (bf16 - fp32).abs().max() < 0.05
    else:
        assert served.precision == FP32
        assert any("no fast bfloat16" in str(w.message) for w in caught)
