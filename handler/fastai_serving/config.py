"""Settings dataclasses filled from text or YAML values, converted by each field's real type.

One converter for every source: environment variables (all text), the archive's YAML model
config (numbers and booleans already typed), and command-line flags. A value that does not
fit its field is refused with the name of the setting it came from.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

Settings = TypeVar("Settings")

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def settings_from(
    cls: type[Settings], values: Mapping[str, Any] | None, source_name: Callable[[str], str] = str
) -> Settings:
    """`cls` with each field found in `values` converted to the field's type; missing, empty or null ones keep their defaults.

    `source_name(field)` names where a value came from (an environment variable, a YAML key) in errors.
    """
    values = values or {}
    types = typing.get_type_hints(cls)
    chosen = {}
    for field in dataclasses.fields(cls):
        raw = values.get(field.name)
        if raw is None or raw == "":
            continue
        chosen[field.name] = convert(raw, types[field.name], source_name(field.name))
    return cls(**chosen)


def convert(raw: Any, kind: type, name: str) -> Any:
    """`raw` (text, or a YAML scalar) as `kind`: bool, int, float or str."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError(f"{name}={raw!r} is not a boolean: use one of {', '.join(TRUE_WORDS + FALSE_WORDS)}")
    if kind in (int, float):
        if isinstance(raw, bool):
            raise ValueError(f"{name}={raw!r} is not a number")
        if kind is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(f"{name}={raw!r} is not a whole number")
        try:
            return kind(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if kind is str:
        return str(raw)
    raise TypeError(f"{name}: settings of type {kind} are not supported")
