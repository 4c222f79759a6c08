"""TorchServe handler for exported fastai Learners: the thin adapter onto `fastai_serving`.

TorchServe calls `initialize(context)` once per worker, then `handle(data, context)` for
every batch: `data` holds one entry per client request. The four steps of TorchServe's
handler contract map onto the engine-independent core:

    preprocess   read each request's body and its instances: decode images, check rows and texts (fastai_serving.engine.batching)
    inference    one batched forward pass for all of them (fastai_serving.engine.predict, .tabular, .text)
    postprocess  one JSON body per request, a failed one with its kind (fastai_serving.contract.upstream)

Around them, each batch's time per stage, its size and each request's wait for it go into the handler's
metrics (fastai_serving.stage_metrics), which the shim's /metrics serves, and, when traces are on, into
spans under each request's front (fastai_serving.stage_traces).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from fastai_serving import defaults, stage_metrics, stage_traces, tracing
from fastai_serving.compiled.aot import load_package
from fastai_serving.compiled.worker import compile_learner
from fastai_serving.contract.deadlines import deadline_of, expired
from fastai_serving.contract.errors import HTTP_STATUS, Failure, ModelError, ServingError
from fastai_serving.contract.request_ids import well_formed
from fastai_serving.contract.upstream import (
    BATCH_INSTANCES_HEADER,
    BATCH_SECONDS_HEADER,
    DEADLINE_HEADER,
    FAILURE_HEADER,
    FORWARD_INSTANCES_HEADER,
    QUEUE_SECONDS_HEADER,
    REQUEST_ID_HEADER,
    SENT_AT_HEADER,
    TASK_HEADER,
    VERB_HEADER,
    VERSION_HEADER,
)
from fastai_serving.contract.vocabulary import COLLAB, PREDICT, TABULAR
from fastai_serving.engine.batching import encode_responses, predict_requests, prepare_requests
from fastai_serving.engine.learner import ServedLearner, load_learner
from fastai_serving.engine.responses import encode_json
from fastai_serving.engine.settings import HandlerSettings
from fastai_serving.engine.stages import BatchTimes, ForwardClock

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
MAX_QUEUE_ENV = "FASTAI_SERVING_MAX_QUEUE_S"  # set where serve runs: every model's longest wait in the queue


class FastaiHandler:
    """One per TorchServe worker: holds the Learner and answers batches."""

    def __init__(self) -> None:
        self.served: ServedLearner | None = None
        self.settings = HandlerSettings()
        self.context: Any = None
        self.version = ""
        self.initialized = False
        self.model_name = ""  # as TorchServe registered it: the metrics' model label
        self.forward_clock: ForwardClock | None = None
        self.max_queue_s = defaults.MAX_QUEUE_S
        self.batch_seconds, self.batch_instances = 0.0, 0  # the last batch's
        self.request_ids: list[str] = []  # the last batch's requests' ids ("-": none sent), for its log lines
        self.queue_seconds: list[float | None] = []  # and how long each waited from its sending to the batch's start

    def initialize(self, context: Any) -> None:
        """Load the archive's Learner once, on the device TorchServe gives this worker."""
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        model_config = context.model_yaml_config or {}
        self.settings = HandlerSettings.from_model_config(model_config)
        self.max_queue_s = max_queue_s(self.settings)
        torch.set_num_threads(self._torch_threads(model_config))
        serialized_file = context.manifest["model"]["serializedFile"]
        self.version = str(context.manifest["model"].get("modelVersion", ""))
        utils_dir = model_dir / self.settings.utils_dir if self.settings.utils_dir else None
        self.served = load_learner(
            model_dir / serialized_file,
            self._device(properties),
            utils_dir,
            self.settings.precision,
            channels_last=self.settings.channels_last,
            max_text_chars=self.settings.max_text_chars,
        )
        if self.settings.kind and self.settings.kind != self.served.kind:
            raise ModelError(
                f"make-archive found a {self.settings.kind} Learner in {serialized_file}, this worker a "
                f"{self.served.kind} one: rebuild the archive with this version of fastai-serving"
            )
        if self.settings.aot_dir:  # compiled at archive time: loaded, never compiled here
            self.served.compile_report = load_package(
                self.served, model_dir / self.settings.aot_dir, self.settings.max_batch
            )
        elif self.settings.compile:  # before the worker says it is ready: no request ever waits for a compile
            self.served.compile_report = compile_learner(self.served, self.settings.max_batch)
        self.model_name = str(getattr(context, "model_name", "") or "")
        self.forward_clock = ForwardClock(self.served.learn.model, self.served.device)  # the model as it will serve
        self.initialized = True
        logger.info(
            "fastai-serving loaded %s: kind=%s task=%s classes=%d device=%s precision=%s threads=%d",
            serialized_file,
            self.served.kind,
            self.served.task,
            len(self.served.classes),
            self.served.device,
            self.served.precision,
            torch.get_num_threads(),
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """Answer one TorchServe batch: one response body per request, statuses set per request."""
        self.context = context
        if _header(context, 0, "describe") == "True":
            return [json.dumps(self.served.describe()).encode()]
        with stage_metrics.running(self.model_name, len(data)):
            started = time.time_ns()
            outcomes = self.preprocess(data)
            decoded = time.time_ns()
            self.forward_clock.take()
            results = self.inference(outcomes)
            inferred = time.time_ns()
            self.batch_seconds = (inferred - started) / 1e9
            bodies = self.postprocess(outcomes, results)
        times = BatchTimes(started, decoded, inferred, time.time_ns(), int(self.forward_clock.take() * 1e9))
        stage_metrics.batch_answered(self.model_name, self.queue_seconds, self.batch_instances, times.stages())
        if tracing.ON:
            headers = [context.get_all_request_header(idx) or {} for idx in range(len(data))]
            stage_traces.trace_batch(self.model_name, headers, self.request_ids, self.queue_seconds, times,
                                     self.batch_instances)  # fmt: skip
        return bodies

    def preprocess(self, data: list[dict[str, Any]]) -> list[Any]:
        """Read each request's body and its instances (bad ones stand in for their request); a request whose
        deadline passed while it waited is answered without being read."""
        now = time.time()
        bodies = []
        self.request_ids = [request_id_of(self.context, idx) for idx in range(len(data))]
        self.queue_seconds = [
            queue_seconds(_header(self.context, idx, SENT_AT_HEADER), now) for idx in range(len(data))
        ]
        for idx, row in enumerate(data):
            deadline = deadline_of(
                _header(self.context, idx, SENT_AT_HEADER), _header(self.context, idx, DEADLINE_HEADER), self.max_queue_s
            )  # fmt: skip
            verb = (_header(self.context, idx, VERB_HEADER) or PREDICT).lower()
            bodies.append(expired(deadline, now) or (row.get("body", row.get("data")), verb))
        return prepare_requests(self.served, bodies, self.settings)

    def inference(self, outcomes: list[Any]) -> list[Any]:
        """One forward pass for every instance in the batch, split back per request."""
        results = predict_requests(self.served, outcomes, self.settings)
        self.batch_instances = sum(len(r) for r in results if not isinstance(r, Exception))
        failed = sum(isinstance(r, Exception) for r in results)
        late = sum(isinstance(r, ServingError) and r.failure is Failure.TIMEOUT for r in results)
        # One line per batch: how many client requests shared it, how many were past their deadline (tests read it),
        # and the requests' ids.
        logger.info(
            "fastai-serving batch: requests=%d instances=%d failed=%d expired=%d request_ids=%s",
            len(outcomes), self.batch_instances, failed, late, ",".join(self.request_ids),
        )  # fmt: skip
        return results

    def postprocess(self, outcomes: list[Any], results: list[Any]) -> list[bytes]:
        """A compact JSON body per request; a failed request gets its own 4xx/5xx status."""
        bodies = []
        for idx, (failure, body) in enumerate(encode_responses(self.served, outcomes, results)):
            if failure is not None:  # the kind for the fronts, and a status TorchServe can carry
                self.context.set_response_status(HTTP_STATUS[failure], reason_phrase(body["error"]), idx)
                self.context.set_response_header(idx, FAILURE_HEADER, failure.value)
                logger.info("fastai-serving request %s failed (%s): %s", self._request_id(idx), failure.value,
                            reason_phrase(body["error"]))  # fmt: skip
            if idx < len(self.queue_seconds) and self.queue_seconds[idx] is not None:
                self.context.set_response_header(idx, QUEUE_SECONDS_HEADER, f"{self.queue_seconds[idx]:.6f}")
            self.context.set_response_content_type(idx, JSON_CONTENT_TYPE)
            # The gRPC front names the version that answered (TF Serving's model_spec.version) and the outputs.
            self.context.set_response_header(idx, VERSION_HEADER, self.version)
            self.context.set_response_header(idx, TASK_HEADER, self.served.task)
            # The fronts' admission: how long this worker takes per instance.
            self.context.set_response_header(idx, BATCH_SECONDS_HEADER, f"{self.batch_seconds:.6f}")
            self.context.set_response_header(idx, BATCH_INSTANCES_HEADER, str(self.batch_instances))
            self.context.set_response_header(idx, FORWARD_INSTANCES_HEADER, str(self._forward_instances()))
            bodies.append(encode_json(body))
        return bodies

    def _request_id(self, idx: int) -> str:
        return self.request_ids[idx] if idx < len(self.request_ids) else "-"

    def _forward_instances(self) -> int:
        """Instances one forward pass takes: rows for tabular and collab Learners, else images or texts."""
        return self.settings.max_row_batch if self.served.kind in (TABULAR, COLLAB) else self.settings.max_batch

    def _device(self, properties: dict[str, Any]) -> torch.device:
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            return torch.device(f"cuda:{gpu_id}")
        return torch.device("cpu")

    def _torch_threads(self, model_config: dict[str, Any]) -> int:
        """Cores ÷ workers: more threads than cores across workers collapses CPU throughput."""
        if self.settings.torch_threads > 0:
            return self.settings.torch_threads
        workers = int(model_config.get("minWorkers") or defaults.MIN_WORKERS)
        return max(1, (os.cpu_count() or 1) // max(1, workers))


def max_queue_s(settings: HandlerSettings) -> float:
    """The longest a request without a deadline of its own may wait in the queue: the archive's, unless serve's
    environment says otherwise (MAX_QUEUE_ENV, for every model it serves)."""
    override = float(os.environ.get(MAX_QUEUE_ENV, "").strip() or 0)
    return override if override > 0 else settings.max_queue_s


def reason_phrase(message: str) -> str:
    """The message as an HTTP reason phrase: ASCII only.

    TorchServe 0.12 frames a reason phrase by its length in characters but sends its UTF-8
    bytes, so one non-ASCII character (a client's own key or signature name, quoted back)
    breaks the frame and kills the worker, failing every request in its batch. The body keeps
    the message as it is.
    """
    return message.encode("ascii", "backslashreplace").decode("ascii")


def request_id_of(context: Any, idx: int) -> str:
    """A request's id as its front sent it; "-" where none came, or one no log line should hold."""
    presented = _header(context, idx, REQUEST_ID_HEADER)
    return presented if well_formed(presented) else "-"  # type: ignore[return-value]


def queue_seconds(sent_at: str | None, batch_started: float) -> float | None:
    """How long a request waited from its front's sending to its batch's start; None where no front said when."""
    try:
        sent = float(sent_at) if sent_at else None
    except ValueError:
        return None
    return max(0.0, batch_started - sent) if sent is not None and math.isfinite(sent) else None


def _header(context: Any, idx: int, name: str) -> str | None:
    """A request header, whatever its case."""
    headers = context.get_all_request_header(idx) or {}
    return next((value for key, value in headers.items() if key.lower() == name.lower()), None)
