"""Settings: one converter for environment variables and the archive's YAML, and defaults that agree everywhere."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest

from fastai_serving import defaults
from fastai_serving.config import settings_from
from fastai_serving.engine.learner import load_learner
from fastai_serving.engine.settings import HandlerSettings


@dataclass(frozen=True)
class Example:
    flag: bool = False
    count: int = 1
    seconds: float = 1.0
    name: str = "x"


@pytest.mark.parametrize(
    "text, value", [("1", True), ("true", True), ("On", True), ("0", False), ("no", False), (True, True)]
)
def test_booleans_are_read_from_words_and_yaml(text, value):
    assert settings_from(Example, {"flag": text}).flag is value


def test_numbers_and_text_are_converted_by_the_fields_type():
    assert settings_from(Example, {"count": "3", "seconds": "0.5", "name": 7}) == Example(
        count=3, seconds=0.5, name="7"
    )


def test_missing_empty_and_null_values_keep_their_defaults_and_unknown_keys_are_ignored():
    assert settings_from(Example, {"count": "", "seconds": None, "unknown": 1}) == Example()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"flag": "maybe"}, "FLAG='maybe' is not a boolean"),
        ({"count": "many"}, "COUNT='many' is not a valid int"),
        ({"count": 1.5}, "COUNT=1.5 is not a whole number"),
        ({"count": True}, "COUNT=True is not a number"),
    ],
)
def test_a_value_that_does_not_fit_is_refused_naming_its_source(values, message):
    with pytest.raises(ValueError, match=message):
        settings_from(Example, values, str.upper)


def test_handler_settings_come_from_the_model_configs_handler_section():
    config = {"batchSize": 4, "handler": {"max_batch": 8, "channels_last": False, "precision": "bf16", "unknown": 1}}
    settings = HandlerSettings.from_model_config(config)
    assert (settings.max_batch, settings.channels_last, settings.precision) == (8, False, "bf16")
    assert HandlerSettings.from_model_config(None) == HandlerSettings()


def test_archives_made_before_booleans_still_read_channels_last_from_0_and_1():
    assert HandlerSettings.from_model_config({"handler": {"channels_last": 0}}).channels_last is False
    assert HandlerSettings.from_model_config({"handler": {"channels_last": 1}}).channels_last is True


def test_a_bad_value_in_an_archive_names_its_key():
    with pytest.raises(ValueError, match="handler.max_batch in the archive's model config"):
        HandlerSettings.from_model_config({"handler": {"max_batch": "lots"}})


def test_load_learner_defaults_equal_the_archives():
    parameters = inspect.signature(load_learner).parameters
    assert parameters["channels_last"].default == HandlerSettings().channels_last == defaults.CHANNELS_LAST
    assert parameters["precision"].default == HandlerSettings().precision == defaults.PRECISION
