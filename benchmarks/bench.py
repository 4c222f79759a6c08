"""Benchmark: fastai-serving against the ceiling and the in-process baselines, side by side, in one run.

Rows (same Learner, same images, one run):
  1 ceiling fp32   the model's batched forward pass on already-decoded, normalised tensors, in the fastest
                   form an fp32 archive can take (weights channels-last or not: both are timed, the faster kept)
  1b ceiling bf16  the same in bfloat16 autocast with channels-last weights: the bf16 archive's ceiling
  2 get_preds      fastai in-process: learn.get_preds over a test DataLoader of decoded images
  3 predict loop   the naive baseline: learn.predict per image
  4 original       the original fastai-serving method: one web server, each request's instances one batch
  5 TorchServe     /predictions/<model> directly, chip-n-scale-shaped load
  6 shim           the full path: the shim on :8501 in front of TorchServe, same load (default archive)
  6g gRPC          the same through the gRPC front on :8500: TF Serving's Predict, raw image bytes (a gRPC client
                   in this process, with the shim's generated stubs: the wire TF Serving's own client speaks);
                   rows 6 and 6g take turns, one request per client each, so a busy machine slows both alike
  6v v2 binary     the same through the Open Inference Protocol's REST route, as tritonclient.http sends it
                   (binary tensor data: the tiles' bytes, no base64 or JSON around them); it takes turns with 6, 6g
  6t, 6tg         rows 6 and 6g with API keys and TLS on (a second server on the same archive, a key on every
                   request, each client one kept-alive TLS connection); they take turns with 6, 6g and 6v
  6a, 6b           row 6 with --no-channels-last (fastai's plain fp32) and with --precision bf16
  1c, 1d           the ceilings compiled: torch.compile's forward in fp32 and in bf16
  6c, 6d           row 6 and 6b with --compile worker: the worker compiles and warms the model before it is ready
  1e               the AOT ceiling: the forward of the AOTInductor package make-archive --compile aot builds
  6e               row 6 with --compile aot: the archive's package, loaded by the worker without compiling
Every archive's server is started twice, and both starts are timed: with an empty torch.compile
cache, and again with the cache the first start left (a restarted worker's case).
  7 predict-batch  scripts/predict-batch through the shim: the same tiles as files in a folder, read, sent
                   CLIENTS requests in flight of INSTANCES tiles each, every answer committed to a JSONL file
  7s scene         the same, the tiles laid side by side in one GeoTIFF: windows read with rasterio, sent as PNGs,
                   footprints committed to a GeoPackage (benchmarks/scenes.py; windows per second)

Each row says the precision it ran in: a served row's is what its worker reports (a CPU without
fast bfloat16 serves a bf16 archive in fp32), and each row is divided by its own precision's ceiling.
Load for rows 4-6: CLIENTS concurrent clients, each sending requests of INSTANCES base64 tiles.

A second table does the same for a tabular and a text Learner (benchmarks/kinds.py: rows T0-T4, X1-X3).
A third table, first (benchmarks/pipeline.py): a near-free model's rows P0-P8 against the decode ceiling,
and the CPU per image of each stage of the served path.
Ratios, not absolute times, are what compare across machines. Not a test: run `make bench`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import grpc
import psutil
import requests

from benchmarks.kinds import print_kinds_table, rows_tabular_and_text
from benchmarks.loads import (
    PeakRss,
    Row,
    predict_loop_row,
    predict_request,
    request_body,
    run_grpc_load,
    run_load,
    run_v2_load,
)
from benchmarks.pipeline import pipeline_rows
from benchmarks.scenes import row_predict_batch_scene
from benchmarks.tracing import tracing_rows
from fastai_serving.engine.learner import BF16, FP32
from fastai_serving_protos import tensorflow_serving_pb2_grpc
from harness.servers import ROOT, Servers, free_port, make_archive
from harness.workload import make_learner, make_tiles

# --- In-process rows ------------------------------------------------------------------------


def decoded_images(tiles: list[bytes]) -> list:
    from fastai_serving.engine.images import decode_image

    return [decode_image(tile) for tile in tiles]


def timed_forward(served, tiles: list[bytes], batch: int) -> tuple[float, float]:
    """(seconds, peak RSS MB) of the model's forward passes over already-decoded, normalised batches."""
    import torch

    from fastai_serving.engine.predict import precision_context

    learn = served.learn
    dl = learn.dls.test_dl(decoded_images(tiles), bs=batch, num_workers=0)
    # Decoded, resized, normalised: only the forward pass is timed. Plain tensors, as fastai's CastToTensor
    # callback gives the model in get_preds (and so in serving).
    batches = [xb[0].as_subclass(torch.Tensor) for xb in dl]
    with PeakRss([psutil.Process().pid]) as rss, torch.inference_mode(), precision_context(served):
        learn.model(batches[0])  # warm-up
        start = time.perf_counter()
        for xb in batches:
            learn.model(xb)
        seconds = time.perf_counter() - start
    return seconds, rss.peak_mb


def row_ceiling_fp32(export_path: Path, device: str, tiles: list[bytes], batch: int) -> Row:
    """The fastest forward an fp32 archive can have: weights channels-last or not, whichever ran faster here."""
    from fastai_serving.engine.learner import load_learner

    timings = {}
    for channels_last in (True, False):
        served = load_learner(export_path, device, precision=FP32, channels_last=channels_last)
        timings[channels_last] = timed_forward(served, tiles, batch)
    best = min(timings, key=lambda layout: timings[layout][0])
    seconds, peak = timings[best]
    layout = "channels-last" if best else "contiguous"
    other = timings[not best][0]
    note = f"batch {batch}, {layout} ({other / seconds:.2f}x the other layout)"
    return Row("1 ceiling fp32: forward", len(tiles), seconds, peak_rss_mb=peak, note=note, precision=FP32)


def row_ceiling_bf16(export_path: Path, device: str, tiles: list[bytes], batch: int) -> Row:
    """The bf16 archive's ceiling: its forward in bfloat16 autocast (fp32 where the device has no fast bfloat16)."""
    from fastai_serving.engine.learner import load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no fast bfloat16.*")
        served = load_learner(export_path, device, precision=BF16)
    seconds, peak = timed_forward(served, tiles, batch)
    return Row(
        "1b ceiling bf16: forward",
        len(tiles),
        seconds,
        peak_rss_mb=peak,
        note=f"batch {batch}",
        precision=served.precision,
    )


def row_ceiling_compiled(export_path: Path, device: str, tiles: list[bytes], batch: int, precision: str) -> Row:
    """A compiled archive's ceiling: torch.compile's forward, channels-last, in `precision` (compiled before timing)."""
    import torch

    from fastai_serving.compiled.worker import compile_mode
    from fastai_serving.engine.learner import load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no fast bfloat16.*")
        served = load_learner(export_path, device, precision=precision)
    served.learn.model = torch.compile(served.learn.model, mode=compile_mode(served.device))
    seconds, peak = timed_forward(served, tiles, batch)  # its warm-up batch compiles
    name = f"1{'d' if precision == BF16 else 'c'} ceiling {precision}: compiled forward"
    return Row(
        name, len(tiles), seconds, peak_rss_mb=peak, note=f"batch {batch}", precision=served.precision, compiled=True
    )


def row_ceiling_aot(export_path: Path, device: str, tiles: list[bytes], batch: int, folder: Path) -> Row:
    """The AOT archive's ceiling: the forward of the package make-archive --compile aot builds (fp32)."""
    from fastai_serving.compiled.aot import build_package, load_package
    from fastai_serving.engine.learner import load_learner

    served = load_learner(export_path, device, precision=FP32)
    built = build_package(served, batch, folder)
    if not built.compiled:
        raise SystemExit(f"bench: the AOT package failed: {built.error}")
    load_package(served, folder, batch)
    seconds, peak = timed_forward(served, tiles, batch)
    note = f"batch {batch}, package built in {built.seconds:.0f} s"
    return Row("1e ceiling fp32: AOT forward", len(tiles), seconds, peak_rss_mb=peak, note=note, precision=FP32)


def row_get_preds(served, tiles: list[bytes], batch: int) -> Row:
    learn = served.learn
    with PeakRss([psutil.Process().pid]) as rss:
        start = time.perf_counter()
        images = decoded_images(tiles)
        learn.get_preds(dl=learn.dls.test_dl(images, bs=batch, num_workers=0))
        seconds = time.perf_counter() - start
    return Row("2 fastai get_preds", len(tiles), seconds, peak_rss_mb=rss.peak_mb, note="decode + test_dl, in-process")


def row_predict_loop(served, tiles: list[bytes]) -> Row:
    from fastai.vision.all import PILImage

    return predict_loop_row("3 learn.predict loop", served.learn, tiles, PILImage.create, "one image at a time")


def row_original(export_path: Path, tiles, clients, instances, per_client) -> Row:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "original_server.py"), str(export_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/", process)
        with PeakRss([process.pid]) as rss:
            seconds, latencies, answered = run_load(
                f"http://127.0.0.1:{port}/analyze:predict", tiles, clients, instances, per_client
            )
        return Row("4 original method (Flask)", answered, seconds, latencies, rss.peak_mb, "one request at a time")
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wait_http(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} server exited with {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.5)
    raise TimeoutError(url)


# The archives served: key -> (make-archive flags, the shim row's name).
ARCHIVES = {
    "default": ([], "6 shim -> TorchServe"),
    "contiguous": (["--no-channels-last"], "6a shim, --no-channels-last"),
    "bf16": (["--precision", "bf16"], "6b shim, --precision bf16"),
    "compiled": (["--compile", "worker"], "6c shim, --compile worker"),
    "compiled-bf16": (["--compile", "worker", "--precision", "bf16"], "6d shim, --compile worker, bf16"),
    "aot": (["--compile", "aot"], "6e shim, --compile aot"),
}
# --only compile: the archives and ceilings the compile modes are compared on.
COMPILE_ARCHIVES = ("default", "compiled", "aot")


def served_description(servers: Servers) -> dict:
    """What the archive's worker says of itself: the precision it runs in, whether it compiled."""
    response = requests.get(f"{servers.shim}/v1/models/bench/metadata", timeout=60)
    response.raise_for_status()
    return response.json()["metadata"]["fastai"]


BENCH_KEY = "0123456789abcdef" * 4  # the API key of the secured rows' server (made for this run only)


def secured_server(store: Path, folder: Path) -> Servers:
    """The default archive served again with API keys and TLS on: a self-signed certificate for localhost (openssl)."""
    folder.mkdir(parents=True)
    cert, key, keys = folder / "tls.crt", folder / "tls.key", folder / "api-keys"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)  # fmt: skip
    keys.write_text(f"bench: {BENCH_KEY}\n")
    environment = {"FASTAI_SERVING_API_KEYS_FILE": str(keys), "FASTAI_SERVING_TLS_CERT_FILE": str(cert),
                   "FASTAI_SERVING_TLS_KEY_FILE": str(key)}  # fmt: skip
    servers = Servers(model_store=store, log_dir=folder / "logs", environment=environment, ca=cert, api_key=BENCH_KEY)
    return servers.start(["bench"], timeout_s=1200)


def secured_loads(secured: Servers, tiles, clients, instances) -> dict:
    """Rows 6t and 6tg: rows 6's and 6g's load with a key on every request, over TLS."""
    rest = f"https://localhost:{secured.shim_port}/analyze:predict"
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    metadata = [("authorization", f"Bearer {BENCH_KEY}")]
    return {
        "6t shim, TLS + API key": lambda: run_load(rest, tiles, clients, instances, 1, headers, verify=str(secured.ca)),
        "6tg gRPC, TLS + API key": lambda: run_grpc_load(
            f"localhost:{secured.grpc_port}", tiles, clients, instances, 1, ca=secured.ca, metadata=metadata
        ),
    }


def rows_served(
    servers: Servers, tiles, clients, instances, per_client, key: str, secured: Servers | None = None
) -> list[Row]:
    """Rows 5, 6 and 6g (and with `secured`, 6t and 6tg) for the default archive; one shim row for a variant."""
    described = served_description(servers)
    pids, rows, precision, compiled = (
        [servers.process.pid],
        [],
        described["precision"],
        described.get("compiled", False),
    )
    if key == "default":
        with PeakRss(pids) as rss:
            seconds, latencies, answered = run_load(
                f"{servers.inference}/predictions/bench",
                tiles,
                clients,
                instances,
                per_client,
                headers={"Content-Type": "application/json"},
            )
        rows.append(Row("5 TorchServe direct", answered, seconds, latencies, rss.peak_mb, precision=precision))
    name = ARCHIVES[key][1]
    if key != "default":
        with PeakRss(pids) as rss:
            seconds, latencies, answered = run_load(
                f"{servers.shim}/analyze:predict", tiles, clients, instances, per_client
            )
        return rows + [Row(name, answered, seconds, latencies, rss.peak_mb, precision=precision, compiled=compiled)]
    # Rows 6, 6g and 6v take turns, a request per client each, so load from elsewhere falls on each alike.
    loads = {
        name: lambda: run_load(f"{servers.shim}/analyze:predict", tiles, clients, instances, 1),
        "6g gRPC front -> TorchServe": lambda: run_grpc_load(servers.grpc, tiles, clients, instances, 1),
        "6v v2 binary -> TorchServe": lambda: run_v2_load(servers.shim, tiles, clients, instances, 1),
        **(secured_loads(secured, tiles, clients, instances) if secured is not None else {}),
    }
    totals = {row: [0.0, [], 0, 0.0] for row in loads}  # seconds, latencies, images, peak RSS
    for turn in range(per_client):
        for row in loads if turn % 2 == 0 else reversed(loads):
            with PeakRss(pids) as rss:
                seconds, latencies, answered = loads[row]()
            total = totals[row]
            total[0], total[2], total[3] = total[0] + seconds, total[2] + answered, max(total[3], rss.peak_mb)
            total[1] += latencies
    for row, (seconds, latencies, answered, peak) in totals.items():
        rows.append(Row(row, answered, seconds, latencies, peak, precision=precision))
    return rows


def row_predict_batch(servers: Servers, tiles, clients, instances, per_client, folder: Path) -> Row:
    """Row 7: the batch client users run, on as many images as row 6 sends, from files, into a JSONL file."""
    precision = served_description(servers)["precision"]
    images = folder / "tiles"
    images.mkdir(parents=True)
    for index in range(clients * per_client * instances):
        (images / f"{index:05d}.jpg").write_bytes(tiles[index % len(tiles)])
    command = [str(ROOT / "scripts" / "predict-batch"), str(images), "--server", servers.shim]
    command += ["--out", str(folder / "results.jsonl"), "--batch", str(instances), "--concurrency", str(clients)]
    with open(folder / "predict-batch.log", "w+") as log:
        client = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with PeakRss([servers.process.pid, client.pid]) as rss:
            client.wait(timeout=600)
        log.seek(0)
        output = log.read()
    # Its own summary line: the run's images and rate, timed from the first image to the last commit.
    summary = re.search(r"images, done (\d+), skipped \d+ \(done before\), failed (\d+), ([\d.]+) images/s", output)
    if client.returncode != 0 or not summary or summary.group(2) != "0":
        raise SystemExit(f"bench: predict-batch failed (exit {client.returncode}):\n{output[-2000:]}")
    done, rate = int(summary.group(1)), float(summary.group(3))
    note = "files -> JSONL, fsync'ed as answers arrive"
    return Row("7 predict-batch -> shim", done, done / rate, peak_rss_mb=rss.peak_mb, note=note, precision=precision)


def one_image_overhead(servers: Servers, tile: bytes, count: int) -> tuple[float, float, float]:
    """p50 of one-image requests, TorchServe direct, through the shim and through the gRPC front, one at a time."""
    body = request_body([tile])
    session = requests.Session()

    def p50(url: str, headers: dict) -> float:
        times = []
        for _ in range(count):
            began = time.perf_counter()
            session.post(url, data=body, headers=headers, timeout=60).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times)

    direct = p50(f"{servers.inference}/predictions/bench", {"Content-Type": "application/json"})
    shim = p50(f"{servers.shim}/analyze:predict", {})
    with grpc.insecure_channel(servers.grpc) as channel:
        stub, call, times = tensorflow_serving_pb2_grpc.PredictionServiceStub(channel), predict_request([tile]), []
        for _ in range(count):
            began = time.perf_counter()
            stub.Predict(call, timeout=60)
            times.append((time.perf_counter() - began) * 1000)
    return direct, shim, statistics.median(times)


def served_probabilities(servers: Servers, tiles: list[bytes]) -> list[list[float]]:
    """Every tile's probabilities through the shim, 8 tiles per request."""
    probabilities = []
    for start in range(0, len(tiles), 8):
        response = requests.post(
            f"{servers.shim}/analyze:predict", data=request_body(tiles[start : start + 8]), timeout=120
        )
        response.raise_for_status()
        probabilities += response.json()["predictions"]
    return probabilities


def ceiling_of(row: Row, rows: list[Row]) -> Row:
    """The ceiling a row is held to: the one of its precision, compiled or not as the row is."""
    if row.name.startswith(("1e", "6e")):  # the AOT rows: their own ceiling
        return next(r for r in rows if r.name.startswith("1e"))
    ceilings = [r for r in rows if r.name.startswith("1") and not r.name.startswith("1e")]
    return next(r for r in ceilings if (r.precision, r.compiled) == (row.precision, row.compiled))


def argmax_agreement(answers: list[list[float]], reference: list[list[float]]) -> float:
    same = sum(
        max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        for a, b in zip(answers, reference, strict=True)
    )
    return same / len(reference)


def largest_difference(answers: list[list[float]], reference: list[list[float]]) -> float:
    return max(abs(x - y) for a, b in zip(answers, reference, strict=True) for x, y in zip(a, b, strict=True))


def print_targets(rows: list[Row], overhead: tuple[float, float], answers: dict[str, list[list[float]]]) -> None:
    """The targets, as ratios from this run."""
    speed = {row.name.split()[0]: row.images_per_s for row in rows}
    row = {row.name.split()[0]: row for row in rows}
    fp32 = answers["contiguous"]
    fp32_served = [r for r in rows if r.name[0] in "56" and r.precision == FP32 and not r.compiled]

    def own_ceiling(key: str) -> float:
        return row[key].images_per_s / ceiling_of(row[key], rows).images_per_s

    checks = [
        ("row 6 / row 2 (fastai get_preds)", speed["6"] / speed["2"], ">= 0.9"),
        ("row 6 / row 1 (fp32 ceiling)", speed["6"] / speed["1"], ">= 0.8"),
        (
            "fastest eager fp32 served row / row 1",
            max(r.images_per_s for r in fp32_served) / speed["1"],
            "<= 1 (within noise)",
        ),
        ("row 6b / its ceiling", own_ceiling("6b"), ">= 0.8"),
        ("row 6 / row 3 (predict loop)", speed["6"] / speed["3"], "> 1"),
        ("row 7 predict-batch / row 6 shim", speed["7"] / speed["6"], ">= 0.95"),
        ("row 6v v2 binary / row 6 shim", speed["6v"] / speed["6"], ">= 1.0"),
        ("row 6 / row 4 (original method)", speed["6"] / speed["4"], "> 1"),
        ("shim's added p50, one image (ms)", overhead[1] - overhead[0], "<= 2"),
        ("row 6g gRPC / row 6 REST shim (same load)", speed["6g"] / speed["6"], ">= 1 (no base64, no JSON)"),
        ("row 6t TLS + key / row 6 plain (REST)", speed["6t"] / speed["6"], "(stated: docs/performance.md)"),
        ("row 6tg TLS + key / row 6g plain (gRPC)", speed["6tg"] / speed["6g"], "(stated)"),
        ("gRPC front's added p50, one image (ms)", overhead[2] - overhead[0], "<= 2"),
        (f"row 6b ({row['6b'].precision}) / row 6a plain fp32", speed["6b"] / speed["6a"], ">= 1.8 where bf16 is fast"),
        ("row 6b / row 6 fp32 channels-last", speed["6b"] / speed["6"], "(default is already faster)"),
        ("row 6 channels-last / row 6a plain fp32", speed["6"] / speed["6a"], "(default's gain)"),
        ("row 6c compiled fp32 / row 6 eager fp32", speed["6c"] / speed["6"], ">= 1.12"),
        ("row 6d compiled bf16 / row 6b eager bf16", speed["6d"] / speed["6b"], ">= 1.2"),
        ("row 6c / its compiled ceiling (1c)", own_ceiling("6c"), ">= 0.9"),
        ("row 6d / its compiled ceiling (1d)", own_ceiling("6d"), ">= 0.9"),
        ("bf16 argmax agreement with fp32", argmax_agreement(answers["bf16"], fp32), ">= 0.99"),
        ("compiled bf16 argmax agreement with fp32", argmax_agreement(answers["compiled-bf16"], fp32), ">= 0.99"),
        ("compiled fp32 largest probability difference", largest_difference(answers["compiled"], fp32), "<= 1e-5"),
        ("channels-last largest probability difference", largest_difference(answers["default"], fp32), "(stated)"),
        ("bf16 largest probability difference", largest_difference(answers["bf16"], fp32), "(stated)"),
    ]
    print("\n| target | this run | wanted |\n|---|---|---|")
    for name, value, wanted in checks:
        print(f"| {name} | {value:.3g} | {wanted} |")


def print_compile_targets(rows: list[Row], starts: dict[str, tuple[float, float]]) -> None:
    """The AOT mode's targets (issue 22), as ratios from this run."""
    speed = {row.name.split()[0]: row.images_per_s for row in rows}
    checks = [
        ("AOT first start / eager first start", starts["aot"][0] / starts["default"][0], "<= 1.5"),
        ("AOT restart / eager restart", starts["aot"][1] / starts["default"][1], "<= 1.5"),
        ("row 6e AOT fp32 / row 6 eager fp32", speed["6e"] / speed["6"], ">= 1.12"),
        ("row 6e AOT / row 6c --compile worker", speed["6e"] / speed["6c"], ">= 1"),
        ("row 6e / its ceiling (1e)", speed["6e"] / speed["1e"], ">= 0.9"),
        ("row 1e AOT ceiling / row 1 eager ceiling", speed["1e"] / speed["1"], "(stated)"),
    ]
    print("\n| AOT target | this run | wanted |\n|---|---|---|")
    for name, value, wanted in checks:
        print(f"| {name} | {value:.3g} | {wanted} |")


def print_starts(starts: dict[str, tuple[float, float]]) -> None:
    """Each archive's server start until its worker is ready: with an empty compile cache, and again."""
    print("\n| archive | first start s | start with the cache s |\n|---|---|---|")
    for key, (first, again) in starts.items():
        print(f"| {' '.join(ARCHIVES[key][0]) or '(default)'} | {first:.0f} | {again:.0f} |")


# --- The table ------------------------------------------------------------------------------------


def print_table(rows: list[Row], machine: str) -> None:
    naive = next(r for r in rows if r.name.startswith("3")).images_per_s
    header = (
        f"| {'row':<30} | {'precision':<9} | {'images/s':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'peak RSS MB':>11} "
        f"| {'÷ ceiling':>9} | {'÷ row 3':>7} |"
    )
    print(f"\n{machine}\n")
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(
            f"| {row.name:<30} | {row.precision:<9} | {row.images_per_s:8.1f} | {row.percentile(0.5):8.0f} "
            f"| {row.percentile(0.99):8.0f} | {row.peak_rss_mb:11.0f} "
            f"| {row.images_per_s / ceiling_of(row, rows).images_per_s:9.2f} | {row.images_per_s / naive:7.2f} |"
        )
    for row in rows:
        if row.note:
            print(f"  {row.name.split()[0]}: {row.note}")


def machine_description(device: str) -> str:
    import platform

    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{cpu}, {psutil.cpu_count()} cores, torch {torch.__version__}, device {device}"


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings(
        "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
    )  # at fastai's import
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short mode (under 2 minutes)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument(
        "--only",
        choices=["vision", "kinds", "compile", "pipeline", "security", "tracing"],
        help="one table: the vision Learner's, the tabular and text one, the compile modes' (eager, worker, aot), "
        "the near-free model's pipeline, the shim plain beside TLS and API keys (rows 6, 6g, 6v, 6t, 6tg), "
        "or the shim with OpenTelemetry off, on for every request and on for one in a hundred",
    )
    parser.add_argument(
        "--kinds-threads",
        type=int,
        default=0,
        help="torch threads for the tabular and text table, in-process and served alike (default 0: as each runs by default)",
    )
    args = parser.parse_args(argv)
    images = 32 if args.quick else 128
    per_client = 2 if args.quick else 6
    batch = 16

    from fastai_serving.engine.learner import load_learner

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        if args.only in (None, "pipeline"):  # benchmarks/pipeline.py: serving's own cost, with a near-free model
            pipeline_rows(tmp, args.device, args.clients, args.instances, args.quick)
            if args.only == "pipeline":
                return
        if args.only in (None, "tracing"):  # benchmarks/tracing.py: the shim's row with tracing off and on
            tracing_rows(tmp, args.clients, args.instances, args.quick)
            if args.only == "tracing":
                return
        if args.only == "security":
            print_security_table(rows_security(tmp, args.clients, args.instances, per_client, images))
            return
        if args.only not in ("vision", "compile"):
            kinds, profile = rows_tabular_and_text(tmp, args.device, args.clients, args.quick, args.kinds_threads)
            if args.only == "kinds":
                print_kinds_table(kinds, profile)
                return
        export_path = make_learner(tmp / "learner")
        tiles = make_tiles(images)
        only_compile = args.only == "compile"
        rows = [
            row_ceiling_fp32(export_path, args.device, tiles, batch),
            *([] if only_compile else [row_ceiling_bf16(export_path, args.device, tiles, batch)]),
            row_ceiling_compiled(export_path, args.device, tiles, batch, FP32),
            *([] if only_compile else [row_ceiling_compiled(export_path, args.device, tiles, batch, BF16)]),
            row_ceiling_aot(export_path, args.device, tiles, batch, tmp / "aot-ceiling"),
        ]
        plain = load_learner(export_path, args.device, channels_last=False)  # fastai as it loads a Learner
        rows.append(row_get_preds(plain, tiles, batch))
        rows.append(row_predict_loop(plain, tiles[: max(8, images // 4)]))
        del plain
        if not only_compile:
            rows.append(row_original(export_path, tiles, args.clients, args.instances, per_client))
        overhead, answers, starts = None, {}, {}
        # The default archive (fp32, channels-last) gives rows 5 and 6; the variants run through the shim too.
        for key, (flags, _) in ARCHIVES.items():
            if only_compile and key not in COMPILE_ARCHIVES:
                continue
            store = tmp / f"store-{key}"
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / f"cache-archive-{key}")  # make-archive's trial compile
            made = make_archive("bench", export_path, store, *flags)
            if made.returncode != 0:
                raise SystemExit(f"bench: make-archive {' '.join(flags)} failed:\n{made.stderr}")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / f"cache-serve-{key}")  # empty: the first start is cold
            first = timed_start(store, tmp / f"logs-{key}-first")
            first[0].stop()
            servers, again = timed_start(store, tmp / f"logs-{key}")
            starts[key] = (first[1], again)
            secured = secured_server(store, tmp / "secured") if key == "default" and not only_compile else None
            try:
                rows += rows_served(servers, tiles, args.clients, args.instances, per_client, key, secured)
                answers[key] = served_probabilities(servers, tiles)
                if key == "default" and not only_compile:
                    overhead = one_image_overhead(servers, tiles[0], 10 if args.quick else 30)
                    rows.append(
                        row_predict_batch(
                            servers, tiles, args.clients, args.instances, per_client, tmp / "predict-batch"
                        )
                    )
                    rows.append(  # the same images as one scene's windows (benchmarks/scenes.py)
                        row_predict_batch_scene(
                            servers, tiles, args.clients, args.instances, rows[-1].images, tmp / "predict-batch-scene"
                        )
                    )
            finally:
                servers.stop()
                if secured is not None:
                    secured.stop()
        rows.sort(key=lambda row: row.name)
        print_table(rows, machine_description(args.device))
        if only_compile:
            print(f"\nload: {args.clients} clients x {args.instances} instances per request")
            print_starts(starts)
            print_compile_targets(rows, starts)
            return
        print(
            f"\nload: {args.clients} clients x {args.instances} instances per request; "
            f"one-image p50: TorchServe {overhead[0]:.1f} ms, shim {overhead[1]:.1f} ms "
            f"(shim adds {overhead[1] - overhead[0]:.1f} ms), gRPC front {overhead[2]:.1f} ms"
        )
        print_starts(starts)
        print_targets(rows, overhead, answers)
        print_compile_targets(rows, starts)
        if args.only is None:
            print_kinds_table(kinds, profile)


def rows_security(tmp: Path, clients: int, instances: int, per_client: int, images: int) -> list[Row]:
    """--only security: the default archive plain and with keys and TLS, rows 6, 6g, 6v, 6t and 6tg in turns."""
    export_path = make_learner(tmp / "learner")
    store = tmp / "store-default"
    made = make_archive("bench", export_path, store)
    if made.returncode != 0:
        raise SystemExit(f"bench: make-archive failed:\n{made.stderr}")
    servers = Servers(model_store=store, log_dir=tmp / "logs-default").start(["bench"], timeout_s=1200)
    secured = None
    try:
        secured = secured_server(store, tmp / "secured")
        return rows_served(servers, make_tiles(images), clients, instances, per_client, "default", secured)
    finally:
        servers.stop()
        if secured is not None:
            secured.stop()


def print_security_table(rows: list[Row]) -> None:
    speed = {row.name.split()[0]: row.images_per_s for row in rows}
    print(f"\n| {'row':<30} | {'images/s':>8} | {'p50 ms':>8} | {'p99 ms':>8} | {'÷ plain':>7} |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 9}|")
    plain = {"6t": "6", "6tg": "6g"}
    for row in rows:
        short = row.name.split()[0]
        ratio = f"{row.images_per_s / speed[plain[short]]:7.2f}" if short in plain else " " * 7
        print(f"| {row.name:<30} | {row.images_per_s:8.1f} | {row.percentile(0.5):8.0f} "
              f"| {row.percentile(0.99):8.0f} | {ratio} |")  # fmt: skip


def timed_start(store: Path, log_dir: Path) -> tuple[Servers, float]:
    """A server for `store`, and the seconds until its model was ready (TorchServe, the worker's load and compile)."""
    began = time.perf_counter()
    servers = Servers(model_store=store, log_dir=log_dir).start(["bench"], timeout_s=1200)
    return servers, time.perf_counter() - began


if __name__ == "__main__":
    main()
