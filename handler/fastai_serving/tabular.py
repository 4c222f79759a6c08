"""Tabular and collaborative-filtering Learners: their columns, and one DataFrame per batch of rows.

A row arrives as a JSON object and is checked column by column against what the Learner was
trained on (`contract.read_row`), so a bad row fails its own request before any batch is built.
The checked rows of every request in a TorchServe batch then go into one DataFrame and one
`test_dl`: fastai's per-call cost (copying the frame, running its procs, building a DataLoader)
is paid once per batch, not once per request or row. The Learner's own procs do the rest, as in
`learn.predict`: FillMissing fills a null, Categorify maps a category never seen in training to
its `#na#` code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .contract import ANY, BOOLEAN, CATEGORICAL, CONTINUOUS, INTEGER, NUMBER, STRING, Column
from .defaults import FAST_ROWS, MAX_ROW_BATCH
from .fast_rows import row_plan
from .learner import ServedLearner
from .predict import Prediction, predict_loader, predict_tensors

NA_CATEGORY = "#na#"  # the category fastai's Categorify puts first, for missing and unseen values


def columns_of(learn: Any) -> list[Column]:
    """The columns a row must hold, in the Learner's order: its categorical then its continuous ones.

    The `<name>_na` columns FillMissing adds are the Learner's own, not the client's.
    """
    table = learn.dls.train_ds
    procs = {type(proc).__name__: proc for proc in table.procs.fs}
    fill = procs.get("FillMissing")
    fillable = set(getattr(fill, "na_dict", {}) or {})
    added = {f"{name}_na" for name in fillable} if getattr(fill, "add_col", False) else set()
    categorify = procs.get("Categorify")
    columns = []
    for name in table.cat_names:
        if name in added:
            continue
        if categorify is None or name not in categorify.classes:
            columns.append(Column(str(name), CATEGORICAL, INTEGER, nullable=False))  # codes, as sent
            continue
        categories = tuple(_json_value(c) for c in categorify.classes[name] if not _is_na_category(c))
        columns.append(Column(str(name), CATEGORICAL, _value_type(categories), nullable=True, categories=categories))
    for name in table.cont_names:
        columns.append(Column(str(name), CONTINUOUS, NUMBER, nullable=name in fillable))
    return columns


def _is_na_category(category: Any) -> bool:
    return isinstance(category, str) and category == NA_CATEGORY


def _json_value(category: Any) -> Any:
    """A category as JSON writes it: numpy scalars as Python numbers, anything unusual as text."""
    if isinstance(category, np.generic):
        category = category.item()
    return category if isinstance(category, (str, int, float, bool)) else str(category)


def _value_type(categories: Sequence[Any]) -> str:
    """The one JSON type every category has (a client must send that type), or ANY."""
    if categories and all(isinstance(c, bool) for c in categories):
        return BOOLEAN
    if any(isinstance(c, bool) for c in categories) or not categories:
        return ANY
    if all(isinstance(c, str) for c in categories):
        return STRING
    if all(isinstance(c, int) for c in categories):
        return INTEGER
    if all(isinstance(c, (int, float)) for c in categories):
        return NUMBER
    return ANY


def rows_frame(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> pd.DataFrame:
    """One DataFrame of checked rows, typed as `learn.predict`'s one-row frame reaches the procs.

    Continuous columns are float32 (NaN for null), as the training frame and fastai's own
    inference frame are; categorical ones hold the values as sent (objects, None for null), so
    Categorify matches them against the training categories exactly as for one row.
    """
    data = {}
    for column in columns:
        values = [row[column.name] for row in rows]
        if column.kind == CONTINUOUS:
            data[column.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
        else:
            data[column.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data, index=pd.RangeIndex(len(rows)))


def predict_rows(
    served: ServedLearner, rows: Sequence[dict[str, Any]], max_rows: int = MAX_ROW_BATCH, fast: bool = FAST_ROWS
) -> list[Prediction]:
    """Predict every row, `max_rows` rows per forward pass: with the procs applied vectorized where the Learner's
    procs are all ones the fast path knows (`fast`), else with one frame and one test DataLoader."""
    if not rows:
        return []
    plan = row_plan(served.learn) if fast else None
    if plan is not None:
        inputs = [tensor.to(served.device) for tensor in plan.tensors(rows)]
        chunks = (tuple(t[start : start + max_rows] for t in inputs) for start in range(0, len(rows), max_rows))
        return predict_tensors(served, chunks, count=len(rows))
    test_dl = served.learn.dls.test_dl(rows_frame(rows, served.columns), bs=max_rows)
    # A tabular test DataLoader keeps the frame's order: nothing to reorder.
    return predict_loader(served, test_dl, count=len(rows), reorder=False)
