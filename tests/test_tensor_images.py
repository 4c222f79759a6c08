"""Images as tensors (fastai_serving.engine.tensor_images): the GPU's decode-and-resize path, run here on CPU tensors.

torchvision's JPEG decoder gives PIL's pixels; torch's antialiased resize is PIL's within 2 levels;
answers through the path stay within a stated bound of `learn.predict`'s for every vision task; a bad
image fails as on the PIL path; and the archive setting decides where the path is taken.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from fastai_serving.contract.errors import BadInput
from fastai_serving.engine import fast_images, tensor_images
from fastai_serving.engine.fast_images import ResizeStep
from fastai_serving.engine.learner import load_learner
from fastai_serving.engine.predict import decode_for, predict_images
from fastai_serving.engine.settings import HandlerSettings

# How far answers through tensors may be from learn.predict's: measured 1.3e-5 to 2.0e-4 (segmentation), docs/pipeline.md.
TENSOR_ANSWERS = 1e-3
LEVELS = 2  # torch's uint8 antialiased resize against PIL's, in pixel levels
SIZES = [(32, 32), (40, 25), (25, 40), (17, 9), (64, 48)]  # (width, height): wider, taller, smaller, larger


def jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients with a little noise: photo-like, so JPEG keeps most of it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


def encoded_pictures() -> list[bytes]:
    """JPEGs of every size kind, and the benchmark's 256×256 tiles (textured, so resizing them loses detail)."""
    from harness.workload import make_tiles

    return [jpeg(picture(width, height, seed)) for seed, (width, height) in enumerate(SIZES)] + make_tiles(6, seed=5)


def pil_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize(
    "options",
    [{}, {"subsampling": 0}, {"subsampling": 1}, {"progressive": True}, {"optimize": True}],
    ids=["4:2:0", "4:4:4", "4:2:2", "progressive", "optimized"],
)
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_torchvisions_jpeg_decoder_gives_pils_pixels(options, mode):
    data = jpeg(picture(61, 37).convert(mode), **options)
    (decoded,) = tensor_images.decode_tensors([data], ["instance 0"], torch.device("cpu"))
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), pil_pixels(data))


def test_images_other_than_jpegs_are_decoded_by_pil_into_tensors():
    rgba = Image.fromarray(np.dstack([np.asarray(picture(20, 10)), np.full((10, 20), 128, np.uint8)]))
    data = png(rgba)
    (decoded,) = tensor_images.decode_tensors([data], ["instance 0"], torch.device("cpu"))
    assert np.array_equal(decoded.permute(1, 2, 0).numpy(), pil_pixels(data))


def test_the_jpeg_header_gives_the_size_before_any_pixel_is_decoded():
    assert tensor_images.jpeg_size(jpeg(picture(61, 37), progressive=True)) == (61, 37)
    assert tensor_images.jpeg_size(png(picture(61, 37))) is None
    assert tensor_images.jpeg_size(b"\xff\xd8 not a jpeg") is None


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """A JPEG whose frame header claims `width`×`height`: a decompression bomb's header."""
    data = bytearray(jpeg(picture(16, 16)))
    at = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[at + 5 : at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_bad_images_fail_alone_with_the_pil_paths_errors():
    good, truncated = jpeg(picture(30, 20)), jpeg(picture(30, 20))[:200]
    decoded = tensor_images.decode_tensors(
        [good, truncated, b"no image", jpeg_claiming_size(9000, 9000)],
        [f"instance {index}" for index in range(4)],
        torch.device("cpu"),
        max_pixels=64 * 1024 * 1024,
    )
    assert isinstance(decoded[0], torch.Tensor)
    assert all(isinstance(error, BadInput) for error in decoded[1:])
    assert str(decoded[1]).startswith("instance 1 could not be decoded")
    assert str(decoded[2]) == "instance 2 is not an image this server can decode"
    assert str(decoded[3]) == "instance 3 is 9000x9000 pixels, over the limit of 67108864 pixels"


@pytest.mark.parametrize("method", ["crop", "pad", "squish"])
@pytest.mark.parametrize("pad_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC], ids=["bilinear", "bicubic"])
@pytest.mark.parametrize("in_float", [False, True], ids=["uint8 (CPU)", "float (GPU)"])
def test_torchs_resize_step_is_pils_within_two_levels(method, pad_mode, resample, in_float):
    step = ResizeStep(size=(40, 24), method=method, pad_mode=pad_mode, resample=int(resample))
    for width, height in SIZES:
        image = picture(width, height)
        expected = np.asarray(step.apply(image)).astype(int)
        batch = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0)
        resized = tensor_images.resize_step(step, batch, in_float=in_float)
        assert resized.dtype == torch.uint8
        got = resized[0].permute(1, 2, 0).numpy().astype(int)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= LEVELS, (width, height)


def served_both_ways(export) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each picture's outputs through tensors and through PIL (whose answers are learn.predict's: test_fast_images)."""
    served = load_learner(export)
    pictures = encoded_pictures()
    names = [f"instance {index}" for index in range(len(pictures))]
    tensors = decode_for(served, pictures, names, HandlerSettings(tensor_images="on"))
    assert all(isinstance(image, torch.Tensor) for image in tensors), "the tensor path was not taken"
    pils = decode_for(served, pictures, names, HandlerSettings(tensor_images="off"))
    through_tensors = [p.output for p in predict_images(served, tensors, max_batch=2)]
    through_pil = [p.output for p in predict_images(served, pils, max_batch=2)]
    return through_tensors, through_pil


@pytest.mark.parametrize("model", ["classifier", "multilabel", "regressor", "segmenter"])
def test_each_vision_task_answers_within_the_stated_bound_through_tensors(small_learners, model):
    through_tensors, through_pil = served_both_ways(small_learners[model])
    largest = max(float((a - b).abs().max()) for a, b in zip(through_tensors, through_pil, strict=True))
    assert largest <= TENSOR_ANSWERS


def test_auto_keeps_pil_on_a_cpu_and_on_takes_tensors(small_learners):
    served = load_learner(small_learners["classifier"])
    pictures = encoded_pictures()[:2]
    names = ["instance 0", "instance 1"]
    assert all(isinstance(i, Image.Image) for i in decode_for(served, pictures, names, HandlerSettings()))
    assert all(isinstance(i, torch.Tensor) for i in decode_for(served, pictures, names, HandlerSettings(tensor_images="on")))  # fmt: skip
    assert tensor_images.wanted("auto", torch.device("cuda", 0))


def test_a_filter_torch_lacks_keeps_pil(small_learners):
    served = load_learner(small_learners["classifier"])
    resize = next(t for t in served.learn.dls.valid.after_item.fs if type(t).__name__ == "Resize")
    resize.mode = Image.LANCZOS
    fast_images._plans.pop(served.learn, None)
    decoded = decode_for(
        served, encoded_pictures()[:2], ["instance 0", "instance 1"], HandlerSettings(tensor_images="on")
    )
    assert all(isinstance(image, Image.Image) for image in decoded)


def test_an_unknown_tensor_images_setting_is_refused():
    with pytest.raises(ValueError, match="tensor_images='gpu': expected one of auto, on, off"):
        HandlerSettings.from_model_config({"handler": {"tensor_images": "gpu"}})
