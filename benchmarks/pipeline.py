"""The pipeline table: what serving itself costs per image, measured with a model that costs nothing.

A vision Learner whose model is a pooling layer and a linear layer (harness.workload.make_near_free_learner),
fed the bench's 256×256 JPEG tiles resized to 224² and normalized, so every row is the pipeline around a model:
  P0 decode ceiling   the tiles decoded, resized and made one normalized tensor batch by the plainest fast code
                      (PIL on a thread per core, one uint8 array, normalized in place): what decoding alone allows
  P1 fastai get_preds in-process: decode, a test DataLoader, learn.get_preds
  P2, P3 core         fastai_serving's batch path in-process on the JSON bodies TorchServe would hand the handler
                      (parse, base64, decode, one batch, forward, encode): P2 with fastai's pipeline, P3 the fast path
  P4 TorchServe       /predictions/<model> directly; P5 the shim (REST, behind nginx); P6 the gRPC front: CLIENTS
                      clients each sending INSTANCES tiles per request (default archive, fast path on)
  P7 shim             P5 with an archive made with --no-fast-images (fastai's pipeline in the worker)
  P8 v2 binary        P5's load through the Open Inference Protocol's REST route with binary tensor data, as
                      tritonclient.http sends it (no base64, no JSON around the tiles)
  P9 shim             P5 with an archive made with --tensor-images on (torchvision decodes, torch resizes)
Then the floor (benchmarks/floor.py: the cheapest decode + resize + normalize per image on one thread), the
CPU each stage of the served path costs per image in-process, and each server process's own CPU time per
image while serving (psutil, after a warm-up load so that the JVM's JIT compiling is not counted), each
divided by the floor; last, one image's latency alone through each front, and the CPU of the fronts' POST to
TorchServe through shim/upstream_http.py beside urllib3's pool, which it replaced (alternated call by call).
Run as part of bench.py (`make bench`, or `--only pipeline`).
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from benchmarks.floor import FloorRow, floor_rows, normalized, print_floor, the_floor
from benchmarks.loads import Row, request_body, run_grpc_load, run_load, run_v2_load
from harness.servers import Servers, make_archive
from harness.workload import MODEL_SIZE, make_near_free_learner, make_tiles

# Server processes, by what their command line holds (the guards that start them hold the commands too).
PROCESS_KINDS = (
    ("java", "TorchServe frontend (Java)"),
    ("model_service_worker", "TorchServe worker (handler)"),
    ("nginx:", "nginx (REST proxy)"),
    ("gunicorn", "shim (REST)"),
    ("fastai_serving_shim.grpc", "gRPC front"),
)
CLIENTS = "clients (this process)"
GUARD = "fastai_serving_scripts.guard"
# Seconds of load before a server's rows are measured: its JVM compiles the hot paths meanwhile (a served
# model's steady state; the C2 compiler alone took about as much CPU as the frontend's own work at first).
WARM_UP_S = {True: 10.0, False: 30.0}  # by --quick


# --- The decode ceiling --------------------------------------------------------------------------


def _decode_resize(tile: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(tile))
    image = image.convert("RGB") if image.mode != "RGB" else image
    return np.asarray(image.resize((MODEL_SIZE, MODEL_SIZE), Image.BILINEAR))


def decode_ceiling(tiles: list[bytes], batch: int) -> float:
    """Seconds to turn `tiles` into normalized N×3×224×224 float batches on every core (PIL releases the GIL)."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_decode_resize, tiles[:batch]))  # warm-up
        start = time.perf_counter()
        arrays = list(pool.map(_decode_resize, tiles))
        for first in range(0, len(arrays), batch):
            normalized(np.stack(arrays[first : first + batch]))
        return time.perf_counter() - start


# --- In-process rows -----------------------------------------------------------------------------


def images_body(tiles: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(t).decode()}} for t in tiles]}).encode()


def best_seconds(call: Callable[[], object], repeat: int, timer: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of `repeat` runs of `call`, after a warm-up run (other sessions load this machine: the best is the least disturbed)."""
    call()
    times = []
    for _ in range(repeat):
        start = timer()
        call()
        times.append(timer() - start)
    return min(times)


def core_batches(served, bodies: list[bytes], settings, per_batch: int) -> Callable[[], int]:
    """The handler's whole batch path over `bodies`, `per_batch` requests per TorchServe batch; returns a runner."""
    from fastai_serving.engine.batching import encode_responses, predict_requests, prepare_requests
    from fastai_serving.engine.responses import encode_json

    def run() -> int:
        answered = 0
        for first in range(0, len(bodies), per_batch):
            outcomes = prepare_requests(served, [(b, "predict") for b in bodies[first : first + per_batch]], settings)
            results = predict_requests(served, outcomes, settings)
            for _, body in encode_responses(served, outcomes, results):
                encode_json(body)
                answered += len(body["predictions"])
        return answered

    return run


def stage_costs(served, tiles: list[bytes], instances: int, batch: int) -> list[tuple[str, float]]:
    """Each stage's CPU time per image (µs), in-process with one torch thread: the pieces of the served path."""
    import torch

    from fastai_serving.contract.bodies import read_body
    from fastai_serving.engine.batching import encode_responses, predict_requests, prepare_requests, read_instances
    from fastai_serving.engine.fast_images import image_plan
    from fastai_serving.engine.predict import decode_images
    from fastai_serving.engine.responses import encode_json
    from fastai_serving.engine.settings import HandlerSettings
    from fastai_serving.engine.tensor_images import decode_tensors, tensor_batch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = HandlerSettings()
    body = images_body(tiles[:instances])
    parsed = read_body(body, "predict")
    read_instances(served, parsed, settings)  # warm: the checks compile their patterns once
    names = [f"image {i}" for i in range(len(tiles))]
    images = decode_images(tiles, names)
    learn, plan = served.learn, image_plan(served.learn, served.device, images[0])
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    inputs = [plan.batch(chunk, served.device) for chunk in chunks]
    as_tensors = decode_tensors(tiles, names, served.device)
    tensor_chunks = [as_tensors[i : i + batch] for i in range(0, len(as_tensors), batch)]
    outcomes = prepare_requests(served, [(body, "predict")], settings)
    results = predict_requests(served, outcomes, settings)

    def per_image(call: Callable[[], object], count: int) -> float:
        return best_seconds(call, 5, time.process_time) / count * 1e6

    def forward() -> None:
        with torch.inference_mode():
            for x in inputs:
                learn.model(x)

    def encode() -> None:
        for _, answer in encode_responses(served, outcomes, results):
            encode_json(answer)

    try:
        return [
            ("shim: body check (one JSON parse of the body)", per_image(lambda: read_body(body, "predict", raw_allowed=False), instances)),
            ("worker: JSON parse of the body (a second one)", per_image(lambda: read_body(body, "predict"), instances)),
            ("worker: base64 and instance checks", per_image(lambda: read_instances(served, parsed, settings), instances)),
            ("worker: decode (PIL, RGB)", per_image(lambda: decode_images(tiles, names), len(tiles))),
            ("worker: fastai transforms + collation (test_dl)", per_image(lambda: list(learn.dls.test_dl(images, bs=batch, num_workers=0)), len(tiles))),
            ("worker: fast batch builder (same tensors)", per_image(lambda: [plan.batch(c, served.device) for c in chunks], len(tiles))),
            ("worker, --tensor-images on: decode (torchvision)", per_image(lambda: decode_tensors(tiles, names, served.device), len(tiles))),
            ("worker, --tensor-images on: batch (torch resize)", per_image(lambda: [tensor_batch(plan, c, served.device) for c in tensor_chunks], len(tiles))),
            ("worker: forward (near-free model)", per_image(forward, len(tiles))),
            ("worker: output encoding (responses + JSON)", per_image(encode, instances)),
            ("client: base64 + JSON of the request", per_image(lambda: images_body(tiles[:instances]), instances)),
        ]  # fmt: skip
    finally:
        torch.set_num_threads(threads)


# --- Served rows ---------------------------------------------------------------------------------


def process_cpu(servers: Servers) -> dict[str, float]:
    """CPU seconds (user + system) so far of each kind of server process, and of this process (the clients)."""
    seconds = dict.fromkeys([name for _, name in PROCESS_KINDS] + [CLIENTS], 0.0)
    for process in psutil.Process(servers.process.pid).children(recursive=True):
        try:
            command, times = " ".join(process.cmdline()), process.cpu_times()
        except psutil.Error:
            continue
        kind = next((name for key, name in PROCESS_KINDS if key in command), None)
        if kind is not None and GUARD not in command:
            seconds[kind] += times.user + times.system
    own = psutil.Process().cpu_times()
    seconds[CLIENTS] = own.user + own.system
    return seconds


def measured(servers: Servers, load: Callable[[], tuple]) -> tuple[Row, dict[str, float]]:
    """(the row's timing, each process kind's CPU µs per image) of one load."""
    before = process_cpu(servers)
    seconds, latencies, answered = load()
    after = process_cpu(servers)
    return (
        Row("", answered, seconds, latencies),
        {kind: (after[kind] - before[kind]) / answered * 1e6 for kind in after},
    )


def served_rows(
    store: Path, logs: Path, tiles: list[bytes], clients: int, instances: int, per_client: int, kind: str, quick: bool
) -> tuple[list[Row], dict, dict[str, float]]:
    """The rows of one archive's server (`kind`: "fast", "fastai" or "tensors"), each process's CPU per image,
    and, for the default archive, one image's p50 alone (ms) and the fronts' POST to TorchServe's CPU (µs)."""
    servers = Servers(model_store=store, log_dir=logs).start(["bench"], timeout_s=600)
    json_header = {"Content-Type": "application/json"}
    rows, costs, alone, hop = [], {}, {}, {}
    try:
        loads = {
            "P4 TorchServe direct": lambda: run_load(
                f"{servers.inference}/predictions/bench", tiles, clients, instances, per_client, json_header
            ),
            "P5 shim (REST) -> TorchServe": lambda: run_load(
                f"{servers.shim}/v1/models/bench:predict", tiles, clients, instances, per_client
            ),
            "P6 gRPC front -> TorchServe": lambda: run_grpc_load(servers.grpc, tiles, clients, instances, per_client),
            "P8 v2 binary (REST) -> TorchServe": lambda: run_v2_load(
                servers.shim, tiles, clients, instances, per_client
            ),
        }
        if kind != "fast":
            name = "P7 shim, --no-fast-images" if kind == "fastai" else "P9 shim, --tensor-images on"
            loads = {name: loads["P5 shim (REST) -> TorchServe"]}
        warm_up(loads.values(), WARM_UP_S[quick])
        for name, load in loads.items():
            row, cost = measured(servers, load)
            row.name, row.note = name, f"{clients} clients x {instances} tiles per request"
            rows.append(row)
            costs[name] = cost
        if kind == "fast":
            alone = one_image_p50(servers, tiles[0], 10 if quick else 30)
            hop = hop_cpu(servers, request_body(tiles[:instances]), 40 if quick else 120)
    finally:
        servers.stop()
    return rows, costs, alone, hop


def warm_up(loads, seconds: float) -> None:
    """Run the loads in turn for `seconds`: the JVM's JIT compiles TorchServe's hot paths, Python's caches fill."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        for load in loads:
            load()


def hop_cpu(servers: Servers, body: bytes, count: int) -> dict[str, float]:
    """CPU µs in the calling thread of one POST of `body` to TorchServe, as the fronts send it (shim/upstream_http.py)
    and as they did through urllib3's pool, the two alternated call by call against the same server (median)."""
    import urllib3

    from fastai_serving_shim.upstream_http import ConnectionPool

    headers = {"Content-Type": "application/json"}
    through_urllib3 = urllib3.PoolManager(maxsize=1, block=True, retries=False)
    lean = ConnectionPool("127.0.0.1", servers.inference_port, 1, connect_timeout_s=2.0)
    calls = {
        "urllib3's pool (before)": lambda: (
            through_urllib3.request(
                "POST", f"{servers.inference}/predictions/bench", body=body, headers=headers, timeout=60
            ).status
        ),
        "upstream_http (now)": lambda: lean.post("/predictions/bench", body, headers, 60).status,
    }
    spent: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            began = time.thread_time()
            if call() != 200:
                raise SystemExit(f"bench: TorchServe refused the hop's request ({name})")
            spent[name].append((time.thread_time() - began) * 1e6)
    lean.close()
    return {name: statistics.median(micros) for name, micros in spent.items()}


def one_image_p50(servers: Servers, tile: bytes, count: int) -> dict[str, float]:
    """p50 (ms) of one-image requests sent one at a time: TorchServe directly, the REST shim, the gRPC front."""
    import grpc

    from benchmarks.loads import predict_request
    from fastai_serving_protos import tensorflow_serving_pb2_grpc

    body, session = request_body([tile]), requests.Session()

    def p50(call: Callable[[], object]) -> float:
        call()
        times = []
        for _ in range(count):
            began = time.perf_counter()
            call()
            times.append((time.perf_counter() - began) * 1000)
        return statistics.median(times)

    def post(url: str, headers: dict) -> None:
        session.post(url, data=body, headers=headers, timeout=60).raise_for_status()

    with grpc.insecure_channel(servers.grpc) as channel:
        stub, call = tensorflow_serving_pb2_grpc.PredictionServiceStub(channel), predict_request([tile])
        return {
            "TorchServe direct": p50(lambda: post(f"{servers.inference}/predictions/bench", {"Content-Type": "application/json"})),
            "shim (REST)": p50(lambda: post(f"{servers.shim}/v1/models/bench:predict", {})),
            "gRPC front": p50(lambda: stub.Predict(call, timeout=60)),
        }  # fmt: skip


# --- The table -----------------------------------------------------------------------------------


def pipeline_rows(tmp: Path, device: str, clients: int, instances: int, quick: bool) -> None:
    """Build the near-free Learner and its archives, measure every row, print the pipeline tables."""
    import torch

    from fastai_serving.engine.learner import load_learner
    from fastai_serving.engine.predict import decode_images
    from fastai_serving.engine.settings import HandlerSettings

    count, repeat, per_client = (64, 3, 3) if quick else (256, 5, 8)
    batch = HandlerSettings().max_batch
    export = make_near_free_learner(tmp / "nearfree")
    tiles = make_tiles(count, seed=3)
    served = load_learner(export, device)
    learn = served.learn
    rows = [Row("P0 decode ceiling (all cores)", count, best_seconds(lambda: decode_ceiling(tiles, batch), repeat))]
    names = [f"image {i}" for i in range(count)]
    seconds = best_seconds(
        lambda: learn.get_preds(dl=learn.dls.test_dl(decode_images(tiles, names), bs=batch, num_workers=0)), repeat
    )
    rows.append(Row("P1 fastai get_preds", count, seconds, note="decode + test_dl + get_preds, in-process"))
    bodies = [images_body(tiles[i : i + instances]) for i in range(0, count, instances)]
    for code, fast in (("P2", False), ("P3", True)):
        run = core_batches(served, bodies, HandlerSettings(fast_images=fast), per_batch=clients)
        label = "fast path" if fast else "fastai's pipeline"
        rows.append(
            Row(f"{code} core batch path, {label}", count, best_seconds(run, repeat), note="in-process, JSON bodies")
        )
    floor = floor_rows(tiles[: 2 * batch], MODEL_SIZE, batch, repeat=repeat)
    stages = stage_costs(served, tiles, instances, batch)
    served_costs, alone, hop = {}, {}, {}
    for kind, flags in (("fast", []), ("tensors", ["--tensor-images", "on"]), ("fastai", ["--no-fast-images"])):
        store = tmp / f"store-nearfree-{kind}"
        made = make_archive("bench", export, store, "--torch-threads", "0", *flags)
        if made.returncode != 0:
            raise SystemExit(f"bench: make-archive nearfree {' '.join(flags)} failed:\n{made.stderr}")
        served_table, costs, times, hop_micros = served_rows(
            store, tmp / f"logs-nearfree-{kind}", tiles, clients, instances, per_client, kind, quick
        )
        rows += served_table
        served_costs |= costs
        alone |= times
        hop |= hop_micros
    rows.sort(key=lambda row: row.name)
    print_pipeline(rows, floor, stages, served_costs, alone, hop, torch.get_num_threads())


def print_pipeline(
    rows: list[Row],
    floor: list[FloorRow],
    stages: list[tuple[str, float]],
    served_costs: dict[str, dict[str, float]],
    alone: dict[str, float],
    hop: dict[str, float],
    threads: int,
) -> None:
    from fastai_serving.defaults import MAX_BATCH_DELAY_MS

    ceiling = rows[0].images_per_s
    get_preds = next(r for r in rows if r.name.startswith("P1")).images_per_s
    load = f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} (other sessions share this machine)"
    print("\nnear-free model (pooling + linear), 256x256 JPEG tiles at 224², the pipeline around it\n")
    print(f"| {'row':<37} | {'images/s':>8} | {'p50 ms':>7} | {'÷ decode ceiling':>16} | {'÷ get_preds':>11} |")
    print(f"|{'-' * 39}|{'-' * 10}|{'-' * 9}|{'-' * 18}|{'-' * 13}|")
    for row in rows:
        print(
            f"| {row.name:<37} | {row.images_per_s:8.0f} | {row.percentile(0.5):7.1f} "
            f"| {row.images_per_s / ceiling:16.2f} | {row.images_per_s / get_preds:11.2f} |"
        )
    print_floor(floor)
    lowest, exact = the_floor(floor), min((row for row in floor if row.exact), key=lambda row: row.micros)
    print(f"\n  the floor: {lowest.micros:.0f} µs ({lowest.name}); with fastai's own pixels: {exact.micros:.0f} µs")
    print("\nCPU per image of each stage, in-process (one torch thread; µs)\n")
    print(f"| {'stage':<56} | {'µs/image':>8} |\n|{'-' * 58}|{'-' * 10}|")
    for stage, micros in stages:
        print(f"| {stage:<56} | {micros:8.0f} |")
    print("\nCPU per image of each process while serving (µs, user + system, psutil, after a warm-up; × the floor)\n")
    print("| process | " + " | ".join(served_costs) + " |")
    print("|---|" + "---|" * len(served_costs))
    kinds = [kind for kind in next(iter(served_costs.values())) if kind != CLIENTS]
    for kind in kinds:
        cells = [f"{costs[kind]:.0f} ({costs[kind] / lowest.micros:.1f}×)" for costs in served_costs.values()]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    totals = {name: sum(costs[kind] for kind in kinds) for name, costs in served_costs.items()}
    print("| **serving, all processes** | " + " | ".join(f"**{t:.0f} ({t / lowest.micros:.1f}×)**" for t in totals.values()) + " |")  # fmt: skip
    print(
        f"| {CLIENTS}, not serving | " + " | ".join(f"{costs[CLIENTS]:.0f}" for costs in served_costs.values()) + " |"
    )
    print(f"\n  in-process torch threads {threads}; cores {psutil.cpu_count()}; {load}")
    wall = {r.name: r for r in rows}
    for name in ("P5 shim (REST) -> TorchServe", "P6 gRPC front -> TorchServe", "P8 v2 binary (REST) -> TorchServe"):
        if name in wall:
            print(
                f"  target: {name.split()[0]} ÷ decode ceiling = {wall[name].images_per_s / ceiling:.2f} (wanted >= 0.7)"
            )
    for name, total in totals.items():
        print(f"  target: {name.split()[0]} CPU per image, all serving processes ÷ floor = {total / lowest.micros:.1f} (wanted <= 2)")  # fmt: skip
    for path, p50 in alone.items():
        print(
            f"  one image alone, {path}: p50 {p50:.1f} ms, {p50 - MAX_BATCH_DELAY_MS:.1f} ms beyond the "
            f"{MAX_BATCH_DELAY_MS} ms batch delay (wanted <= 5 through the shim)"
        )
    if hop:
        each = ", ".join(f"{name} {micros:.0f}" for name, micros in hop.items())
        print(f"  the fronts' POST of one request to TorchServe, CPU µs in the calling thread (alternated): {each}")
