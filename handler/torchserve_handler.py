"""TorchServe handler for exported fastai Learners: the thin adapter onto `fastai_serving`.

TorchServe calls `initialize(context)` once per worker, then `handle(data, context)` for
every batch: `data` holds one entry per client request. The four steps of TorchServe's
handler contract map onto the engine-independent core:

    preprocess   read each request's body and its instances: decode images, check rows and texts (fastai_serving.batching)
    inference    one batched forward pass for all of them (fastai_serving.predict, .tabular, .text)
    postprocess  one JSON body and HTTP status per request (fastai_serving.responses)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from fastai_serving import defaults
from fastai_serving.aot import load_package
from fastai_serving.batching import encode_responses, predict_requests, prepare_requests
from fastai_serving.compiled import compile_learner
from fastai_serving.errors import ModelError
from fastai_serving.learner import ServedLearner, load_learner
from fastai_serving.settings import HandlerSettings
from fastai_serving.vocabulary import PREDICT, TASK_HEADER, VERB_HEADER, VERSION_HEADER

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"


class FastaiHandler:
    """One per TorchServe worker: holds the Learner and answers batches."""

    def __init__(self) -> None:
        self.served: ServedLearner | None = None
        self.settings = HandlerSettings()
        self.context: Any = None
        self.version = ""
        self.initialized = False

    def initialize(self, context: Any) -> None:
        """Load the archive's Learner once, on the device TorchServe gives this worker."""
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        model_config = context.model_yaml_config or {}
        self.settings = HandlerSettings.from_model_config(model_config)
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
        outcomes = self.preprocess(data)
        results = self.inference(outcomes)
        return self.postprocess(outcomes, results)

    def preprocess(self, data: list[dict[str, Any]]) -> list[Any]:
        """Read each request's body and its instances (bad ones stand in for their request)."""
        bodies = [
            (row.get("body", row.get("data")), (_header(self.context, idx, VERB_HEADER) or PREDICT).lower())
            for idx, row in enumerate(data)
        ]
        return prepare_requests(self.served, bodies, self.settings)

    def inference(self, outcomes: list[Any]) -> list[Any]:
        """One forward pass for every instance in the batch, split back per request."""
        results = predict_requests(self.served, outcomes, self.settings)
        instances = sum(len(r) for r in results if isinstance(r, list))
        failed = sum(isinstance(r, Exception) for r in results)
        # One line per batch: how many client requests shared it (the tests read it).
        logger.info("fastai-serving batch: requests=%d instances=%d failed=%d", len(outcomes), instances, failed)
        return results

    def postprocess(self, outcomes: list[Any], results: list[Any]) -> list[bytes]:
        """A compact JSON body per request; a failed request gets its own 4xx/5xx status."""
        bodies = []
        for idx, (status, body) in enumerate(encode_responses(self.served, outcomes, results)):
            if status != 200:
                self.context.set_response_status(status, reason_phrase(body["error"]), idx)
            self.context.set_response_content_type(idx, JSON_CONTENT_TYPE)
            # The gRPC front names the version that answered (TF Serving's model_spec.version) and the outputs.
            self.context.set_response_header(idx, VERSION_HEADER, self.version)
            self.context.set_response_header(idx, TASK_HEADER, self.served.task)
            bodies.append(json.dumps(body, separators=(",", ":")).encode())
        return bodies

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


def reason_phrase(message: str) -> str:
    """The message as an HTTP reason phrase: ASCII only.

    TorchServe 0.12 frames a reason phrase by its length in characters but sends its UTF-8
    bytes, so one non-ASCII character (a client's own key or signature name, quoted back)
    breaks the frame and kills the worker, failing every request in its batch. The body keeps
    the message as it is.
    """
    return message.encode("ascii", "backslashreplace").decode("ascii")


def _header(context: Any, idx: int, name: str) -> str | None:
    """A request header, whatever its case."""
    headers = context.get_all_request_header(idx) or {}
    return next((value for key, value in headers.items() if key.lower() == name.lower()), None)
