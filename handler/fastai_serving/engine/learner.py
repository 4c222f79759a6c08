"""Load an exported fastai Learner for serving and say what kind of model it is.

Four kinds are served (`kind_of`): vision Learners, tabular Learners (`tabular_learner`), text
classifiers (`text_classifier_learner`) and collaborative filtering (`collab_learner`); each
does one of four tasks (`task_of`). Anything else is refused with what was found.
"""

from __future__ import annotations

import pickle
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import defaults
from ..contract.columns import Column
from ..contract.errors import ModelError
from ..contract.vocabulary import (
    COLLAB,
    IMAGE_INPUT,
    MULTI_LABEL,
    REGRESSION,
    SEGMENTATION,
    SINGLE_LABEL,
    TABULAR,
    TEXT,
    TEXT_INPUT,
    VISION,
)
from .fastai_v1 import fastai_v1_advice, fastai_v1_names
from .learner_columns import columns_of

FP32, BF16 = "fp32", "bf16"
PRECISIONS = (FP32, BF16)

# The metadata's "input" (kept from the first, image-only release): what one instance is.
INPUT_OF_KIND = {VISION: "image", TABULAR: "row", COLLAB: "row", TEXT: "text"}
# fastai's collaborative-filtering models (collab_learner): their Learner is tabular underneath.
COLLAB_MODELS = ("EmbeddingDotBias", "EmbeddingNN")


class _NamingUnpickler(pickle.Unpickler):
    """An Unpickler that turns a missing module into an error naming it.

    fastai's `load_learner` reports a missing module as an `UnboundLocalError`
    from deep inside fastai; this names the module and what to do about it.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ModuleNotFoundError, AttributeError) as error:
            if module == "fastai" or module.startswith("fastai."):  # fastai's own: no utils folder holds it
                raise ModelError(
                    f"the exported Learner needs {module}.{name}, which this fastai ({_fastai_version()}) does not "
                    f"have: it was exported by another fastai version; export it again with fastai "
                    f"{_fastai_version()}"
                ) from None
            raise ModelError(
                f"the exported Learner needs {module}.{name}, which cannot be imported "
                f"({error}); pass the folder holding that module as the utils folder "
                f"(make-archive --utils DIR)"
            ) from None


def _fastai_version() -> str:
    import fastai

    return fastai.__version__


class _NamingPickleModule:
    """The `pickle_module` torch.load takes: pickle, with the naming Unpickler."""

    Unpickler = _NamingUnpickler
    load = pickle.load
    __name__ = "pickle"


@dataclass
class ServedLearner:
    """A Learner ready for inference, with what a client needs to know about it."""

    learn: Any
    task: str
    classes: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = FP32
    kind: str = VISION
    columns: list[Column] = field(default_factory=list)  # tabular and collab: the columns a row needs
    targets: list[str] = field(default_factory=list)  # tabular and collab: the predicted columns, in output order
    max_text_chars: int = defaults.MAX_TEXT_CHARS  # text: the longest text one instance may be
    compile_report: Any = None  # a compiled.CompileReport once a compile was asked for

    def describe(self) -> dict[str, Any]:
        """The model's metadata: task, classes in output order, input kind and inputs, its precision and its compile."""
        described = {
            "task": self.task,
            "classes": self.classes,
            "input": INPUT_OF_KIND[self.kind],
            "precision": self.precision,
            "kind": self.kind,
            "inputs": self.inputs(),
        }
        if self.targets:
            described["targets"] = self.targets
        if self.compile_report is not None:
            described |= self.compile_report.describe()
        return described

    def inputs(self) -> list[dict[str, Any]]:
        """What one instance holds: the image (and the size the Learner resizes it to, [height, width], where
        it does: a scene's window, for one), the text and its limit, or each column with its kind."""
        if self.kind == VISION:
            size = resized_to(self.learn)
            return [{"name": IMAGE_INPUT, "kind": "image", **({"size": list(size)} if size else {})}]
        if self.kind == TEXT:
            return [{"name": TEXT_INPUT, "kind": "text", "max_chars": self.max_text_chars}]
        return [column.describe() for column in self.columns]


# fastai's transforms that give every image one size (`size`: N, or (height, width)).
RESIZING = ("Resize", "RandomResizedCrop", "RandomResizedCropGPU", "CropPad", "RandomCrop")


def resized_to(learn: Any) -> tuple[int, int] | None:
    """(height, width) the Learner's pipeline resizes every image to, or None if it keeps each image's own size."""
    for pipeline in (learn.dls.after_item, learn.dls.after_batch):
        for transform in pipeline.fs:
            size = getattr(transform, "size", None)
            if type(transform).__name__ in RESIZING and size is not None:
                height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
                return int(height), int(width)
    return None


def load_learner(
    learner_path: str | Path,
    device: str | torch.device = "cpu",
    utils_dir: str | Path | None = None,
    precision: str = defaults.PRECISION,
    channels_last: bool = defaults.CHANNELS_LAST,
    max_text_chars: int = defaults.MAX_TEXT_CHARS,
) -> ServedLearner:
    """Load `learner_path` (an `export.pkl`) onto `device`, ready to serve.

    `utils_dir`, when given, is put on `sys.path` first: it holds the modules the
    pickle refers to (custom transforms, label functions). `precision` "bf16" is the
    opt-in fast path: bfloat16 autocast and channels-last memory, where the device
    has fast bfloat16 (it falls back to fp32, with a warning, where it has not).
    `channels_last` stores the model's weights channels-last in any precision: the same
    results to float rounding (about 1e-6), faster convolutions on CPUs and recent GPUs
    (vision Learners only). `max_text_chars` bounds a text Learner's instances.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit notices raised by fastai's import
        from fastai.learner import load_learner as fastai_load_learner

    learner_path = Path(learner_path)
    if not learner_path.is_file():
        raise ModelError(f"no exported Learner at {learner_path}")
    if utils_dir is not None and str(utils_dir) not in sys.path:
        sys.path.insert(0, str(utils_dir))
    device = torch.device(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        try:
            # Always onto the CPU first: fastai's own GPU choice ignores the device asked for.
            learn = fastai_load_learner(learner_path, cpu=True, pickle_module=_NamingPickleModule)
        except Exception as error:  # torch/fastai raise many kinds for a file that is no Learner
            version_1 = fastai_v1_names(learner_path)  # read only now: a Learner that loads pays nothing
            if version_1:
                raise ModelError(fastai_v1_advice(learner_path.name, version_1)) from None
            if isinstance(error, ModelError):
                raise
            raise ModelError(
                f"{learner_path.name} is not an exported fastai Learner ({type(error).__name__}: {error})"
            ) from None
    if not hasattr(learn, "dls") or not hasattr(learn, "model"):
        raise ModelError(f"{learner_path.name} holds a {type(learn).__name__}, not a fastai Learner")
    kind = kind_of(learn, learner_path.name)
    _prepare_for_serving(learn, device)
    if precision == BF16 and not has_fast_bf16(device):
        warnings.warn(f"{device} has no fast bfloat16; serving in fp32", stacklevel=2)
        precision = FP32
    if kind == VISION and (precision == BF16 or channels_last):
        learn.model.to(memory_format=torch.channels_last)
    task = task_of(learn, kind)
    served = ServedLearner(
        learn=learn,
        task=task,
        classes=classes_of(learn, task, kind),
        device=device,
        precision=precision,
        kind=kind,
        max_text_chars=max_text_chars,
    )
    if kind in (TABULAR, COLLAB):
        served.columns = columns_of(learn)
        served.targets = [str(name) for name in learn.dls.train_ds.y_names]
    return served


def kind_of(learn: Any, name: str = "the Learner") -> str:
    """Vision, tabular, text (a classifier) or collab, from the Learner's data and model; else `ModelError`."""
    dataset = getattr(learn.dls, "train_ds", None)
    model_name = type(learn.model).__name__
    if any(cls.__name__ == "Tabular" for cls in type(dataset).__mro__):
        return COLLAB if model_name in COLLAB_MODELS else TABULAR
    readers = _input_transform_names(dataset)
    if {"Tokenizer", "Numericalize"} & set(readers):
        encoder = learn.model[0] if isinstance(learn.model, torch.nn.Sequential) and len(learn.model) else None
        if type(encoder).__name__ == "SentenceEncoder":
            return TEXT
        raise ModelError(
            f"{name} is a text Learner whose model is a {model_name} without a SentenceEncoder, such as a "
            "language model (language_model_learner): fastai-serving serves text classifiers "
            "(text_classifier_learner)"
        )
    if any("PIL" in reader for reader in readers):
        return VISION
    raise ModelError(
        f"{name} is a {type(learn).__name__} whose inputs are read by "
        f"{', '.join(readers) or f'a {type(dataset).__name__}'} into a {model_name}: fastai-serving serves "
        "vision, tabular (tabular_learner), text classifier (text_classifier_learner) and collaborative "
        "filtering (collab_learner) Learners"
    )


def _input_transform_names(dataset: Any) -> list[str]:
    """The names of the transforms that read an input (the first pipeline of the Datasets)."""
    pipelines = getattr(dataset, "tls", None) or []
    if not pipelines:
        return []
    return [str(getattr(tfm, "name", type(tfm).__name__)).split(" -- ")[0] for tfm in pipelines[0].fs]


def has_fast_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware: AVX512-BF16 or AMX on a CPU, or a GPU that supports it."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(
        getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )


def _prepare_for_serving(learn: Any, device: torch.device) -> None:
    """Eval mode on `device`, no progress bars, no DataLoader worker processes."""
    from fastai.callback.progress import ProgressCallback

    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    learn.dls.to(device)
    learn.model.to(device)
    learn.model.eval()


def _target_transforms(learn: Any) -> list[Any]:
    """The transforms of the target pipeline (the last one of the Datasets)."""
    datasets = learn.dls.train_ds
    pipelines = getattr(datasets, "tls", None) or []
    return list(pipelines[-1].fs) if len(pipelines) > 1 else []


def _mask_codes(learn: Any) -> Any:
    """The `AddMaskCodes` item transform a MaskBlock adds, or None."""
    return next((tfm for tfm in learn.dls.after_item.fs if type(tfm).__name__ == "AddMaskCodes"), None)


def task_of(learn: Any, kind: str = VISION) -> str:
    """Which of the four served tasks the Learner does, from its target pipeline (tabular: its procs)."""
    if kind in (TABULAR, COLLAB):
        names = {type(proc).__name__ for proc in learn.dls.train_ds.procs.fs}
    else:
        names = {type(tfm).__name__ for tfm in _target_transforms(learn)}
    if {"MultiCategorize", "OneHotEncode", "EncodedMultiCategorize"} & names:
        return MULTI_LABEL
    if "Categorize" in names:
        return SINGLE_LABEL
    if kind == VISION and _mask_codes(learn) is not None:
        return SEGMENTATION
    if "RegressionSetup" in names:
        return REGRESSION
    return _task_from_loss(learn)


def _task_from_loss(learn: Any) -> str:
    """Fallback for Learners built without a DataBlock target: read the loss function."""
    loss_name = type(learn.loss_func).__name__
    if "BCE" in loss_name:
        return MULTI_LABEL
    if "CrossEntropy" in loss_name:
        return SEGMENTATION if getattr(learn.loss_func, "axis", -1) == 1 else SINGLE_LABEL
    return REGRESSION


def classes_of(learn: Any, task: str, kind: str = VISION) -> list[str]:
    """Class names in output order (segmentation: the codes), or [] for regression."""
    if task == REGRESSION:
        return []
    if task == SEGMENTATION:
        codes = getattr(_mask_codes(learn), "codes", None)
        return [str(code) for code in codes] if codes is not None else []
    vocab = getattr(learn.dls, "vocab", None)
    if vocab is None:
        return []
    if kind == TEXT:
        vocab = vocab[-1]  # a text classifier's vocab is (the tokens, the classes)
    elif task == MULTI_LABEL and len(vocab) == 2 and isinstance(vocab[0], (list, tuple)):
        vocab = vocab[-1]
    return [str(name) for name in vocab]
