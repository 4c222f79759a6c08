"""Each default is defined once (fastai_serving.defaults, and the batch client's fastai_serving_client.defaults):
config.properties and the tables of the docs pages and the README must agree with them."""

from __future__ import annotations

import argparse
import ast
import re
import runpy
from dataclasses import fields
from pathlib import Path

import pytest
import setuptools
import tomllib

from fastai_serving import defaults
from fastai_serving_client import cli as predict_batch
from fastai_serving_scripts import make_archive, reload, serve
from fastai_serving_shim.settings import Settings, env_name
from harness import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
DOCS = PROJECT_ROOT / "docs"
SETTINGS_PAGE = (PROJECT_ROOT / "docs" / "settings.md").read_text()  # make-archive's and serve's flags, the variables
BATCH_PAGE = (PROJECT_ROOT / "docs" / "batch.md").read_text()  # predict-batch's flags
PIPELINE_PAGE = (PROJECT_ROOT / "docs" / "pipeline.md").read_text()  # the fast paths' own make-archive flags


def torchserve_config(path: Path = PROJECT_ROOT / "config.properties") -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def readme_table(first_header: str, page: str | None = None) -> dict[str, str]:
    """The rows of every table whose first column is headed `first_header`, in `page`, or else in the README and
    every page under docs/ (a topic's page may carry its own settings): first cell (unquoted) -> second cell."""
    rows = {}
    pages = [page] if page is not None else [README, *(path.read_text() for path in sorted(DOCS.glob("*.md")))]
    for text in pages:
        lines = text.splitlines()
        for start in (i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")):
            for line in lines[start + 2 :]:
                if not line.startswith("|"):
                    break
                cells = [cell.strip() for cell in line.strip("|").split("|")]
                for key in re.findall(r"`([^`]+)`", cells[0]) or [cells[0]]:
                    rows[key] = cells[1]
    assert rows, f"no table headed {first_header!r}" + ("" if page is not None else " in the README or docs/")
    return rows


def quoted(cell: str) -> str | None:
    """The first `quoted` value of a cell, or None where the cell describes the default in words."""
    match = re.search(r"`([^`]*)`", cell)
    return match.group(1) if match else None


def assert_same_default(where: str, cell: str, default) -> None:
    value = quoted(cell)
    if default is None or default == "":
        assert value is None, f"{where}: the page gives {cell!r}, the code has no default"
    elif isinstance(default, bool):
        word = value if value is not None else cell.strip()
        assert word == ("on" if default else "off"), f"{where}: the page {cell!r}, code {default}"
    elif isinstance(default, (int, float)):
        assert value is not None and float(value) == float(default), f"{where}: the page {cell!r}, code {default}"
    else:
        assert value == str(default), f"{where}: the page {cell!r}, code {default!r}"


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


def test_the_settings_pages_variables_table_is_the_settings_class():
    table = readme_table("variable")
    names = {env_name(field.name): field.default for field in fields(Settings)}
    assert set(table) == set(names)
    for name, default in names.items():
        assert_same_default(name, table[name], default)


def test_the_settings_pages_make_archive_table_is_make_archives_flags():
    table = readme_table("make-archive flag") | readme_table("make-archive flag", PIPELINE_PAGE)
    args = make_archive.parse_args(["--name", "x", "--learner", "export.pkl"])
    negated = {"--no-channels-last", "--no-fast-images", "--no-fast-rows"}
    for flag, cell in table.items():
        if flag in ("--name", "--learner"):
            assert "required" in cell
        elif flag in negated:
            assert_same_default(flag, cell, getattr(args, flag[5:].replace("-", "_")))
        elif flag in ("--channels-last",):
            assert_same_default(flag, cell, args.channels_last)
        elif flag in ("--store",):
            assert quoted(cell) == "model_store/"
        else:
            assert_same_default(flag, cell, getattr(args, flag[2:].replace("-", "_")))
    documented = {flag for flag in table} - negated
    flags = {action.option_strings[0] for action in make_archive.build_parser()._actions if documented_flag(action)}
    assert documented == flags


def test_the_settings_pages_serve_table_is_serves_flags():
    table = readme_table("serve flag")
    parser = serve.build_parser(Settings())
    for action in parser._actions:
        if not documented_flag(action):
            continue
        flag = action.option_strings[0]
        assert flag in table, f"scripts/serve {flag} is not in docs/settings.md's table"
        default = action.default
        if isinstance(default, Path):
            assert quoted(table[flag]) == f"{default.name}/" or quoted(table[flag]) == default.name, flag
        elif isinstance(default, tuple):
            assert quoted(table[flag]) == " ".join(map(str, default)), flag
        else:
            assert_same_default(flag, table[flag], default)


# The limits tables' rows (README and docs/reliability.md), and each one's default in the unit its table gives.
LIMITS = {
    "request and response body": defaults.MAX_BODY_BYTES // defaults.MIB,  # MiB
    "instances per request": defaults.MAX_INSTANCES,
    "pixels per decoded image": defaults.MAX_IMAGE_PIXELS // defaults.MIB,  # megapixels (2**20 pixels)
    "characters per text": defaults.MAX_TEXT_CHARS,
}


@pytest.mark.parametrize("page", ["README.md", "docs/reliability.md"])
def test_the_limits_tables_state_each_limits_default(page):
    table = readme_table("limit", (PROJECT_ROOT / page).read_text())
    assert set(table) == set(LIMITS)
    for limit, default in LIMITS.items():
        assert_same_default(f"{page}: {limit}", table[limit], default)


def test_the_batch_pages_predict_batch_table_is_its_flags():
    table = readme_table("predict-batch flag", BATCH_PAGE)
    parser = predict_batch.build_parser()
    flags = {action.option_strings[0]: action for action in parser._actions if documented_flag(action)}
    assert set(table) == set(flags)
    for flag, action in flags.items():
        if action.required:
            assert "required" in table[flag], flag
        else:
            assert_same_default(flag, table[flag], action.default)


def help_flags(parser) -> set[str]:
    """Every flag a command's --help lists (both spellings of an on/off flag), but -h/--help."""
    listed = parser.format_help()
    flags = {flag for action in parser._actions for flag in action.option_strings if flag not in ("-h", "--help")}
    assert all(flag in listed for flag in flags)
    return flags


COMMANDS = {  # each command's parser, and the docs table (page, first column's header) that lists its flags
    "make-archive": (make_archive.build_parser, SETTINGS_PAGE, "make-archive flag"),
    "serve": (lambda: serve.build_parser(Settings()), SETTINGS_PAGE, "serve flag"),
    "reload": (reload.build_parser, SETTINGS_PAGE, "reload flag"),
    "predict-batch": (predict_batch.build_parser, BATCH_PAGE, "predict-batch flag"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_of_each_commands_help_is_in_its_docs_table_and_nothing_else(command):
    build, page, header = COMMANDS[command]
    assert set(readme_table(header, page)) == help_flags(build())


def test_the_settings_pages_reload_table_states_each_default():
    table = readme_table("reload flag", SETTINGS_PAGE)
    for action in reload.build_parser()._actions:
        if documented_flag(action):
            flag = action.option_strings[0]
            if action.required:
                assert "required" in table[flag], flag
            else:
                assert_same_default(flag, table[flag], action.default)


def test_predict_batch_help_shows_every_default():
    parser = predict_batch.build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in formatter._expand_help(action), action.option_strings[0]


# Keywords and option names whose numbers are defaults: a timeout, a wait, a count of threads or workers.
DEFAULT_NAMES = re.compile(r"(timeout|timeout_s|_s|_ms|max_workers|threads|workers)$")


def literal_defaults(path: Path, root: Path = PROJECT_ROOT) -> list[str]:
    """Numbers written where a default belongs (`timeout=30`, `max_workers=4`, `("grpc...._ms", 250)`, and a
    signature's `timeout_s: float = 60`, which copies a setting instead of reading it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        pairs = []
        if isinstance(node, ast.Call):
            pairs = [(keyword.arg or "", keyword.value) for keyword in node.keywords]
        elif isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Constant):
            pairs = [(str(node.elts[0].value), node.elts[1])]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args
            pairs = list(
                zip(
                    [a.arg for a in arguments[len(arguments) - len(node.args.defaults) :]],
                    node.args.defaults,
                    strict=True,
                )
            )
            pairs += [
                (a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True) if d is not None
            ]
        for name, value in pairs:
            number = isinstance(value, ast.Constant) and type(value.value) in (int, float) and value.value not in (0, 1)
            if number and DEFAULT_NAMES.search(name):
                found.append(f"{path.relative_to(root)}:{value.lineno}: {name}={value.value}")
    return found


@pytest.mark.parametrize("folder", ["handler", "shim", "scripts", "client/fastai_serving_client"])
def test_the_code_reads_every_default_from_its_defaults_module(folder):
    modules = [path for path in (PROJECT_ROOT / folder).rglob("*.py") if path.name != "defaults.py"]
    assert modules and [line for path in modules for line in literal_defaults(path)] == []


def test_the_default_finder_sees_a_literal_timeout(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        'get(url, timeout=30)\nchannel(options=[("grpc.max_reconnect_backoff_ms", 2000)])\n'
        "def unregister(model, timeout_s: float = 120): ...\n"
    )
    assert len(literal_defaults(module, tmp_path)) == 3


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;@]", line.strip(), maxsplit=1)[0].lower() for line in requirements if line.strip()}


def test_grpcio_and_protobuf_are_pinned_once_in_the_clients_grpc_extra(monkeypatch):
    client = tomllib.loads((PROJECT_ROOT / "client" / "pyproject.toml").read_text())
    assert {"grpcio", "protobuf"} <= requirement_names(client["project"]["optional-dependencies"]["grpc"])
    runtime = [line.split("#")[0] for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()]
    assert not {"grpcio", "protobuf"} & requirement_names(runtime)
    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **arguments: captured.update(arguments))
    runpy.run_path(str(PROJECT_ROOT / "setup.py"))
    server = captured["install_requires"]
    assert any(line.startswith("fastai-serving-client[grpc]") for line in server)
    assert not {"grpcio", "protobuf"} & requirement_names(server)
