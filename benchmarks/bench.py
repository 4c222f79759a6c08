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
  6a, 6b           row 6 with --no-channels-last (fastai's plain fp32) and with --precision bf16
  7 predict-batch  scripts/predict-batch through the shim: the same tiles as files in a folder, read, sent
                   CLIENTS requests in flight of INSTANCES tiles each, every answer committed to a JSONL file

Each row says the precision it ran in: a served row's is what its worker reports (a CPU without
fast bfloat16 serves a bf16 archive in fp32), and each row is divided by its own precision's ceiling.
Load for rows 4-6: CLIENTS concurrent clients, each sending requests of INSTANCES base64 tiles.
Ratios, not absolute times, are what compare across machines. Not a test: run `make bench`.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from harness.servers import ROOT, Servers, free_port, make_archive
from harness.workload import make_learner, make_tiles

BF16, FP32 = "bf16", "fp32"


@dataclass
class Row:
    name: str
    images: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    note: str = ""
    precision: str = FP32  # what it ran in: a served row's, as its worker reports it

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PeakRss:
    """Samples the summed RSS of some processes and their children until stopped."""

    def __init__(self, pids: list[int]) -> None:
        self.pids, self.peak, self._stop = pids, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in self.pids:
                try:
                    parent = psutil.Process(pid)
                    total += sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


# --- In-process rows ------------------------------------------------------------------------


def decoded_images(tiles: list[bytes]) -> list:
    from fastai_serving.images import decode_image

    return [decode_image(tile) for tile in tiles]


def timed_forward(served, tiles: list[bytes], batch: int) -> tuple[float, float]:
    """(seconds, peak RSS MB) of the model's forward passes over already-decoded, normalised batches."""
    import torch

    from fastai_serving.predict import precision_context

    learn = served.learn
    dl = learn.dls.test_dl(decoded_images(tiles), bs=batch, num_workers=0)
    batches = [xb[0] for xb in dl]  # decoded, resized, normalised: only the forward pass is timed
    with PeakRss([psutil.Process().pid]) as rss, torch.inference_mode(), precision_context(served):
        learn.model(batches[0])  # warm-up
        start = time.perf_counter()
        for xb in batches:
            learn.model(xb)
        seconds = time.perf_counter() - start
    return seconds, rss.peak_mb


def row_ceiling_fp32(export_path: Path, device: str, tiles: list[bytes], batch: int) -> Row:
    """The fastest forward an fp32 archive can have: weights channels-last or not, whichever ran faster here."""
    from fastai_serving.learner import load_learner

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
    from fastai_serving.learner import load_learner

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

    learn, latencies = served.learn, []
    with PeakRss([psutil.Process().pid]) as rss, learn.no_bar():
        start = time.perf_counter()
        for tile in tiles:
            began = time.perf_counter()
            learn.predict(PILImage.create(tile))
            latencies.append((time.perf_counter() - began) * 1000)
        seconds = time.perf_counter() - start
    return Row("3 learn.predict loop", len(tiles), seconds, latencies, rss.peak_mb, "one image at a time")


# --- HTTP rows ----------------------------------------------------------------------------------


def request_body(tiles: list[bytes]) -> bytes:
    return json.dumps({"instances": [{"image_bytes": {"b64": base64.b64encode(t).decode()}} for t in tiles]}).encode()


def run_load(
    url: str, tiles: list[bytes], clients: int, instances: int, requests_per_client: int, headers=None
) -> tuple:
    """CLIENTS threads each POST their requests; returns (seconds, latencies in ms, images answered)."""
    bodies = [request_body([tiles[(i * instances + k) % len(tiles)] for k in range(instances)]) for i in range(clients)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(index: int) -> int:
        session = requests.Session()
        answered = 0
        for _ in range(requests_per_client):
            began = time.perf_counter()
            response = session.post(url, data=bodies[index], headers=headers or {}, timeout=600)
            elapsed = (time.perf_counter() - began) * 1000
            response.raise_for_status()
            answered += len(response.json()["predictions"])
            with lock:
                latencies.append(elapsed)
        return answered

    client(0)  # warm-up: first request loads lazy state everywhere
    latencies.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answered = sum(pool.map(client, range(clients)))
    return time.perf_counter() - start, latencies, answered


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


VARIANT_ROWS = {"contiguous": "6a shim, --no-channels-last", "bf16": "6b shim, --precision bf16"}


def served_precision(servers: Servers) -> str:
    """The precision the archive's worker runs in, as its metadata reports it."""
    response = requests.get(f"{servers.shim}/v1/models/bench/metadata", timeout=60)
    response.raise_for_status()
    return response.json()["metadata"]["fastai"]["precision"]


def rows_served(servers: Servers, tiles, clients, instances, per_client, key: str) -> list[Row]:
    """Rows 5 and 6 for the default archive; one shim row for a variant archive."""
    pids, rows, precision = [servers.process.pid], [], served_precision(servers)
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
    with PeakRss(pids) as rss:
        seconds, latencies, answered = run_load(
            f"{servers.shim}/analyze:predict", tiles, clients, instances, per_client
        )
    name = VARIANT_ROWS.get(key, "6 shim -> TorchServe")
    rows.append(Row(name, answered, seconds, latencies, rss.peak_mb, precision=precision))
    return rows


def row_predict_batch(servers: Servers, tiles, clients, instances, per_client, folder: Path) -> Row:
    """Row 7: the batch client users run, on as many images as row 6 sends, from files, into a JSONL file."""
    precision = served_precision(servers)
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


def one_image_overhead(servers: Servers, tile: bytes, count: int) -> tuple[float, float]:
    """p50 of one-image requests, TorchServe direct and through the shim, sent one at a time."""
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
    return direct, shim


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
    """The ceiling a row is held to: the bf16 ceiling for a row that ran in bf16, else the fp32 one."""
    return next(r for r in rows if r.name.startswith("1b" if row.precision == BF16 else "1 "))


def print_targets(rows: list[Row], overhead: tuple[float, float], answers: dict[str, list[list[float]]]) -> None:
    """The targets, as ratios from this run."""
    speed = {row.name.split()[0]: row.images_per_s for row in rows}
    fp32, bf16 = answers["contiguous"], answers["bf16"]
    agree = sum(
        max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        for a, b in zip(fp32, bf16, strict=True)
    )
    largest = max(abs(x - y) for a, b in zip(fp32, bf16, strict=True) for x, y in zip(a, b, strict=True))
    fp32_served = [row for row in rows if row.name[0] in "56" and row.precision == FP32]
    bf16_row = next(row for row in rows if row.name.startswith("6b"))
    checks = [
        ("row 6 / row 2 (fastai get_preds)", speed["6"] / speed["2"], ">= 0.9"),
        ("row 6 / row 1 (fp32 ceiling)", speed["6"] / speed["1"], ">= 0.8"),
        (
            "fastest fp32 served row / row 1",
            max(r.images_per_s for r in fp32_served) / speed["1"],
            "<= 1 (within noise)",
        ),
        ("row 6b / its ceiling", bf16_row.images_per_s / ceiling_of(bf16_row, rows).images_per_s, ">= 0.8"),
        ("row 6 / row 3 (predict loop)", speed["6"] / speed["3"], "> 1"),
        ("row 7 predict-batch / row 6 shim", speed["7"] / speed["6"], ">= 0.95"),
        ("row 6 / row 4 (original method)", speed["6"] / speed["4"], "> 1"),
        ("shim's added p50, one image (ms)", overhead[1] - overhead[0], "<= 2"),
        (f"row 6b ({bf16_row.precision}) / row 6a plain fp32", speed["6b"] / speed["6a"], ">= 1.8 where bf16 is fast"),
        ("row 6b / row 6 fp32 channels-last", speed["6b"] / speed["6"], "(default is already faster)"),
        ("row 6 channels-last / row 6a plain fp32", speed["6"] / speed["6a"], "(default's gain)"),
        ("bf16 argmax agreement with fp32", agree / len(fp32), ">= 0.99"),
        (
            "channels-last largest probability difference",
            max(abs(x - y) for a, b in zip(fp32, answers["default"], strict=True) for x, y in zip(a, b, strict=True)),
            "(stated)",
        ),
        ("bf16 largest probability difference", largest, "(stated)"),
    ]
    print("\n| target | this run | wanted |\n|---|---|---|")
    for name, value, wanted in checks:
        print(f"| {name} | {value:.3f} | {wanted} |")


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
    args = parser.parse_args(argv)
    images = 32 if args.quick else 128
    per_client = 2 if args.quick else 6
    batch = 16

    from fastai_serving.learner import load_learner

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        tmp = Path(tmp)
        export_path = make_learner(tmp / "learner")
        tiles = make_tiles(images)
        rows = [
            row_ceiling_fp32(export_path, args.device, tiles, batch),
            row_ceiling_bf16(export_path, args.device, tiles, batch),
        ]
        plain = load_learner(export_path, args.device, channels_last=False)  # fastai as it loads a Learner
        rows.append(row_get_preds(plain, tiles, batch))
        rows.append(row_predict_loop(plain, tiles[: max(8, images // 4)]))
        del plain
        rows.append(row_original(export_path, tiles, args.clients, args.instances, per_client))
        overhead, answers = None, {}
        # The default archive (fp32, channels-last) gives rows 5 and 6; two variants run through the shim too.
        for key, flags in [("default", []), ("contiguous", ["--no-channels-last"]), ("bf16", ["--precision", "bf16"])]:
            store = tmp / f"store-{key}"
            made = make_archive("bench", export_path, store, *flags)
            if made.returncode != 0:
                raise SystemExit(f"bench: make-archive {' '.join(flags)} failed:\n{made.stderr}")
            servers = Servers(model_store=store, log_dir=tmp / f"logs-{key}").start(["bench"])
            try:
                rows += rows_served(servers, tiles, args.clients, args.instances, per_client, key)
                answers[key] = served_probabilities(servers, tiles)
                if key == "default":
                    overhead = one_image_overhead(servers, tiles[0], 10 if args.quick else 30)
                    batch_client = row_predict_batch(
                        servers, tiles, args.clients, args.instances, per_client, tmp / "predict-batch"
                    )
            finally:
                servers.stop()
        rows.append(batch_client)
        print_table(rows, machine_description(args.device))
        print(
            f"\nload: {args.clients} clients x {args.instances} instances per request; "
            f"one-image p50: TorchServe {overhead[0]:.1f} ms, shim {overhead[1]:.1f} ms "
            f"(shim adds {overhead[1] - overhead[0]:.1f} ms)"
        )
        print_targets(rows, overhead, answers)


if __name__ == "__main__":
    main()
