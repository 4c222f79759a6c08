"""predict-batch against a real server that refuses: scripts/serve with a short queue target (its fronts refuse, 429
with Retry-After, a request without a deadline that would wait longer than that), and predict-batch with its
default flags, adapting, one image a request (`--batch 1`): the controller takes several steps in one run, so its
progress lines show the sawtooth (at 8 a request, a slow run could end one step after its first back-off).

A server of its own: the target is set at serve time, and the session's shared server must not refuse other
tests' requests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from harness import PROJECT_ROOT
from harness.servers import Servers, archive_here

pytestmark = pytest.mark.e2e

PREDICT_BATCH = str(PROJECT_ROOT / "scripts" / "predict-batch")
# The fronts' target wait in queue for requests without a deadline (predict-batch sends none): a microsecond, so
# that any instance ahead of a request is over it, on any machine however fast: predict-batch is refused whenever it
# has two or more requests in flight, and never at one, so it must step down and can always go on. (A target in
# tens of milliseconds was a race with the machine's speed: on a fast one the controller's own back-off from
# rising latency kept the queue under it, and the server never refused.)
QUEUE_TARGET = {"FASTAI_SERVING_QUEUE_TARGET_S": "0.000001", "FASTAI_SERVING_QUEUE_INTERVAL_S": "0"}
IMAGES_EVERY = 10  # one demo image in this many
CONCURRENCY = re.compile(r"concurrency (\d+)")


def stepped_down_then_up(limits: list[int]) -> bool:
    """Whether some limit is below one before it and below one after it."""
    return any(max(limits[:j]) > limits[j] < max(limits[j:]) for j in range(1, len(limits) - 1))


@pytest.fixture(scope="module")
def refusing(tmp_path_factory, demo_model):
    store = tmp_path_factory.mktemp("refusing-store")
    archive_here("digits", demo_model / "export.pkl", store)
    servers = Servers(
        model_store=store,
        log_dir=tmp_path_factory.mktemp("refusing-logs"),
        default_model="digits",
        environment=QUEUE_TARGET,
    )
    servers.start(["digits"])
    yield servers
    servers.stop(wait=False)


def test_predict_batch_backs_off_from_a_refusing_server_recovers_and_ends_with_every_image_answered_once(
    refusing, demo_model, tmp_path
):
    images = tmp_path / "images"  # a few hundred of the demo's images: enough for the controller's steps
    for path in sorted((demo_model / "images").rglob("*.png"))[::IMAGES_EVERY]:
        (images / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, images / path.parent.name / path.name)
    keys = sorted(str(path.relative_to(images)) for path in images.rglob("*.png"))
    out = tmp_path / "results.jsonl"
    run = subprocess.run(
        [PREDICT_BATCH, images, "--server", refusing.shim, "--out", out, "--progress-every", "0.1", "--batch", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{len(keys)} images, done {len(keys)}, skipped 0 (done before), failed 0," in run.stderr
    refused = re.search(r"the server refused (\d+) requests for a moment, each sent again after its hint", run.stderr)
    assert refused and int(refused.group(1)) > 0, run.stderr  # it went past what the server admits, and was told
    written = [json.loads(line)["key"] for line in out.read_text().splitlines()]
    assert sorted(written) == keys  # every refused request answered on a later try: each image once
    # The progress lines' concurrency: stepped down after a refusal, and up again after it (the sawtooth of AIMD).
    limits = [int(value) for value in CONCURRENCY.findall(run.stderr.split("predict-batch: finished")[0])]
    assert stepped_down_then_up(limits), limits
    assert max(limits) < 128  # never near the upper bound: the refusals held it
