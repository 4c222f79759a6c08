"""Tracing's cost: the shim's row with OpenTelemetry off, on for every request, and on for 1 %, in one run.

Three `scripts/serve`s of one near-free archive (pooling + linear: serving's own cost is the whole cost, so what
tracing adds shows), started side by side: one with no OTEL_* variable (tracing off: nothing of OpenTelemetry is
imported), two exporting to a real OTLP/HTTP endpoint in this process (`harness.otlp_receiver`), one sampling
every trace (`OTEL_TRACES_SAMPLER=parentbased_always_on`), one 1 % (`parentbased_traceidratio`, 0.01). The same
REST load (8 clients x 8 tiles a request) goes to each in turns, round after round, so a drifting machine falls
on all three alike; each row: images per second, p50, and CPU per image over every serving process. Not a test:
`python -m benchmarks.bench --only tracing` (`--quick` for a short run).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.loads import Row, run_load
from benchmarks.pipeline import CLIENTS, measured, warm_up
from harness.otlp_receiver import OtlpReceiver
from harness.servers import Servers, make_archive
from harness.workload import make_near_free_learner, make_tiles

SAMPLING = {
    "tracing off": {},
    "tracing on, every request": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "tracing on, 1 %": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}


def tracing_rows(tmp: Path, clients: int, instances: int, quick: bool) -> None:
    """Serve the near-free archive three ways, measure the shim's row of each in turns, print the table."""
    export = make_near_free_learner(tmp / "nearfree")
    store = tmp / "store-tracing"
    made = make_archive("bench", export, store, "--torch-threads", "0")
    if made.returncode != 0:
        raise SystemExit(f"bench: make-archive nearfree failed:\n{made.stderr}")
    tiles = make_tiles(64, seed=3)
    rounds, per_client = (2, 3) if quick else (4, 6)
    receiver = OtlpReceiver()
    servers: dict[str, Servers] = {}
    try:
        for name, sampling in SAMPLING.items():
            environment = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **sampling} if sampling else {}
            logs = tmp / f"logs-{name.replace(' ', '-').replace(',', '').replace('%', 'pct')}"
            servers[name] = Servers(model_store=store, log_dir=logs, environment=environment).start(["bench"])
        loads = {
            name: (running, lambda running=running: run_load(
                f"{running.shim}/v1/models/bench:predict", tiles, clients, instances, per_client
            ))
            for name, running in servers.items()
        }  # fmt: skip
        warm_up([load for _, load in loads.values()], 10.0 if quick else 30.0)
        totals = {name: [Row(name), 0.0] for name in loads}
        for _ in range(rounds):
            for name, (running, load) in loads.items():
                row, cost = measured(running, load)
                total = totals[name]
                total[0].images += row.images
                total[0].seconds += row.seconds
                total[0].latencies_ms += row.latencies_ms
                total[1] += sum(us for kind, us in cost.items() if kind != CLIENTS) * row.images
        print_tracing(totals, len(receiver.spans()), clients, instances, rounds)
    finally:
        for running in servers.values():
            running.stop()
        receiver.stop()


def print_tracing(totals: dict[str, list], spans: int, clients: int, instances: int, rounds: int) -> None:
    off = totals["tracing off"]
    print(f"\nOpenTelemetry off and on, the REST shim with a near-free model ({clients} clients x {instances} tiles "
          f"a request, {rounds} rounds in turns)\n")  # fmt: skip
    print(f"| {'row':<26} | {'images/s':>8} | {'p50 ms':>7} | {'CPU µs/image':>12} | {'÷ off':>6} | {'CPU ÷ off':>9} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 9}|{'-' * 14}|{'-' * 8}|{'-' * 11}|")
    for name, (row, cpu_us_images) in totals.items():
        cpu = cpu_us_images / row.images
        print(
            f"| {name:<26} | {row.images_per_s:8.0f} | {row.percentile(0.5):7.1f} | {cpu:12.0f} "
            f"| {row.images_per_s / off[0].images_per_s:6.2f} | {cpu / (off[1] / off[0].images):9.2f} |"
        )
    print(f"\n  spans the OTLP endpoint received: {spans}")
