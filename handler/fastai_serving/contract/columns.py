"""The column schema of tabular and collaborative-filtering Learners: what a client sends in each column.

Each column has a kind (categorical or continuous) and the JSON type of its values; `Column.read`
checks one value and names the instance and column when it is wrong. The metadata describes the
columns with `Column.describe`. Imports neither numpy nor pandas: the fronts describe columns too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInput, json_type

# A tabular column's kind (the metadata's "kind" of each column).
CATEGORICAL, CONTINUOUS = "categorical", "continuous"
# The JSON type of a categorical column's categories: a value of another type is refused.
STRING, INTEGER, NUMBER, BOOLEAN, ANY = "string", "integer", "number", "boolean", "any"
FLOAT32_MAX = 3.4028234663852886e38  # continuous values go to the model as float32


@dataclass(frozen=True)
class Column:
    """One input column of a tabular or collaborative-filtering Learner, as clients send it."""

    name: str
    kind: str  # CATEGORICAL or CONTINUOUS
    value_type: str = NUMBER  # the JSON type of its values (a categorical column's: its categories' type)
    nullable: bool = True  # null, a missing value, is filled by the Learner's procs
    categories: tuple[Any, ...] = field(default=(), repr=False)  # categorical: those seen in training, in order

    def describe(self) -> dict[str, Any]:
        """The column as the metadata tells it."""
        described: dict[str, Any] = {"name": self.name, "kind": self.kind, "type": self.value_type}
        if self.kind == CATEGORICAL:
            described["categories"] = list(self.categories)
        described["nullable"] = self.nullable
        return described

    def read(self, value: Any, where: str) -> Any:
        """`value` as the Learner takes it (None: missing); `BadInput` naming the instance and column."""
        # The common cases first, each in one test (a served table's rows are thousands of these per batch):
        # a finite float32-range number (NaN and the infinities fail the comparison), a string category.
        if type(value) is float and self.kind == CONTINUOUS and -FLOAT32_MAX <= value <= FLOAT32_MAX:
            return value
        if type(value) is str and self.value_type in (STRING, ANY):
            return value
        if value is None:
            if not self.nullable:
                raise BadInput(
                    f"{where}, column {self.name!r}: null (a missing value), but the Learner saw no missing "
                    f"{self.name!r} in training and cannot fill one: send a number"
                )
            return None
        if self.kind == CONTINUOUS:
            return self._number(value, where)
        if _is_type(value, self.value_type):
            return int(value) if self.value_type == INTEGER else value
        example = f" such as {self.categories[0]!r}" if self.categories else ""
        raise BadInput(
            f"{where}, column {self.name!r} must be {_a(self.value_type)} (a category{example}), not {json_type(value)}"
        )

    def _number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadInput(f"{where}, column {self.name!r} must be a number, not {json_type(value)}")
        number = float(value) if abs(value) <= FLOAT32_MAX else math.inf
        if not math.isfinite(number):
            raise BadInput(f"{where}, column {self.name!r}: {value!r} is not a finite number within float32's range")
        return number


def _is_type(value: Any, value_type: str) -> bool:
    """Whether a JSON value is of `value_type` (an integer may arrive as 3.0)."""
    if isinstance(value, bool):
        return value_type in (BOOLEAN, ANY)
    if value_type == STRING:
        return isinstance(value, str)
    if value_type == INTEGER:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if value_type == NUMBER:
        return isinstance(value, (int, float)) and math.isfinite(value)
    if value_type == ANY:
        return isinstance(value, (str, int)) or (isinstance(value, float) and math.isfinite(value))
    return False


def _a(value_type: str) -> str:
    return {INTEGER: "an integer", ANY: "a string, number or boolean"}.get(value_type, f"a {value_type}")
