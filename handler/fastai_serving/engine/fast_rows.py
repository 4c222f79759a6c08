"""The tabular and collaborative-filtering fast path: a batch's rows through the Learner's own procs, vectorized.

fastai's `test_dl` copies the frame into a new `TabularPandas`, runs its procs, and builds a
DataLoader whose batches `get_preds` runs with its callbacks: milliseconds per call, whatever the
rows, which is what a served tabular model mostly spends. The procs Learners hold are three:
`FillMissing`, `Categorify` and `Normalize` (and target procs, which do nothing to inputs). For
those, `row_plan` takes their fitted state (the fill values, the categories of each column, the
means and standard deviations) and `RowPlan.tensors` applies it to the rows with numpy and one
`pd.Categorical` per categorical column, giving the two tensors `ReadTabBatch` would: category
codes (0, fastai's `#na#`, for a null or a category never seen in training) and normalized
continuous values, `<col>_na` flags included. A Learner with any other proc or batch transform
gives no plan: fastai's `test_dl` serves it as before.
"""

from __future__ import annotations

import logging
import operator
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

logger = logging.getLogger(__name__)

INPUT_PROCS = ("FillMissing", "Categorify", "Normalize")
# Target procs: they encode the target column, which a served row does not carry.
TARGET_PROCS = ("Categorize", "MultiCategorize", "EncodedMultiCategorize", "RegressionSetup")
BATCH_READER = "ReadTabBatch"


@dataclass(frozen=True)
class RowPlan:
    """The fitted state of a Learner's procs, in the order its model reads its inputs."""

    cat_names: tuple[str, ...]  # the model's categorical inputs, `<col>_na` flags included
    categories: tuple[pd.Index, ...]  # each one's training categories, without `#na#` (code 0)
    na_sources: dict[str, str]  # a `<col>_na` flag -> its continuous column
    cont_names: tuple[str, ...]
    fills: dict[str, np.float32]  # FillMissing's value per continuous column it fills
    means: np.ndarray | None  # Normalize's, float32, one per continuous column (None: no Normalize)
    stds: np.ndarray | None
    with_cont: bool  # the model takes the continuous tensor too (a collab model does not)

    def tensors(self, rows: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, ...]:
        """The model's inputs for `rows`, as `ReadTabBatch` gives them after the procs: codes, then values."""
        count = len(rows)
        values = operator.itemgetter(*self.cont_names) if self.cont_names else lambda row: ()
        # numpy reads a None (a null, missing) as NaN in a float array.
        conts = np.array([values(row) for row in rows], dtype=np.float32).reshape(count, len(self.cont_names))
        missing = np.isnan(conts)
        for index, name in enumerate(self.cont_names):
            if name in self.fills:
                conts[:, index] = np.where(missing[:, index], self.fills[name], conts[:, index])
        codes = np.empty((count, len(self.cat_names)), dtype=np.int64)
        for index, (name, categories) in enumerate(zip(self.cat_names, self.categories, strict=True)):
            if name in self.na_sources:
                values = pd.Series(missing[:, self.cont_names.index(self.na_sources[name])])
            else:
                values = pd.Series(list(map(operator.itemgetter(name), rows)), dtype=object)
            # pd.Categorical's own lookup, as Categorify's `_apply_cats` makes it: null or unseen is -1, 0 after the shift.
            codes[:, index] = categories.get_indexer_for(values) + 1
        if self.means is not None:
            conts = (conts - self.means) / self.stds
        cats = torch.from_numpy(codes)
        return (cats, torch.from_numpy(conts)) if self.with_cont else (cats,)


# One plan per loaded Learner (None: fastai's test_dl), read at its first batch.
_plans: weakref.WeakKeyDictionary[Any, RowPlan | None] = weakref.WeakKeyDictionary()


def row_plan(learn: Any) -> RowPlan | None:
    """The Learner's fast path, or None when it holds a proc or batch transform this module does not know."""
    if learn not in _plans:
        try:
            _plans[learn] = _read_plan(learn)
        except Exception:  # state this module cannot read: fastai's own path still serves the Learner
            logger.exception("fastai-serving: could not read the Learner's procs; using fastai's test_dl")
            _plans[learn] = None
        chosen = (
            "vectorized procs" if _plans[learn] is not None else "fastai's test_dl (procs the fast path does not know)"
        )
        logger.info("fastai-serving row path: %s", chosen)
    return _plans[learn]


def _read_plan(learn: Any) -> RowPlan | None:
    table = learn.dls.train_ds
    procs = list(table.procs.fs)
    names = [type(proc).__name__ for proc in procs]
    if any(name not in INPUT_PROCS + TARGET_PROCS for name in names) or len(set(names)) != len(names):
        return None
    if "FillMissing" in names and "Normalize" in names and names.index("FillMissing") > names.index("Normalize"):
        return None
    batch_transforms = [type(t).__name__ for t in learn.dls.valid.after_batch.fs]
    if batch_transforms != [BATCH_READER] or list(learn.dls.valid.before_batch.fs):
        return None
    by_name = dict(zip(names, procs, strict=True))
    cat_names, cont_names = [str(n) for n in table.cat_names], [str(n) for n in table.cont_names]
    categorify = by_name.get("Categorify")
    if cat_names and (categorify is None or any(name not in categorify.classes for name in cat_names)):
        return None
    fill = by_name.get("FillMissing")
    fills = {str(k): np.float32(v) for k, v in (fill.na_dict if fill is not None else {}).items()}
    na_sources = {f"{name}_na": name for name in fills} if fill is not None and fill.add_col else {}
    normalize = by_name.get("Normalize")
    means = stds = None
    if normalize is not None and cont_names:
        means = np.array([normalize.means[name] for name in cont_names], dtype=np.float32)
        stds = np.array([normalize.stds[name] for name in cont_names], dtype=np.float32)
    categories = tuple(pd.Index(list(categorify.classes[name].items[1:])) for name in cat_names)
    return RowPlan(
        cat_names=tuple(cat_names),
        categories=categories,
        na_sources={k: v for k, v in na_sources.items() if k in cat_names},
        cont_names=tuple(cont_names),
        fills=fills,
        means=means,
        stds=stds,
        with_cont=bool(getattr(table, "with_cont", True)),
    )
