"""The columns a tabular or collaborative-filtering Learner reads, found in its data's procs.

Its own module so that loading a Learner (learner.py) needs nothing from predicting rows (tabular.py),
which needs the loaded Learner: no import cycle between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..contract.columns import ANY, BOOLEAN, CATEGORICAL, CONTINUOUS, INTEGER, NUMBER, STRING, Column

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
