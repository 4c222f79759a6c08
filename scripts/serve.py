"""Serve every archive in a model store: TorchServe, and the TF-Serving shim in front of it.

Starts TorchServe (config.properties, log4j2.xml), the REST front (gunicorn, port 8501) and the gRPC
front (port 8500), prints each model once it has a ready worker, and exits non-zero as soon as one
stops on its own (TorchServe's own `torchserve --stop` included). A port already taken is refused
before anything starts, naming what holds it. SIGTERM (what `docker stop` and Kubernetes send)
drains: readiness fails at once while requests are still served for --drain-s seconds, then the
fronts stop new handshakes, answer what they accepted, and stop, then TorchServe stops: a client
gets an answer or a refused connection, never a reset. Ctrl-C stops the same way without the
drain. Every child ends with serve however serve ends, SIGKILL included: the kernel sends each front
SIGTERM when serve dies (Linux's parent-death signal), and TorchServe runs under a guard
(fastai_serving_scripts.guard) that ends its whole process group, Java frontend and workers with it.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from fastai_serving import defaults
from fastai_serving.contract.errors import ServingError
from fastai_serving_scripts import LOG_CONFIG, LOG_DIR, MODEL_STORE, TORCHSERVE_CONFIG, guard, rest_proxy, security
from fastai_serving_scripts.archives import archive_model_names
from fastai_serving_shim import listener
from fastai_serving_shim.addresses import host_port, http_url
from fastai_serving_shim.settings import Settings, env_name
from fastai_serving_shim.torchserve import Management

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ACCESS_FILES = ("api_keys_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file")  # the shim's settings
GUNICORNS = ("shim", "shim's GET pool")  # the fronts run by gunicorn, by their names in `processes`
READ_AGAIN = signal.SIGHUP  # the fronts read their key and certificate files again (docs/security.md)
SHIM_APP = ["-c", "python:fastai_serving_shim.rest.gunicorn_conf", "fastai_serving_shim.rest.wsgi:app"]
GRPC_APP = ["-m", "fastai_serving_shim.grpc.server"]
GUARD = ["-m", "fastai_serving_scripts.guard"]
LISTEN_BACKLOG = 2048  # connections the kernel queues for the REST front before its workers accept them
STATE_FOLDER = "fastai-serving"  # in the temp folder: what each running serve serves, for scripts/reload


def build_parser(shim: Settings, prog: str = "serve") -> argparse.ArgumentParser:
    """serve's flags; the shim's settings (FASTAI_SERVING_* variables) give the defaults of the shim's flags."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model-store", type=Path, default=MODEL_STORE, help="folder of .mar archives (default: model_store/)")
    add("--config", type=Path, default=TORCHSERVE_CONFIG, help="TorchServe config (default: config.properties)")
    add("--port", type=int, default=shim.port, help=f"the shim's port (default: {defaults.SHIM_PORT})")
    add("--shim-host", default=shim.host, help=f"the shim's address (default: {defaults.SHIM_HOST})")
    add(
        "--default-model",
        default=shim.default_model,
        help="model behind /analyze (default: the only archive in the store)",
    )
    add("--no-shim", action="store_true", help="serve TorchServe alone (no REST shim, no gRPC front)")
    add(
        "--grpc-port",
        type=int,
        default=shim.grpc_port,
        help=f"the gRPC front's port, on the shim's address (default: {defaults.GRPC_PORT}); "
        "--grpc-ports are TorchServe's own",
    )
    add("--no-grpc", action="store_true", help="serve without the gRPC front")
    add(
        "--no-proxy",
        action="store_true",
        help="the REST front straight from gunicorn, without nginx in front: slow clients can then hold its threads",
    )
    add(
        "--host",
        default=defaults.LOOPBACK,
        help=f"address of TorchServe's inference API (default: {defaults.LOOPBACK})",
    )
    add(
        "--inference-port",
        type=int,
        default=defaults.INFERENCE_PORT,
        help=f"TorchServe inference API (default: {defaults.INFERENCE_PORT})",
    )
    add(
        "--management-port",
        type=int,
        default=defaults.MANAGEMENT_PORT,
        help=f"TorchServe management API, always on {defaults.LOOPBACK} (default: {defaults.MANAGEMENT_PORT})",
    )
    add(
        "--metrics-port",
        type=int,
        default=defaults.METRICS_PORT,
        help=f"TorchServe metrics API, on {defaults.LOOPBACK} (default: {defaults.METRICS_PORT})",
    )
    add(
        "--grpc-ports",
        type=int,
        nargs=2,
        default=defaults.TORCHSERVE_GRPC_PORTS,
        metavar=("INFERENCE", "MANAGEMENT"),
        help="TorchServe's own gRPC APIs, unused here but always started, on 127.0.0.1 (default: %(default)s)",
    )
    add("--log-dir", type=Path, default=LOG_DIR, help="TorchServe's log files (default: logs/)")
    add(
        "--drain-s",
        type=float,
        default=shim.drain_s,
        help=f"after SIGTERM, seconds requests are still served while /ready fails (default: {defaults.DRAIN_S})",
    )
    add(
        "--run-dir",
        type=Path,
        default=None,
        help="where TorchServe keeps its pid file (default: the system temp folder, where `torchserve --stop` "
        "looks); give each server its own to run several side by side",
    )
    return parser


def parse_args(argv: list[str] | None = None, prog: str = "serve") -> argparse.Namespace:
    return build_parser(Settings.from_env(), prog).parse_args(argv)


def ports(args: argparse.Namespace) -> list[tuple[str, int, str]]:
    """Every (host, port, what) this serve will listen on."""
    wanted = [
        (args.host, args.inference_port, "TorchServe's inference API"),
        (defaults.LOOPBACK, args.management_port, "TorchServe's management API"),
        (defaults.LOOPBACK, args.metrics_port, "TorchServe's metrics API"),
        (defaults.LOOPBACK, args.grpc_ports[0], "TorchServe's gRPC inference API"),
        (defaults.LOOPBACK, args.grpc_ports[1], "TorchServe's gRPC management API"),
    ]
    if not args.no_shim:
        wanted.append((args.shim_host, args.port, "the REST front"))
        if not args.no_grpc:
            wanted.append((args.shim_host, args.grpc_port, "the gRPC front"))
    return wanted


def taken_port(host: str, port: int) -> bool:
    """Whether something listens on host:port already (a port merely in TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def holder_of(port: int) -> str:
    """Which process listens on `port`, as far as this user may see."""
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
                if connection.pid is None:
                    return "a process of another user"
                process = psutil.Process(connection.pid)
                return f"pid {connection.pid} ({' '.join(process.cmdline())[:120] or process.name()})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def refuse_taken_ports(args: argparse.Namespace) -> str | None:
    """A message naming each port already taken and what holds it, or None when every port is free."""
    taken = [(port, what) for host, port, what in ports(args) if taken_port(host, port)]
    if not taken:
        return None
    lines = [f"port {port} ({what}) is taken by {holder_of(port)}" for port, what in taken]
    return "; ".join(lines) + ": stop it (an earlier serve?) or choose other ports (serve --help)"


def rest_listener(args: argparse.Namespace) -> socket.socket:
    """The REST front's listening socket: serve holds it too, so it can stop new handshakes before the front stops."""
    host = args.shim_host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, args.port))
    sock.listen(LISTEN_BACKLOG)
    # Non-blocking, for every process it is handed to (the flag belongs to the socket, not to this copy of
    # it): nginx takes an inherited socket as it is, and its workers all wake for each new connection. On a
    # blocking socket, each worker that lost the race to another would sleep in accept() until the next
    # connection came, its own half-done requests waiting with it, for minutes when no client came.
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def guarded(command: list[str], environment: dict[str, str]) -> subprocess.Popen:
    """`command` in a process group of its own, under a guard that ends the whole group if serve dies
    (fastai_serving_scripts.guard): for TorchServe, whose launcher would leave its Java frontend and workers behind."""
    return subprocess.Popen(
        [sys.executable, *GUARD, str(os.getpid()), *command], env=environment, start_new_session=True
    )


def ending_with_serve(
    command: list[str], environment: dict[str, str], pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen:
    """`command` in a process group of its own, sent SIGTERM by the kernel if serve dies (SIGKILL and the OOM killer
    too): a front, which stops its own workers on SIGTERM, so it needs no guard process of its own."""
    serve = os.getpid()

    def end_with_serve() -> None:  # in the child, before it runs COMMAND
        if not guard.on_parent_death(signal.SIGTERM) or os.getppid() != serve:
            os._exit(1)  # serve is already gone (or cannot be watched): nothing to serve for

    return subprocess.Popen(
        command, env=environment, start_new_session=True, pass_fds=pass_fds, preexec_fn=end_with_serve
    )


def torchserve_environment(args: argparse.Namespace, metrics_dir: Path | None = None) -> dict[str, str]:
    run_dir = args.log_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    # The workers write their metrics into the fronts' folder, which GET /metrics sums (fastai_serving.stage_metrics).
    metrics = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)} if metrics_dir is not None else {}
    return {
        **os.environ,
        **metrics,
        "TS_INFERENCE_ADDRESS": f"http://{args.host}:{args.inference_port}",
        "TS_MANAGEMENT_ADDRESS": f"http://{defaults.LOOPBACK}:{args.management_port}",
        "TS_METRICS_ADDRESS": f"http://{defaults.LOOPBACK}:{args.metrics_port}",
        "TS_GRPC_INFERENCE_PORT": str(args.grpc_ports[0]),
        "TS_GRPC_MANAGEMENT_PORT": str(args.grpc_ports[1]),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", defaults.OMP_WAIT_POLICY),  # the workers' torch threads
        # The workers hand the handler each body as its bytes: the handler parses JSON with orjson, where TorchServe's
        # worker would first parse it with the standard library (2.5-5x slower on base64 images; docs/pipeline.md).
        "TS_DECODE_INPUT_REQUEST": "false",
        "LOG_LOCATION": str(args.log_dir),
        "METRICS_LOCATION": str(args.log_dir),
        # TorchServe's launcher keeps its pid file in the temp folder (TMPDIR first), where
        # `torchserve --stop` finds it; its frontend keeps the workers' sockets in TEMP, a
        # folder per server so that several never share a socket.
        "TMPDIR": str(args.run_dir or tempfile.gettempdir()),
        "TEMP": str(run_dir),
    }


def torchserve_process(args: argparse.Namespace, metrics_dir: Path | None = None) -> subprocess.Popen:
    torchserve = Path(sys.executable).parent / "torchserve"
    command = [
        str(torchserve) if torchserve.exists() else "torchserve",
        "--start", "--foreground", "--ncs",
        "--model-store", str(args.model_store),
        "--ts-config", str(args.config),
        "--log-config", str(LOG_CONFIG),
    ]  # fmt: skip
    if args.run_dir:
        args.run_dir.mkdir(parents=True, exist_ok=True)
    return guarded(command, torchserve_environment(args, metrics_dir))


def fronts_table(args: argparse.Namespace) -> Path:
    """Where the fronts count their predictions in flight and each model's pace (shim/admission.py)."""
    return args.log_dir / "run" / "fronts"


def drain_file(args: argparse.Namespace) -> Path:
    """While this file exists the shim's readiness fails: serve makes it on SIGTERM."""
    return args.log_dir / "run" / "draining"


def shim_environment(
    args: argparse.Namespace, default_model: str, models: list[str], metrics_dir: Path
) -> dict[str, str]:
    """Both fronts' settings; one metrics folder, so /metrics counts every front's requests."""
    settings = {
        "upstream": http_url(args.host, args.inference_port),
        "management": f"http://{defaults.LOOPBACK}:{args.management_port}",
        "torchserve_metrics": f"http://{defaults.LOOPBACK}:{args.metrics_port}/metrics",
        "default_model": default_model,
        "port": str(args.port),
        "host": args.shim_host,
        "drain_file": str(drain_file(args)),
        # Every front process counts its predictions in flight in one file, so each admits against them all.
        "admission_file": str(fronts_table(args)),
        "grpc_port": str(args.grpc_port),
    }
    # Readiness waits for every archive in the store (and every model registered), unless the user named the models.
    settings["store_models"] = ",".join(models)
    # The key and certificate files as absolute paths (nginx runs in its run folder), links kept: a Secret's swap is seen.
    access = Settings.from_env()
    for name in ACCESS_FILES:
        if getattr(access, name):
            settings[name] = os.path.abspath(getattr(access, name))
    return {
        **os.environ,
        **{env_name(name): value for name, value in settings.items()},
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }


def shim_process(environment: dict[str, str], rest: socket.socket) -> subprocess.Popen:
    """The REST front (gunicorn) on the listening socket serve bound for it."""
    gunicorn = Path(sys.executable).parent / "gunicorn"
    command = [str(gunicorn) if gunicorn.exists() else "gunicorn", *SHIM_APP]
    return ending_with_serve(
        command, {**environment, listener.LISTEN_FD: str(rest.fileno())}, pass_fds=(rest.fileno(),)
    )


def proxied_rest_front(environment: dict[str, str], rest: socket.socket, run_dir: Path) -> dict[str, subprocess.Popen]:
    """nginx on the listening socket serve bound, in front of two gunicorns on unix sockets in `run_dir`:
    one for predictions, one for GET and HEAD (health, status, metadata, metrics), so health never waits."""
    settings = Settings.from_env(environment)
    config, app_socket, health_socket = rest_proxy.write_config(
        settings, rest_proxy.listen_address(settings.host, settings.port), run_dir
    )
    gunicorn = Path(sys.executable).parent / "gunicorn"
    gunicorn_command = [str(gunicorn) if gunicorn.exists() else "gunicorn"]
    health_pool = ["--workers", "1", "--threads", str(settings.health_threads)]
    nginx = rest_proxy.nginx_command(rest_proxy.find_nginx(), config, run_dir)
    return {
        "shim": ending_with_serve([*gunicorn_command, "--bind", f"unix:{app_socket}", *SHIM_APP], environment),
        "shim's GET pool": ending_with_serve(
            [*gunicorn_command, "--bind", f"unix:{health_socket}", *health_pool, *SHIM_APP], environment
        ),
        # The NGINX variable tells nginx the inherited socket is its listener.
        "REST proxy": ending_with_serve(
            nginx,
            {**environment, listener.LISTEN_FD: str(rest.fileno()), **rest_proxy.inherited(rest.fileno())},
            pass_fds=(rest.fileno(),),
        ),
    }


def grpc_process(environment: dict[str, str]) -> subprocess.Popen:
    """The gRPC front, with the fronts' settings (it binds to the REST front's address, on --grpc-port)."""
    return ending_with_serve([sys.executable, *GRPC_APP], environment)


def state_file(management_port: int) -> Path:
    """Where a serve on this management port says what it serves (read by scripts/reload): a folder per user,
    since the temp folder is shared and one user's folder is not another's to write in."""
    return Path(tempfile.gettempdir()) / f"{STATE_FOLDER}-{os.getuid()}" / f"serve-{management_port}.json"


def write_state(args: argparse.Namespace) -> Path:
    path = state_file(args.management_port)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "model_store": str(args.model_store)}))
    return path


def ready_models(management: Management) -> dict[str, bool]:
    """Each registered model and whether it has a READY worker ({} while TorchServe does not answer)."""
    try:
        return management.models_ready()
    except ServingError:
        return {}


def why_it_ended(name: str, process: subprocess.Popen) -> str:
    if name == "TorchServe":
        # The launcher waits for TorchServe's Java frontend and exits 0 however that ended.
        return (
            "TorchServe stopped from outside (`torchserve --stop`, or its Java process was killed or failed: "
            "see ts_log.log in the log folder)"
        )
    return f"the {name} exited on its own (code {process.returncode})"


def serve(args: argparse.Namespace) -> int:
    if not args.model_store.is_dir():
        print(f"serve: model store {args.model_store} is not a folder", file=sys.stderr)
        return 2
    args.model_store = args.model_store.resolve()
    args.log_dir = args.log_dir.resolve()
    taken = refuse_taken_ports(args)
    if taken:
        print(f"serve: {taken}", file=sys.stderr)
        return 2
    models = archive_model_names(args.model_store)
    default_model = args.default_model or (models[0] if len(models) == 1 else "")
    proxied = not args.no_shim and not args.no_proxy
    if proxied and rest_proxy.find_nginx() is None:
        print(
            "serve: the REST front needs nginx, which is not installed: scripts/install installs it "
            "(Debian: apt-get install nginx-light); or serve with --no-proxy",
            file=sys.stderr,
        )
        return 2
    access = Settings.from_env()  # the fronts' keys and TLS: from FASTAI_SERVING_* variables only
    if not args.no_shim:
        refused = security.refusal(access, proxied)
        if refused:
            print(f"serve: {refused}", file=sys.stderr)
            return 2
        for line in security.announcement(access, args.shim_host, grpc=not args.no_grpc):
            print(line, flush=True)
    certificates = security.CertificateWatch(access) if proxied and access.tls else None
    drain_file(args).unlink(missing_ok=True)
    fronts_table(args).unlink(missing_ok=True)  # an earlier serve's counts
    metrics_dir = Path(tempfile.mkdtemp(prefix="fastai-serving-metrics-"))
    # nginx's config, temp files and the shim's unix sockets: a short path (a socket's is at most ~100 bytes).
    proxy_dir = Path(tempfile.mkdtemp(prefix="fastai-serving-rest-")) if proxied else None
    management = Management(f"http://{defaults.LOOPBACK}:{args.management_port}")
    rest = None if args.no_shim else rest_listener(args)
    processes = {"TorchServe": torchserve_process(args, metrics_dir)}
    if rest is not None:
        environment = shim_environment(args, default_model, models, metrics_dir)
        if proxy_dir is not None:
            processes.update(proxied_rest_front(environment, rest, proxy_dir))
        else:
            processes["shim"] = shim_process(environment, rest)
        if not args.no_grpc:
            processes["gRPC front"] = grpc_process(environment)
    state = write_state(args)
    stopping: signal.Signals | None = None

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping is None:
            stopping = signal.Signals(signum)
            print(f"serve: stopping ({stopping.name})", flush=True)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    read_again: list[bool] = []
    signal.signal(READ_AGAIN, lambda *_: read_again.append(True))
    announced: set[str] = set()
    exited, next_look = None, 0.0
    try:
        while stopping is None and exited is None:
            exited = next((name for name, process in processes.items() if process.poll() is not None), None)
            sighup = bool(read_again)
            # SIGHUP: the fronts read their files again; nginx only if its certificates' bytes changed, since its
            # reload drops idle kept-alive connections (a key rotation leaves them alone)
            if sighup:
                read_again.clear()
                print("serve: SIGHUP: the fronts read their key and certificate files again", flush=True)
                _signal_fronts(
                    {name: process for name, process in processes.items() if name != "REST proxy"}, READ_AGAIN
                )
            if certificates is not None:
                reload_proxy, said = certificates.read_again() if sighup else certificates.changed()
                if said:
                    print(said, flush=True)
                if reload_proxy:
                    _signal_fronts({"REST proxy": processes["REST proxy"]}, READ_AGAIN)
            if time.monotonic() >= next_look:
                models_ready = ready_models(management)
                for name in sorted(n for n, ready in models_ready.items() if ready and n not in announced):
                    announced.add(name)
                    _announce(args, name, default_model)
                # Often until every model is up, then now and again (a reload may register more).
                waiting = not models_ready or not all(models_ready.values())
                next_look = time.monotonic() + (0.5 if waiting else 5.0)
            time.sleep(0.2)
    finally:
        drain_s = args.drain_s if stopping == signal.SIGTERM and exited is None and not args.no_shim else 0
        shut_down(processes, drain_file(args), drain_s, Settings.from_env().graceful_timeout_s, rest)
        state.unlink(missing_ok=True)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if proxy_dir is not None:
            shutil.rmtree(proxy_dir, ignore_errors=True)
    if exited is not None:
        print(f"serve: {why_it_ended(exited, processes[exited])}; stopped the rest", file=sys.stderr)
        return processes[exited].returncode or 1
    return 0


def shut_down(
    processes: dict[str, subprocess.Popen],
    draining: Path,
    drain_s: float,
    graceful_s: float,
    rest: socket.socket | None = None,
) -> None:
    """The fronts first, TorchServe last, so that every request a front accepted is answered.

    With a drain, readiness fails at once (load balancers stop sending) while requests are
    still served for `drain_s`; then the REST front's listener takes no new handshake and its
    workers accept what is queued (the gRPC front does the same itself), the fronts stop
    accepting and answer what they accepted (for up to `graceful_s`); then TorchServe stops.
    Each wait is a named default; their sum is `defaults.shutdown_budget_s()`.
    """
    fronts = [process for name, process in processes.items() if name != "TorchServe"]
    if drain_s > 0:
        draining.touch()
        print(f"serve: draining: /ready answers 503; requests are still served for {drain_s:g} s", flush=True)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline and all(process.poll() is None for process in processes.values()):
            time.sleep(0.1)
    if rest is not None:
        quiesced = listener.quiesce(rest, timeout_s=defaults.FRONT_STOP_MARGIN_S)
        print(f"serve: the REST front stops: {quiesced.how}", flush=True)
        if quiesced.left:
            print(f"serve: {quiesced.left} connections were still queued at the REST front when it stopped", flush=True)
    fronts_stopped_by = time.monotonic() + graceful_s + defaults.FRONT_STOP_MARGIN_S  # one budget for all fronts
    proxy = processes.get("REST proxy")
    if proxy is not None:
        # nginx first (SIGQUIT to its master: finish every request it accepted) while the shim behind it answers.
        proxy.send_signal(signal.SIGQUIT)
        _close(rest)
        _wait_for_group(proxy, timeout_s=fronts_stopped_by - time.monotonic())
        fronts.remove(proxy)
    for process in fronts:
        _signal_group(process, signal.SIGTERM)
    _close(rest)
    for process in fronts:
        _wait_for_group(process, timeout_s=max(1.0, fronts_stopped_by - time.monotonic()))
    _signal_group(processes["TorchServe"], signal.SIGTERM)
    _wait_for_group(processes["TorchServe"], timeout_s=defaults.TORCHSERVE_STOP_S)
    draining.unlink(missing_ok=True)


def _announce(args: argparse.Namespace, name: str, default_model: str) -> None:
    """One line per model once it can serve: TorchServe's URL, and the address and port each front binds."""
    where = f"{http_url(args.host, args.inference_port)}/predictions/{name}"
    if not args.no_shim:
        routes = f"/v1/models/{name}:predict" + (", /analyze:predict" if name == default_model else "")
        tls = " (TLS)" if Settings.from_env().tls else ""
        where += f"; REST{tls} on {bound_address(args.shim_host, args.port)}: {routes}"
        if not args.no_grpc:
            where += f"; gRPC{tls} on {bound_address(args.shim_host, args.grpc_port)}"
    print(f"serve: {name} ready at {where}", flush=True)


def _signal_fronts(processes: dict[str, subprocess.Popen], signum: int) -> None:
    """`signum` to each front (gunicorn's workers, not their master, which would restart them on SIGHUP); never to
    TorchServe's guard, which SIGHUP would end."""
    for name, process in processes.items():
        if name != "TorchServe":
            try:
                front = psutil.Process(process.pid)
                for target in front.children() if name in GUNICORNS else [front]:
                    target.send_signal(signum)
            except psutil.NoSuchProcess:
                pass  # it ended: serve's loop sees it and stops the rest


def bound_address(host: str, port: int) -> str:
    """host:port as a front binds it (an IPv6 address in brackets), saying so where that is every address."""
    everywhere = host.strip("[]") in ("", "0.0.0.0", "::")
    return host_port(host or "0.0.0.0", port) + (" (every address)" if everywhere else "")


def _close(rest: socket.socket | None) -> None:
    """serve's copy of the REST listener, as soon as its front was told to stop: the listener goes with the
    front's own copies, so no connection waits in its queue for a front that will never accept it."""
    if rest is not None:
        rest.close()


def _wait_for_group(process: subprocess.Popen, timeout_s: float) -> None:
    """Let a process group shut down, then kill whatever is left of it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()
        if not group_running(process.pid):
            return
        time.sleep(0.2)
    _signal_group(process, signal.SIGKILL)


def group_running(group: int) -> bool:
    """Whether a process of the group still runs. An ended one that nobody reaped yet does not: TorchServe's Java,
    orphaned when its launcher ends first, waits as a zombie until init reaps it (a second or more in some
    sandboxes), and kill(2) still reaches a zombie."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    for member in psutil.process_iter(["status"]):
        try:
            if os.getpgid(member.pid) == group and member.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None, prog: str = "serve") -> int:
    try:
        args = parse_args(argv, prog)
    except ValueError as error:  # a FASTAI_SERVING_* setting that cannot be used, named
        print(f"{prog}: {error}", file=sys.stderr)
        return 2
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
