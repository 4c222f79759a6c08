"""The use case under every front: one typed verb per thing a client asks, the same whatever the protocol.

A front parses its wire format into a call (calls.py), calls one verb here, and encodes what comes
back; nothing else. Here, and only here: which model and version a request names (the default model,
TF Serving's version numbers), what is checked before inference, the one upstream call (so every front's
requests share TorchServe's dynamic batches), reading the handler's answer, and counting each request
and its instances in the metrics, with label values only ever taken from models TorchServe serves.
Failures are `ServingError`s of the contract's `Failure` kinds; each front maps them once.
"""

from __future__ import annotations

import math
import os
import threading
import time

from fastai_serving import defaults, tracing
from fastai_serving.contract.errors import Failure, NotFound, Overloaded, ServingError
from fastai_serving.contract.names import check_model_name, check_url_version
from fastai_serving_shim import access_log, metrics, observed
from fastai_serving_shim.admission import Admission, FrontsTable
from fastai_serving_shim.cache import SingleFlight
from fastai_serving_shim.calls import (
    Description,
    ModelRef,
    ModelStatus,
    PredictCall,
    Prediction,
    Readiness,
    VersionStatus,
)
from fastai_serving_shim.settings import Settings
from fastai_serving_shim.torchserve import HandlerError, ModelVersion, TorchServe, Upstream


class Service:
    """Every front's verbs over TorchServe (`upstream`: TorchServe's APIs, or the tests' stand-in)."""

    def __init__(self, settings: Settings, upstream: Upstream | None = None) -> None:
        self.settings = settings
        self.upstream = upstream or TorchServe(settings)
        self._routing = SingleFlight(defaults.ROUTING_CACHE_S)  # the model table and versions, on the hot path
        self._descriptions = SingleFlight(defaults.METADATA_CACHE_S)  # (model, TorchServe version) -> described
        self.admission = Admission(
            FrontsTable(settings.admission_file or None), settings.queue_target_s, settings.queue_interval_s
        )
        self._lock = threading.Lock()
        self._served: set[str] = set()  # models TorchServe confirmed: the only model names a metric label takes

    # --- Health ---------------------------------------------------------------------------------

    def live(self) -> bool:
        """The process answers: never asks TorchServe, so a busy or loading model never fails it."""
        return True

    def draining(self) -> bool:
        """Whether the server is shutting down (scripts/serve got SIGTERM): readiness fails, requests are still served."""
        return bool(self.settings.drain_file) and os.path.exists(self.settings.drain_file)

    def readiness(self) -> Readiness:
        """Ready when not draining and every model it waits for has a ready worker (asked live).

        It waits for the models named in the settings; else for every archive in the store and every model
        TorchServe registered, so one whose worker cannot load is listed as not ready rather than left out.
        """
        if self.draining():
            return Readiness(False, True, {})
        try:
            wanted = self.settings.ready_model_names() or list(
                dict.fromkeys(self.settings.store_model_names() + self.models())
            )
            models = {model: self._ready(model) for model in wanted}
        except ServingError as error:
            return Readiness(False, False, {}, error.message)
        return Readiness(bool(models) and all(models.values()), False, models)

    # --- The model table ------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Every model TorchServe serves (asked live)."""
        models = self.upstream.models()
        self._confirm(*models)
        return models

    def status(self, ref: ModelRef) -> ModelStatus:
        """Each version of a model (or the one a number names) and whether it can serve (asked live)."""
        model = self.model_of(ref)
        versions = self._versions(model)
        if ref.version:
            versions = [self._numbered(model, ref.version, versions)]
        return ModelStatus(model, tuple(VersionStatus(v.number, v.ready) for v in versions))

    def describe(self, ref: ModelRef) -> Description:
        """The description of a model's default version (asked live which it is), or of the version a number names."""
        model = self.model_of(ref)
        versions = self._versions(model)
        if ref.version:
            chosen = self._numbered(model, ref.version, versions)
        else:
            chosen = self.upstream.default_version(model)
        return self._description(model, chosen.version, versions)

    def model_of(self, ref: ModelRef) -> str:
        """The model a request names, checked: the configured default or the only model when it names none."""
        if ref.name:
            check_model_name(ref.name)
            return ref.name
        if self.settings.default_model:
            return self.settings.default_model
        models = self._routing.get("models", self.models)
        if len(models) == 1:
            return models[0]
        raise NotFound(
            f"no default model: TorchServe serves {len(models)} models; set FASTAI_SERVING_DEFAULT_MODEL "
            "(scripts/serve --default-model) or name the model"
        )

    # --- Predictions ----------------------------------------------------------------------------

    def predict(self, call: PredictCall) -> Prediction:
        """One prediction: resolve the model and version, check the call against the model's description, admit
        it (or refuse it at once: it could not be answered in time), one upstream request within the call's
        deadline, the answer with the description of its version."""
        model = self.model_of(call.model)
        target = self._routed(model, call.model.version)
        self._confirm(model)  # TorchServe named its version: it serves it
        description = self._description(model, target.version, self._routing_versions(model))
        call.payload.check(description)  # before inference: a request the model cannot answer costs no batch slot
        body, content_type = call.payload.upstream(description)
        client_timeout_s = call.timeout_s if call.timeout_s is not None and math.isfinite(call.timeout_s) else None
        instances = call.payload.instances
        try:
            self.admission.admit(model, instances, target.workers, client_timeout_s)
        except Overloaded as refused:
            metrics.OVERLOAD_REFUSED.labels(self.label_of(model), refused.reason).inc()
            raise
        limit = self.settings.predict_timeout_s
        timeout_s = limit if client_timeout_s is None else max(0.01, min(client_timeout_s, limit))
        deadline = time.time() + client_timeout_s if client_timeout_s is not None else None
        version = target.version if call.model.version else None  # None: TorchServe's default, however it changes
        record = observed.current()
        request_id = record.request_id if record else ""
        if record is not None:  # for the access line, answered or not
            record.model, record.instances = model, instances
        upstream_in_flight = metrics.UPSTREAM_IN_FLIGHT.labels(self.label_of(model))
        upstream_in_flight.inc()
        try:
            with tracing.span("TorchServe inference", kind="CLIENT", model=model, version=target.version,
                              instances=instances, request_id=request_id):  # fmt: skip
                answer = self.upstream.infer(
                    model, version, body, content_type, call.verb, timeout_s, deadline, request_id=request_id
                )
        except HandlerError as error:
            if not error.version and call.payload.needs_current_handler:
                raise outdated_archive(model) from None  # an older handler could not read this body
            raise
        except ServingError as error:
            if error.failure in (Failure.UNAVAILABLE, Failure.TIMEOUT):
                metrics.UPSTREAM_ERRORS.labels(self.label_of(model), error.failure.value).inc()
            raise
        finally:
            upstream_in_flight.dec()
            self.admission.done(model, instances)
        self.admission.answered(model, answer.batch_seconds, answer.batch_instances, answer.forward_instances)
        self._confirm(model)
        if answer.retried:
            metrics.UPSTREAM_RETRIES.labels(model).inc()
        if not answer.version:  # a handler older than this front: it names no version
            if call.payload.needs_current_handler:
                raise outdated_archive(model)
            return Prediction(model, description, answer.body)
        if answer.version != description.torchserve_version:
            description = self._description(model, answer.version, self._routing_versions(model))
            call.payload.check(description)  # a reload made another version the default meanwhile
        metrics.INSTANCES.labels(self.label_of(model), call.verb).observe(instances)
        if record is not None:
            record.version, record.queue_s = description.version, answer.queue_seconds
        return Prediction(model, description, answer.body)

    # --- Metrics --------------------------------------------------------------------------------

    def label_of(self, model: str) -> str:
        """`model` as a metric label: only a model TorchServe confirmed serving; any other name is ""."""
        with self._lock:
            return model if model in self._served else ""

    def count(self, front: str, protocol: str, route: str, verb: str, model: str, status: str, seconds: float) -> None:
        """One answered request of any front, in the request metrics and (unless switched off) the access log."""
        labels = {"front": front, "protocol": protocol, "model": self.label_of(model), "route": route, "verb": verb}
        metrics.REQUESTS.labels(**labels, status=status).inc()
        metrics.LATENCY.labels(**labels).observe(seconds)
        if self.settings.access_log:
            access_log.write(observed.current(), front, protocol, route, model, status, seconds)

    def metrics_text(self) -> tuple[bytes, str]:
        """The Prometheus text of the fronts' metrics, then TorchServe's own."""
        return metrics.exposition(self.upstream.metrics())

    # --- Inside ---------------------------------------------------------------------------------

    def _ready(self, model: str) -> bool:
        try:
            return any(version.ready for version in self._versions(model))
        except NotFound:
            return False  # not registered (yet, or its archive failed to load)

    def _versions(self, model: str) -> list[ModelVersion]:
        versions = self.upstream.versions(model)
        self._confirm(model)
        return versions

    def _routing_versions(self, model: str, fresh: bool = False) -> list[ModelVersion]:
        return self._routing.get(("versions", model), lambda: self._versions(model), fresh=fresh)

    def _routed(self, model: str, number: str) -> ModelVersion:
        """The version a prediction goes to, from the routing cache: the one a number names (a number it does not
        know is looked up again at once: a reload may have registered it), or the default one."""
        if not number:
            return self._routing.get(("default", model), lambda: self.upstream.default_version(model))
        check_url_version(number)
        try:
            return self._numbered(model, number, self._routing_versions(model))
        except NotFound:
            return self._numbered(model, number, self._routing_versions(model, fresh=True))

    def _description(self, model: str, version: str, versions: list[ModelVersion]) -> Description:
        """A version's description: the handler's, asked once per version however many requests need it at once."""
        described = self._descriptions.get((model, version), lambda: self.upstream.describe(model, version))
        number = ModelVersion(version, ready=False).number
        return Description(model, number, tuple(v.number for v in versions), described, torchserve_version=version)

    @staticmethod
    def _numbered(model: str, number: str, versions: list[ModelVersion]) -> ModelVersion:
        """The version a TF Serving version number ("2") names; NotFound when none does."""
        check_url_version(number)
        wanted = str(int(number))
        found = next((version for version in versions if version.number == wanted), None)
        if found is None:
            raise NotFound(f"model {model!r} has no version {number}")
        return found

    def _confirm(self, *models: str) -> None:
        with self._lock:
            self._served.update(models)


def outdated_archive(model: str) -> ServingError:
    return ServingError(
        f"the archive of model {model!r} was made by an older fastai-serving, whose handler cannot read this "
        "front's requests: rebuild it with scripts/make-archive",
        Failure.OUTDATED_ARCHIVE,
    )
