"""An `export.pkl` as fastai 1.x writes it, for the tests of its refusal: fastai 1.0.61 does not import here.

fastai 1.x's `Learner.export` is `torch.save` of a dict of the Learner's parts (fastai/basic_train.py); this
writes that dict for a `cnn_learner(data, models.squeezenet1_1)` classifier (a small arch fastai 1.x supports,
so the file is 5 MB): each fastai 1.x class and function
under its own name (stand-ins that pickle as references to those names), the torchvision model's real
layers and weights, in the order fastai 1.x saves them, as torch.save writes it (its zip, or the older
format with `legacy=True`).
"""

from __future__ import annotations

import functools
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision
from torch import nn

V1_NAME = "_fastai_v1_name"  # the fastai 1.x name a stand-in class pickles as
CLASSES = ["buildings", "fields", "water"]


def v1_class(name: str, base: type = object) -> type:
    """A stand-in for the class or function `name` (module.qualname), pickled as a reference to it: fastai 1.x's,
    or any other this environment lacks."""
    module, _, qualname = name.rpartition(".")
    return type(qualname, (base,), {"__module__": module, "__qualname__": qualname, V1_NAME: name})


def v1_object(name: str, **state) -> object:
    """An instance of fastai 1.x's class `name` holding `state`, as pickle stores one: the class and its __dict__."""
    instance = object.__new__(v1_class(name))
    instance.__dict__.update(state)
    return instance


def v1_module(name: str) -> nn.Module:
    """A layer of fastai 1.x's class `name`: a module of no weights (a pooling, a flatten)."""
    return v1_class(name, nn.Module)()


class _V1Pickler(pickle._Pickler):
    """pickle's own Pickler, writing a stand-in class as a reference to the fastai 1.x name it stands for."""

    def save_global(self, obj, name=None):
        v1_name = obj.__dict__.get(V1_NAME) if isinstance(obj, type) else None
        if v1_name is None:
            return super().save_global(obj, name)
        module, _, qualname = v1_name.rpartition(".")
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


_V1PickleModule = SimpleNamespace(
    Pickler=_V1Pickler, dump=pickle.dump, __name__="pickle"
)  # what torch.save takes as pickle_module


def v1_cnn_learner_state() -> dict:
    """The dict fastai 1.x's `Learner.export` saves for `cnn_learner(data, models.squeezenet1_1)`, 3 classes, 224 px."""
    arch = torchvision.models.squeezenet1_1(weights=None)
    body = nn.Sequential(*list(arch.children())[:-1])  # fastai 1.x's cut for squeezenet: all but the classifier
    head = nn.Sequential(
        v1_module("fastai.layers.AdaptiveConcatPool2d"),
        v1_module("fastai.layers.Flatten"),
        nn.BatchNorm1d(1024),
        nn.Dropout(0.25),
        nn.Linear(1024, 512),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(512),
        nn.Dropout(0.5),
        nn.Linear(512, len(CLASSES)),
    )
    crop_pad = v1_object(
        "fastai.vision.image.TfmCrop", func=v1_class("fastai.vision.transform._crop_pad"), order=99, params={}
    )
    return {
        "opt_func": functools.partial(torch.optim.Adam, betas=(0.9, 0.99)),
        "loss_func": v1_object("fastai.layers.FlattenedLoss", func=nn.CrossEntropyLoss(), axis=-1, floatify=False),
        "metrics": [v1_class("fastai.metrics.error_rate")],
        "true_wd": True,
        "bn_wd": True,
        "wd": 0.01,
        "train_bn": True,
        "model_dir": "models",
        "callback_fns": [functools.partial(v1_class("fastai.basic_train.Recorder"), add_time=True, silent=False)],
        "cb_state": {},
        "model": nn.Sequential(body, head),
        "data": {
            "x_cls": v1_class("fastai.vision.data.ImageList"),
            "x_proc": [],
            "y_cls": v1_class("fastai.data_block.CategoryList"),
            "y_proc": [v1_object("fastai.data_block.CategoryProcessor", classes=CLASSES, warns=[])],
            "tfms": [v1_object("fastai.vision.image.RandTransform", tfm=crop_pad, kwargs={}, p=1.0, resolved={})],
            "tfm_y": False,
            "tfmargs": {"size": 224},
            "normalize": {"mean": torch.tensor([0.485, 0.456, 0.406]), "std": torch.tensor([0.229, 0.224, 0.225])},
        },
        "cls": v1_class("fastai.basic_train.Learner"),
    }


def make_fastai_v1_export(folder: Path, legacy: bool = False) -> Path:
    """`folder`/export.pkl as fastai 1.x's `learn.export()` writes it (`legacy`: torch's format before 1.6)."""
    folder.mkdir(parents=True, exist_ok=True)
    return save_with_stand_ins(v1_cnn_learner_state(), folder / "export.pkl", legacy)


def save_with_stand_ins(obj: object, path: Path, legacy: bool = False) -> Path:
    """torch.save of `obj` (protocol 2, as fastai exports), each stand-in written as the name it stands for."""
    with warnings.catch_warnings():
        # The older format keeps each module class's source; a stand-in has none (fastai 1.x's had).
        warnings.filterwarnings("ignore", message="Couldn't retrieve source code")
        torch.save(
            obj, path, pickle_module=_V1PickleModule, pickle_protocol=2, _use_new_zipfile_serialization=not legacy
        )
    return path
