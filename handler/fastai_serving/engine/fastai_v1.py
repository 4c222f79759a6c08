"""Recognise an `export.pkl` written by fastai 1.x (the original fastai-serving's), which this server cannot load.

fastai 1.x's `Learner.export` pickles a dict of the Learner's parts (its class `fastai.basic_train.Learner`,
the `Recorder` callback, the data's `ItemList` classes and processors, the model); fastai 2 has none of
those classes, so loading one fails on whichever comes first. The pickle's class references are read
here without running it, so the refusal can say what the file is and what to do (docs/api.md).
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from collections import deque
from pathlib import Path
from typing import BinaryIO

# Modules of fastai 1.x that fastai 2 does not have (fastai 1.0.61's package, less the names fastai 2 reuses).
V1_MODULES = (
    "fastai.basic_data",
    "fastai.basic_train",
    "fastai.callbacks",
    "fastai.core",
    "fastai.data_block",
    "fastai.datasets",
    "fastai.general_optimizer",
    "fastai.tabular.transform",
    "fastai.text.models.awd_lstm",
    "fastai.text.transform",
    "fastai.train",
    "fastai.utils",
    "fastai.vision.image",
    "fastai.vision.transform",
)
# fastai 1.x classes in modules whose names fastai 2 kept: the ones an export holds (loss, data, Learner classes).
V1_CLASSES = {
    ("fastai.layers", "FlattenedLoss"),
    ("fastai.vision.data", "ImageList"),
    ("fastai.vision.data", "ImageDataBunch"),
    ("fastai.vision.data", "SegmentationItemList"),
    ("fastai.vision.data", "SegmentationLabelList"),
    ("fastai.vision.data", "SegmentationProcessor"),
    ("fastai.vision.data", "ObjectItemList"),
    ("fastai.vision.data", "ObjectCategoryList"),
    ("fastai.vision.data", "PointsItemList"),
    ("fastai.vision.data", "ImageImageList"),
    ("fastai.text.data", "TextList"),
    ("fastai.text.data", "TokenizeProcessor"),
    ("fastai.text.data", "NumericalizeProcessor"),
    ("fastai.text.learner", "RNNLearner"),
    ("fastai.text.learner", "MultiBatchEncoder"),
    ("fastai.tabular.data", "TabularList"),
    ("fastai.tabular.data", "TabularProcessor"),
    ("fastai.collab", "CollabList"),
    ("fastai.collab", "CollabLearner"),
}
SHOWN_NAMES = 4  # the fastai 1.x classes a refusal names
LEGACY_PICKLES = 4  # torch.save's format before the zip: magic number, protocol, system info, then the object
STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def fastai_v1_names(path: Path) -> list[str]:
    """The fastai 1.x classes `path` (an export.pkl: torch.save's zip or its older format) refers to, in order."""
    return [name for name in _pickled_globals(path) if _is_v1(name)]


def fastai_v1_advice(file_name: str, names: list[str]) -> str:
    """What the refusal of a fastai 1.x export says: what it is and what to do."""
    distinct = list(dict.fromkeys(names))
    shown = ", ".join(distinct[:SHOWN_NAMES]) + (
        f" and {len(distinct) - SHOWN_NAMES} more" if len(distinct) > SHOWN_NAMES else ""
    )
    return (
        f"{file_name} was exported by fastai 1.x (it holds {shown}); fastai-serving loads Learners exported by "
        "fastai 2: re-create the Learner in fastai 2 (the same architecture and classes), load the old model's "
        "weights into it, export it with learn.export() and archive that (docs/api.md#learners-exported-by-fastai-1x)"
    )


def _is_v1(name: str) -> bool:
    module, _, attribute = name.rpartition(".")
    if (module, attribute) in V1_CLASSES:
        return True
    return any(module == v1 or module.startswith(v1 + ".") for v1 in V1_MODULES)


def _pickled_globals(path: Path) -> list[str]:
    """Every `module.name` the pickle refers to, without running it; [] where the file is no pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                return _globals_in(io.BytesIO(archive.read(data))) if data else []
        with path.open("rb") as stream:
            names: list[str] = []
            for _ in range(LEGACY_PICKLES):  # each pickle of the old format in turn; the tensors' bytes follow
                names += _globals_in(stream)
            return names
    except (OSError, zipfile.BadZipFile):
        return []


def _globals_in(stream: BinaryIO) -> list[str]:
    """The class references of one pickle read from `stream`: GLOBAL's, and STACK_GLOBAL's from the two strings
    pushed (or fetched from the memo) before it."""
    names: list[str] = []
    pushed: deque[str | None] = deque([None, None], maxlen=2)  # the last two pushes: a string, or None for others
    memo: dict[int, str | None] = {}
    try:
        for opcode, argument, _ in pickletools.genops(stream):
            name = opcode.name
            if name == "GLOBAL":
                names.append(argument.replace(" ", "."))
            elif name == "STACK_GLOBAL" and None not in pushed:
                names.append(f"{pushed[0]}.{pushed[1]}")
            elif name == "STOP":
                break
            if name in STRING_OPCODES:
                pushed.append(argument if isinstance(argument, str) else None)
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1]
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(argument)] = pushed[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(argument)))
            else:
                pushed.append(None)
    except (ValueError, EOFError, UnicodeDecodeError):
        pass  # not (or no longer) a pickle: what was read so far is all there is
    return names
