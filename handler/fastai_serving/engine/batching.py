"""Many client requests into one model batch, and the results back to each request.

A TorchServe batch holds several requests, each with one or many instances. Each request's
body is read and each instance checked as the Learner's kind reads it (image bytes, decoded
below; a tabular row, column by column; a text, within its length bound), so a bad instance
fails its own request before any batch is built. The instances of every request that passed
are flattened into one list for one forward pass (vision: one test DataLoader of images;
tabular and collab: one DataFrame; text: one padded, length-sorted DataLoader), then split
back in order. A request's bad input fails that request alone; the others are still answered.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..contract.bodies import Body, check_answerable, check_form, read_body
from ..contract.errors import BadInput, Failure, ServingError
from ..contract.instances import image_bytes, read_row, read_text
from ..contract.vocabulary import COLLAB, TABULAR, TEXT, VISION
from .learner import ServedLearner
from .predict import Prediction, decode_for, predict_images
from .responses import response_body
from .settings import HandlerSettings

logger = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A request whose body was read and whose instances were all read (images: decoded)."""

    body: Body
    inputs: list[Any]  # PIL images (or image tensors: tensor_images), checked tabular rows, or texts


class PredictionFailed(ServingError):
    """The model raised on this request's input (the worker carries on)."""

    failure = Failure.MODEL_FAILED


Outcome = PreparedRequest | ServingError  # a request read whole, or its answer decided already


def read_instances(served: ServedLearner, body: Body, settings: HandlerSettings) -> list[Any]:
    """Each instance of `body` as the Learner's kind reads it: image bytes, a checked row, or a text."""
    names = [body.instance_name(index, served.kind) for index in range(len(body.instances))]
    if served.kind == VISION:
        return [image_bytes(value, name) for value, name in zip(body.instances, names, strict=True)]
    if served.kind in (TABULAR, COLLAB):
        return [read_row(value, name, served.columns) for value, name in zip(body.instances, names, strict=True)]
    return [read_text(value, name, served.max_text_chars) for value, name in zip(body.instances, names, strict=True)]


def prepare_requests(
    served: ServedLearner, bodies: Sequence[tuple[Any, str] | ServingError], settings: HandlerSettings
) -> list[Outcome]:
    """Read each (body, verb) and its instances (images: decoded); a failure stands in for its request, as does an
    answer already decided (a `ServingError` in `bodies`: a request whose deadline passed, never read)."""
    readable: list[tuple[Body, list[Any]] | ServingError] = []
    for entry in bodies:
        if isinstance(entry, ServingError):
            readable.append(entry)
            continue
        raw_body, verb = entry
        try:
            body = read_body(raw_body, verb, max_instances=settings.max_instances)
            check_form(served.kind, body)
            check_answerable(served.task, body)
            readable.append((body, read_instances(served, body, settings)))
        except BadInput as error:
            readable.append(error)
    if served.kind != VISION:
        return [entry if isinstance(entry, ServingError) else PreparedRequest(*entry) for entry in readable]
    read = [entry for entry in readable if not isinstance(entry, ServingError)]
    names = [body.instance_name(index) for body, encoded in read for index in range(len(encoded))]
    decoded = iter(decode_for(served, [b for _, encoded in read for b in encoded], names, settings))
    outcomes: list[Outcome] = []
    for entry in readable:
        if isinstance(entry, ServingError):
            outcomes.append(entry)
            continue
        body, encoded = entry
        images = [next(decoded) for _ in encoded]
        error = next((image for image in images if isinstance(image, BadInput)), None)
        outcomes.append(error or PreparedRequest(body=body, inputs=images))
    return outcomes


def predict_requests(
    served: ServedLearner, outcomes: Sequence[Outcome], settings: HandlerSettings
) -> list[Sequence[Prediction] | Exception]:
    """One forward pass over every prepared request's instances, split back per request.

    If the batch as a whole raises, each request is predicted alone, so the input that
    breaks the model fails only its own request.
    """
    prepared = [o for o in outcomes if isinstance(o, PreparedRequest)]
    inputs = [value for request in prepared for value in request.inputs]
    try:
        predictions = _predict_counted(served, inputs, settings)
        ends = list(itertools.accumulate(len(r.inputs) for r in prepared))
        per_request = {id(r): predictions[end - len(r.inputs) : end] for r, end in zip(prepared, ends, strict=True)}
    except Exception:
        logger.exception("batch of %d instances failed; predicting its requests one by one", len(inputs))
        per_request = {id(r): _predict_alone(served, r, settings) for r in prepared}
    return [per_request[id(o)] if isinstance(o, PreparedRequest) else o for o in outcomes]


def _predict(served: ServedLearner, inputs: list[Any], settings: HandlerSettings) -> Sequence[Prediction]:
    """The kind's one batched prediction: images, rows (one DataFrame) or texts."""
    if served.kind in (TABULAR, COLLAB):
        from .tabular import predict_rows

        return predict_rows(served, inputs, settings.max_row_batch, fast=settings.fast_rows)
    if served.kind == TEXT:
        from .text import predict_texts

        return predict_texts(served, inputs, settings.max_batch)
    return predict_images(served, inputs, settings.max_batch, fast=settings.fast_images)


def _predict_counted(served: ServedLearner, inputs: list[Any], settings: HandlerSettings) -> Sequence[Prediction]:
    """The predictions of `inputs`, one each, or an error: never a result that could belong to another instance."""
    predictions = _predict(served, inputs, settings)
    if len(predictions) != len(inputs):
        raise RuntimeError(f"{len(predictions)} predictions for {len(inputs)} instances")
    return predictions


def _predict_alone(
    served: ServedLearner, request: PreparedRequest, settings: HandlerSettings
) -> Sequence[Prediction] | Exception:
    try:
        return _predict_counted(served, request.inputs, settings)
    except Exception as error:
        logger.exception("prediction failed for one request")
        return PredictionFailed(f"the model failed on this request's input ({type(error).__name__})")


def encode_responses(
    served: ServedLearner, outcomes: Sequence[Outcome], results: Sequence[Sequence[Prediction] | Exception]
) -> list[tuple[Failure | None, dict[str, Any]]]:
    """(the failure's kind, or None for an answer; its JSON body) per request, in order."""
    responses: list[tuple[Failure | None, dict[str, Any]]] = []
    for outcome, result in zip(outcomes, results, strict=True):
        if isinstance(result, Exception):
            failure = result.failure if isinstance(result, ServingError) else Failure.MODEL_FAILED
            responses.append((failure, {"error": str(result)}))
        else:
            responses.append((None, response_body(served, outcome.body, result)))
    return responses
