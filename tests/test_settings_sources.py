"""Each default is defined once (fastai_serving.defaults, and the batch client's fastai_serving_client.defaults):
config.properties and the README's tables must agree with them."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from fastai_serving import defaults
from fastai_serving_client import cli as predict_batch
from fastai_serving_scripts import PROJECT_ROOT, make_archive, serve
from fastai_serving_shim.settings import Settings, env_name

README = (PROJECT_ROOT / "README.md").read_text()


def torchserve_config(path: Path = PROJECT_ROOT / "config.properties") -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def readme_table(first_header: str) -> dict[str, str]:
    """The rows of every table whose first column is headed `first_header`, in the README and the pages
    under docs/ (a topic's page may carry its own settings): first cell (unquoted) -> second cell."""
    rows = {}
    for page in [README, *(path.read_text() for path in sorted((PROJECT_ROOT / "docs").glob("*.md")))]:
        lines = page.splitlines()
        for start in (i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")):
            for line in lines[start + 2 :]:
                if not line.startswith("|"):
                    break
                cells = [cell.strip() for cell in line.strip("|").split("|")]
                for key in re.findall(r"`([^`]+)`", cells[0]) or [cells[0]]:
                    rows[key] = cells[1]
    assert rows, f"no table headed {first_header!r} in the README or docs/"
    return rows


def quoted(cell: str) -> str | None:
    """The first `quoted` value of a cell, or None where the cell describes the default in words."""
    match = re.search(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def assert_same_default(where: str, cell: str, default) -> None:
    value = quoted(cell)
    if default is None or default == "":
        assert value is None, f"{where}: the README gives {cell!r}, the code has no default"
    elif isinstance(default, bool):
        word = value if value is not None else cell.strip()
        assert word == ("on" if default else "off"), f"{where}: README {cell!r}, code {default}"
    elif isinstance(default, (int, float)):
        assert value is not None and float(value) == float(default), f"{where}: README {cell!r}, code {default}"
    else:
        assert value == str(default), f"{where}: README {cell!r}, code {default!r}"


def documented_flag(action) -> bool:
    """A flag of the tool's own (not argparse's -h)."""
    return bool(action.option_strings) and action.option_strings[0] != "-h"


def test_config_properties_binds_the_default_ports_on_loopback():
    config = torchserve_config()
    loopback = f"http://{defaults.LOOPBACK}"
    assert config["inference_address"] == f"{loopback}:{defaults.INFERENCE_PORT}"
    assert config["management_address"] == f"{loopback}:{defaults.MANAGEMENT_PORT}"
    assert config["metrics_address"] == f"{loopback}:{defaults.METRICS_PORT}"
    assert (config["grpc_inference_address"], config["grpc_management_address"]) == (
        defaults.LOOPBACK,
        defaults.LOOPBACK,
    )
    assert (int(config["grpc_inference_port"]), int(config["grpc_management_port"])) == defaults.TORCHSERVE_GRPC_PORTS


def test_config_properties_limits_and_timeouts_are_the_defaults():
    config = torchserve_config()
    assert int(config["max_request_size"]) == int(config["max_response_size"]) == defaults.MAX_BODY_BYTES
    assert int(config["default_response_timeout"]) == defaults.RESPONSE_TIMEOUT_S
    assert int(config["default_workers_per_model"]) == defaults.MIN_WORKERS


def test_readme_shim_settings_table_is_the_settings_class():
    table = readme_table("variable")
    names = {env_name(field.name): field.default for field in fields(Settings)}
    assert set(table) == set(names)
    for name, default in names.items():
        assert_same_default(name, table[name], default)


def test_readme_make_archive_table_is_make_archives_flags():
    table = readme_table("make-archive flag")
    args = make_archive.parse_args(["--name", "x", "--learner", "export.pkl"])
    for flag, cell in table.items():
        if flag in ("--name", "--learner"):
            assert "required" in cell
        elif flag in ("--channels-last", "--no-channels-last"):
            assert_same_default(flag, cell, args.channels_last)
        elif flag in ("--store",):
            assert quoted(cell) == "model_store/"
        else:
            assert_same_default(flag, cell, getattr(args, flag[2:].replace("-", "_")))
    documented = {flag for flag in table} - {"--no-channels-last"}
    flags = {action.option_strings[0] for action in make_archive.build_parser()._actions if documented_flag(action)}
    assert documented == flags


def test_readme_serve_table_is_serves_flags():
    table = readme_table("serve flag")
    parser = serve.build_parser(Settings())
    for action in parser._actions:
        if not documented_flag(action):
            continue
        flag = action.option_strings[0]
        assert flag in table, f"scripts/serve {flag} is not in the README's table"
        default = action.default
        if isinstance(default, Path):
            assert quoted(table[flag]) == f"{default.name}/" or quoted(table[flag]) == default.name, flag
        elif isinstance(default, tuple):
            assert quoted(table[flag]) == " ".join(map(str, default)), flag
        else:
            assert_same_default(flag, table[flag], default)


@pytest.mark.parametrize("value", [defaults.MAX_INSTANCES, defaults.MAX_BODY_BYTES // defaults.MIB])
def test_readme_states_the_limits(value):
    assert str(value) in README


def test_readme_predict_batch_table_is_its_flags():
    table = readme_table("predict-batch flag")
    parser = predict_batch.build_parser()
    flags = {action.option_strings[0]: action for action in parser._actions if documented_flag(action)}
    assert set(table) == set(flags)
    for flag, action in flags.items():
        if action.required:
            assert "required" in table[flag], flag
        else:
            assert_same_default(flag, table[flag], action.default)
