"""An export.pkl written by fastai 1.x (the original fastai-serving's) is refused saying what it is and what to do.

make-archive and every worker load a Learner with `fastai_serving.engine.learner.load_learner`, so both say it.
fastai 1.x does not import here: harness/fastai_v1_export.py writes the file as its `Learner.export` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastai_serving.contract.errors import ModelError
from fastai_serving.engine.fastai_v1 import fastai_v1_names
from fastai_serving.engine.learner import load_learner
from harness.fastai_v1_export import make_fastai_v1_export, save_with_stand_ins, v1_class, v1_object

# What fastai 1.x's cnn_learner export refers to that fastai 2 does not have, in the order it saves them.
V1_VISION_EXPORT = [
    "fastai.layers.FlattenedLoss",
    "fastai.basic_train.Recorder",
    "fastai.vision.data.ImageList",
    "fastai.data_block.CategoryList",
    "fastai.data_block.CategoryProcessor",
    "fastai.vision.image.RandTransform",
    "fastai.vision.image.TfmCrop",
    "fastai.vision.transform._crop_pad",
    "fastai.basic_train.Learner",
]


@pytest.fixture(scope="module", params=[False, True], ids=["zip", "before-torch-1.6"])
def v1_export(request, tmp_path_factory) -> Path:
    """A fastai 1.x export in torch.save's zip format, or in its older one (torch before 1.6)."""
    return make_fastai_v1_export(tmp_path_factory.mktemp("fastai-v1"), legacy=request.param)


def test_the_fastai_1x_classes_an_export_names_are_found_in_either_torch_format(v1_export):
    assert fastai_v1_names(v1_export) == V1_VISION_EXPORT


def test_a_fastai_1x_export_is_refused_as_one_with_what_to_do(v1_export):
    with pytest.raises(ModelError) as refused:
        load_learner(v1_export)
    message = str(refused.value)
    assert message.startswith("export.pkl was exported by fastai 1.x (it holds fastai.layers.FlattenedLoss, ")
    assert "fastai-serving loads Learners exported by fastai 2: re-create the Learner in fastai 2" in message
    assert "load the old model's weights into it" in message and "docs/api.md#learners-exported-by-fastai-1x" in message
    assert "--utils" not in message  # no folder of the user's holds fastai's own classes


def test_a_fastai_class_this_fastai_lacks_is_named_as_another_fastai_versions_not_a_utils_module(tmp_path):
    path = save_with_stand_ins({"loss_func": v1_object("fastai.losses.LossOfAFutureFastai")}, tmp_path / "export.pkl")
    with pytest.raises(ModelError) as refused:
        load_learner(path)
    message = str(refused.value)
    assert "needs fastai.losses.LossOfAFutureFastai, which this fastai (2." in message
    assert "exported by another fastai version" in message and "--utils" not in message


def test_a_missing_module_of_the_users_own_still_asks_for_the_utils_folder(tmp_path):
    path = save_with_stand_ins({"item_tfms": [v1_class("my_tile_transforms.Invert")]}, tmp_path / "export.pkl")
    with pytest.raises(ModelError, match=r"needs my_tile_transforms\.Invert, which cannot be imported .* --utils DIR"):
        load_learner(path)
