"""Tabular and collaborative-filtering Learners: one DataFrame per batch of rows (their columns: learner_columns.py).

A row arrives as a JSON object and is checked column by column against what the Learner was
trained on (`instances.read_row`), so a bad row fails its own request before any batch is built.
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

from ..contract.columns import CONTINUOUS, Column
from ..defaults import FAST_ROWS, MAX_ROW_BATCH
from .fast_rows import row_plan
from .learner import ServedLearner
from .predict import Prediction, predict_loader, predict_tensors


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
) -> Sequence[Prediction]:
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
