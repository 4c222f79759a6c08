"""Where each request's time went under a known load, from the server's own metrics: the figure of
docs/observability.md (`make stages`).

Serves the model store with scripts/serve on free ports, sends `--requests` REST predictions of `--instances`
images each from `--clients` threads at once, then reads GET /metrics: each stage's seconds per instance
(decode, transforms, forward, encode), each request's wait for its batch, the batches' mean size, and the
fronts' time per request. Prints the table and draws it.
"""

from __future__ import annotations

import argparse
import base64
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness import PROJECT_ROOT
from harness.servers import Servers

STAGES = ("decode", "transforms", "forward", "encode")


def scrape(url: str, model: str) -> dict[tuple[str, tuple], float]:
    """Every sample of `model` in GET /metrics, summed over its other labels but the stage: (name, stage) -> value."""
    samples: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.labels.get("model") == model and "le" not in sample.labels:
                key = (sample.name, (sample.labels.get("stage", ""),))
                samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def measure(url: str, model: str, images: list[bytes], clients: int, count: int, instances: int) -> dict[str, float]:
    body = {"instances": [{"b64": base64.b64encode(images[i % len(images)]).decode()} for i in range(instances)]}

    def one(_: int) -> int:
        return requests.post(f"{url}/v1/models/{model}:predict", json=body, timeout=120).status_code

    before = scrape(url, model)
    with ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(one, range(count)))
    assert statuses == [200] * count, f"answers {sorted(set(statuses))}"
    after = scrape(url, model)

    def grown(name: str, stage: str = "") -> float:
        return after.get((name, (stage,)), 0.0) - before.get((name, (stage,)), 0.0)

    per_instance = {
        stage: grown("fastai_serving_stage_duration_seconds_sum", stage)
        / grown("fastai_serving_stage_duration_seconds_count", stage)
        for stage in STAGES
    }
    return {
        **{f"{stage} (per instance)": seconds for stage, seconds in per_instance.items()},
        "queue wait (per request)": grown("fastai_serving_queue_wait_seconds_sum")
        / grown("fastai_serving_queue_wait_seconds_count"),
        "at the front (per request)": grown("fastai_serving_request_duration_seconds_sum")
        / grown("fastai_serving_request_duration_seconds_count"),
        "requests per batch": grown("fastai_serving_batch_requests_sum") / grown("fastai_serving_batch_requests_count"),
        "instances per batch": grown("fastai_serving_batch_instances_sum")
        / grown("fastai_serving_batch_instances_count"),
    }


def draw(figures: dict[str, float], title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (stages_axis, request_axis) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(1, 1.2))
    left = 0.0
    for stage in STAGES:
        ms = figures[f"{stage} (per instance)"] * 1000
        stages_axis.barh(["per instance"], [ms], left=left, label=f"{stage} {ms:.1f} ms")
        left += ms
    stages_axis.set_xlabel("ms (the handler's stages, each instance's share)")
    stages_axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=2, fontsize=8)
    names = ["queue wait (per request)", "at the front (per request)"]
    values = [figures[name] * 1000 for name in names]
    request_axis.barh(["waited for its batch", "front to answer"], values, color=["tab:gray", "tab:purple"])
    for y, value in enumerate(values):
        request_axis.text(value, y, f" {value:.0f} ms", va="center", fontsize=8)
    request_axis.set_xlabel("ms per request")
    batch = f"{figures['requests per batch']:.1f} requests, {figures['instances per batch']:.1f} instances per batch"
    fig.suptitle(f"{title}\n{batch}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make stages", description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=PROJECT_ROOT / "model_store")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--images", type=Path, default=PROJECT_ROOT / "build" / "demo" / "samples")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "images" / "stages.png")
    args = parser.parse_args()
    images = [path.read_bytes() for path in sorted(args.images.glob("*.png"))]
    with tempfile.TemporaryDirectory(prefix="fastai-serving-stages-") as logs:
        servers = Servers(model_store=args.store, log_dir=Path(logs), default_model=args.model)
        servers.start([args.model])
        try:
            measure(servers.shim, args.model, images, args.clients, args.clients, args.instances)  # warm
            figures = measure(servers.shim, args.model, images, args.clients, args.requests, args.instances)
        finally:
            servers.stop()
    for name, value in figures.items():
        print(f"{name:30} {value * 1000:10.2f} ms" if "batch" not in name else f"{name:30} {value:10.2f}")
    title = (
        f"{args.model}: {args.requests} requests of {args.instances} images from {args.clients} REST clients at once"
    )
    draw(figures, title, args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
