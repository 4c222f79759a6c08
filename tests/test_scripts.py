"""The command-line tools' own logic, in-process: serve's wiring, reload's model store, make-archive's checks, soak's rounds."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path

import psutil
import pytest

from fastai_serving import defaults
from fastai_serving_scripts import archives, make_archive, reload, serve
from harness.load import rounds
from harness.servers import ROOT
from harness.waiting import wait_for


def serve_args(*flags: str, log_dir: Path) -> object:
    return serve.parse_args(["--log-dir", str(log_dir), *flags])


# --- serve ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, reachable_at",
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("10.1.2.3", "10.1.2.3"), ("::", "[::1]"), ("::1", "[::1]")],
)
def test_the_shim_reaches_torchserve_where_host_binds_it(tmp_path, host, reachable_at):
    args = serve_args("--host", host, "--inference-port", "9080", log_dir=tmp_path)
    environment = serve.shim_environment(args, "digits", ["digits"], tmp_path)
    assert environment["FASTAI_SERVING_UPSTREAM"] == f"http://{reachable_at}:9080"
    assert environment["FASTAI_SERVING_MANAGEMENT"] == f"http://{defaults.LOOPBACK}:{defaults.MANAGEMENT_PORT}"


def test_the_grpc_front_gets_the_shims_settings_and_its_own_port(tmp_path):
    environment = serve.shim_environment(
        serve_args("--grpc-port", "9500", "--shim-host", "10.1.2.3", log_dir=tmp_path), "digits", ["digits"], tmp_path
    )
    assert environment["FASTAI_SERVING_GRPC_PORT"] == "9500" and environment["FASTAI_SERVING_HOST"] == "10.1.2.3"
    assert environment["FASTAI_SERVING_DEFAULT_MODEL"] == "digits"


def test_the_grpc_front_is_on_by_default_on_tf_servings_port(tmp_path):
    args = serve_args(log_dir=tmp_path)
    assert args.grpc_port == defaults.GRPC_PORT == 8500 and args.no_grpc is False


def test_serve_announces_that_by_default_both_fronts_bind_every_address_on_their_ports(tmp_path, capsys):
    serve._announce(serve_args(log_dir=tmp_path), "digits", "digits")
    line = capsys.readouterr().out.strip()
    assert line == (
        f"serve: digits ready at http://127.0.0.1:{defaults.INFERENCE_PORT}/predictions/digits; "
        f"REST on 0.0.0.0:{defaults.SHIM_PORT} (every address): /v1/models/digits:predict, /analyze:predict; "
        f"gRPC on 0.0.0.0:{defaults.GRPC_PORT} (every address)"
    )


@pytest.mark.parametrize(
    "shim_host, bound", [("127.0.0.1", "127.0.0.1"), ("10.1.2.3", "10.1.2.3"), ("::", "[::]"), ("::1", "[::1]")]
)
def test_serve_announces_the_address_and_port_each_front_binds(tmp_path, capsys, shim_host, bound):
    args = serve_args("--shim-host", shim_host, "--port", "9501", "--grpc-port", "9500", log_dir=tmp_path)
    serve._announce(args, "buildings", "digits")
    line = capsys.readouterr().out.strip()
    everywhere = " (every address)" if shim_host == "::" else ""
    assert f"; REST on {bound}:9501{everywhere}: /v1/models/buildings:predict; " in line
    assert line.endswith(f"; gRPC on {bound}:9500{everywhere}")


def test_readiness_is_told_every_archive_in_the_store_and_the_users_own_list_passes_unchanged(tmp_path, monkeypatch):
    args = serve_args(log_dir=tmp_path)
    monkeypatch.delenv("FASTAI_SERVING_READY_MODELS", raising=False)
    environment = serve.shim_environment(args, "", ["digits", "buildings"], tmp_path)
    assert environment["FASTAI_SERVING_STORE_MODELS"] == "digits,buildings"
    assert "FASTAI_SERVING_READY_MODELS" not in environment
    monkeypatch.setenv("FASTAI_SERVING_READY_MODELS", "buildings")
    assert (
        serve.shim_environment(args, "", ["digits", "buildings"], tmp_path)["FASTAI_SERVING_READY_MODELS"]
        == "buildings"
    )


def test_build_demo_keeps_a_store_that_serves_any_version_of_the_demo(tmp_path):
    """After a reload the store holds digits-v2.0.mar, not digits.mar: no rebuilt 1.0 beside it (make serve)."""
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "digits-v2.0.mar", "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "digits", "modelVersion": "2.0"}}))
    done = subprocess.run(
        [str(ROOT / "scripts" / "build-demo"), str(store)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert f"{store} already serves digits" in done.stdout
    assert sorted(path.name for path in store.iterdir()) == ["digits-v2.0.mar"]


def test_the_store_serves_a_model_by_its_archives_manifest_not_its_file_name(tmp_path):
    with zipfile.ZipFile(tmp_path / "renamed.mar", "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "digits", "modelVersion": "1.0"}}))
    assert archives.main(["digits", str(tmp_path)]) == 0
    assert archives.main(["buildings", str(tmp_path)]) == 1


def test_every_front_counts_into_one_metrics_folder(tmp_path):
    environment = serve.shim_environment(serve_args(log_dir=tmp_path), "digits", ["digits"], tmp_path / "metrics")
    assert environment["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "metrics")


def test_torchserves_pid_file_stays_where_torchserve_stop_looks_for_it(tmp_path):
    environment = serve.torchserve_environment(serve_args(log_dir=tmp_path))
    assert environment["TMPDIR"] == tempfile.gettempdir()
    assert environment["TEMP"] == str(tmp_path / "run")  # the workers' sockets: a folder per server


def test_a_run_folder_of_its_own_keeps_a_servers_pid_file_apart(tmp_path):
    environment = serve.torchserve_environment(serve_args("--run-dir", str(tmp_path / "mine"), log_dir=tmp_path))
    assert environment["TMPDIR"] == str(tmp_path / "mine")


def test_torchserve_is_bound_to_loopback_but_for_its_inference_api_if_asked(tmp_path):
    environment = serve.torchserve_environment(serve_args("--host", "0.0.0.0", log_dir=tmp_path))
    assert environment["TS_INFERENCE_ADDRESS"] == f"http://0.0.0.0:{defaults.INFERENCE_PORT}"
    assert environment["TS_MANAGEMENT_ADDRESS"] == f"http://127.0.0.1:{defaults.MANAGEMENT_PORT}"
    assert environment["TS_METRICS_ADDRESS"] == f"http://127.0.0.1:{defaults.METRICS_PORT}"


def test_when_torchserve_ends_under_serve_it_says_it_was_stopped_from_outside():
    assert "torchserve --stop" in serve.why_it_ended("TorchServe", None)


def test_a_process_group_whose_processes_all_ended_is_stopped_though_nobody_reaped_them_yet():
    # TorchServe's Java, orphaned when its launcher ends first, is a zombie until init reaps it; serve's stop
    # does not wait for that (kill(2) still reaches a zombie, so the group looks alive to it).
    ended = subprocess.Popen(["true"], start_new_session=True)  # a group of one; not reaped until poll() below
    wait_for(lambda: psutil.Process(ended.pid).status() == psutil.STATUS_ZOMBIE, "the process to end")
    os.killpg(ended.pid, 0)  # the zombie is still signalled: the group looks alive to kill(2)
    assert not serve.group_running(ended.pid)
    ended.poll()
    running = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert serve.group_running(running.pid)
    finally:
        running.kill()
        running.wait()
    assert not serve.group_running(running.pid)


def test_serve_records_the_store_it_serves_for_reload(tmp_path):
    args = serve_args("--management-port", "18081", "--model-store", str(tmp_path), log_dir=tmp_path)
    state = serve.write_state(args)
    try:
        assert reload.served_model_store("http://127.0.0.1:18081") == tmp_path
    finally:
        state.unlink()
    assert reload.served_model_store("http://127.0.0.1:18081") is None


# --- reload ------------------------------------------------------------------------------------------


def test_reload_without_a_model_store_and_no_serve_says_what_to_pass():
    with pytest.raises(reload.ReloadError, match="pass --model-store, the folder it was started with"):
        reload.model_store_for(None, "http://127.0.0.1:1")


def test_reload_refuses_a_store_other_than_the_one_served(tmp_path):
    served, other = tmp_path / "served", tmp_path / "other"
    served.mkdir()
    other.mkdir()
    path = serve.state_file(18082)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "model_store": str(served)}))
    try:
        with pytest.raises(reload.ReloadError, match=f"serves the model store {served}, not {other}"):
            reload.model_store_for(other, "http://127.0.0.1:18082")
        assert reload.model_store_for(None, "http://127.0.0.1:18082") == served
    finally:
        path.unlink()


def test_a_state_left_by_a_serve_that_is_gone_is_ignored(tmp_path):
    path = serve.state_file(18083)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": 2**22 + 7, "model_store": str(tmp_path)}))
    try:
        assert reload.served_model_store("http://127.0.0.1:18083") is None
    finally:
        path.unlink()


# --- make-archive ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--name", "../escape"], "--name '../escape': use letters"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--min-workers", "2", "--max-workers", "1"], "--max-workers must be at least --min-workers"),
        (["--utils", "/no/such/folder"], "--utils /no/such/folder: no such folder"),
    ],
)
def test_make_archive_refuses_what_would_make_a_broken_archive(tmp_path, flags, message):
    learner = tmp_path / "export.pkl"
    learner.write_bytes(b"x")
    args = make_archive.parse_args(["--name", "ok", "--learner", str(learner), "--store", str(tmp_path), *flags])
    with pytest.raises(SystemExit, match=message.replace("(", r"\(")):
        make_archive.check_args(args)


def test_the_archives_model_config_holds_batching_and_the_handlers_settings(tmp_path):
    args = make_archive.parse_args(
        ["--name", "m", "--learner", "x.pkl", "--no-channels-last", "--max-batch", "8", "--max-text-chars", "500"]
    )
    config = make_archive.model_config(args, "text")
    assert (config["batchSize"], config["maxBatchDelay"]) == (defaults.BATCH_SIZE, defaults.MAX_BATCH_DELAY_MS)
    assert config["handler"]["channels_last"] is False and config["handler"]["max_batch"] == 8
    assert config["handler"]["kind"] == "text" and config["handler"]["max_text_chars"] == 500
    assert config["handler"]["max_row_batch"] == defaults.MAX_ROW_BATCH


# --- soak ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, expected", [(1, [1]), (0.5, [0.5]), (60, [60]), (150, [60, 60, 30])])
def test_a_soak_of_any_positive_length_runs_in_rounds_of_at_most_a_minute(seconds, expected):
    assert rounds(seconds) == expected


@pytest.mark.parametrize("seconds", [0, -5])
def test_a_soak_of_no_time_is_refused(seconds):
    with pytest.raises(ValueError, match="give a positive duration"):
        rounds(seconds)


# --- fastai-serving (the one command) ------------------------------------------------------------------


@pytest.mark.parametrize("command", ["make-archive", "serve", "reload"])
def test_each_subcommands_help_names_it_as_the_user_typed_it(capsys, command):
    from fastai_serving_scripts import cli

    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fastai-serving {command} ")


def test_an_unknown_subcommand_is_refused_with_the_list_of_commands(capsys):
    from fastai_serving_scripts import cli

    assert cli.main(["serv"]) == 2
    error = capsys.readouterr().err
    assert "unknown command 'serv'" in error and "make-archive" in error and "reload" in error


# --- the benchmarks, as make runs them ----------------------------------------------------------------


@pytest.mark.parametrize("benchmark", ["bench", "slow_clients", "overload"])
def test_each_benchmark_starts_as_make_runs_it_from_the_checkout(benchmark):
    """`python -m benchmarks.<name>` from the checkout's root: every import it needs resolves (no server runs)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    ran = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{benchmark}", "--help"], cwd=root, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("usage:")
    makefile = (root / "Makefile").read_text()
    assert f"-m benchmarks.{benchmark}" in makefile and "benchmarks/" not in makefile
