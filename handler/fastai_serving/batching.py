"""Many client requests into one model batch, and the results back to each request.

A TorchServe batch holds several requests, each with one or many instances. They are
flattened into one list of images for one forward pass, then split back in order. A
request's bad input fails that request alone; the others are still answered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .contract import Body, check_answerable, image_bytes, read_body
from .errors import BadInput
from .learner import ServedLearner
from .predict import Prediction, decode_images, predict_images
from .responses import response_body
from .settings import HandlerSettings

logger = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A request whose body was read and whose images all decoded."""

    body: Body
    images: list[Image.Image]


class PredictionFailed(RuntimeError):
    """The model raised on this request's input (answered 500; the worker carries on)."""

    status = 500


Outcome = PreparedRequest | BadInput


def prepare_requests(
    served: ServedLearner, bodies: Sequence[tuple[Any, str]], settings: HandlerSettings
) -> list[Outcome]:
    """Read each (body, verb) and decode its images; a failure stands in for its request."""
    readable: list[tuple[Body, list[bytes]] | BadInput] = []
    for raw_body, verb in bodies:
        try:
            body = read_body(raw_body, verb, max_instances=settings.max_instances)
            check_answerable(served.task, body)
            encoded = [image_bytes(value, body.instance_name(i)) for i, value in enumerate(body.instances)]
            readable.append((body, encoded))
        except BadInput as error:
            readable.append(error)
    read = [entry for entry in readable if not isinstance(entry, BadInput)]
    names = [body.instance_name(index) for body, encoded in read for index in range(len(encoded))]
    decoded = iter(decode_images([b for _, encoded in read for b in encoded], names, settings.max_image_pixels))
    outcomes: list[Outcome] = []
    for entry in readable:
        if isinstance(entry, BadInput):
            outcomes.append(entry)
            continue
        body, encoded = entry
        images = [next(decoded) for _ in encoded]
        error = next((image for image in images if isinstance(image, BadInput)), None)
        outcomes.append(error or PreparedRequest(body=body, images=images))
    return outcomes


def predict_requests(
    served: ServedLearner, outcomes: Sequence[Outcome], max_batch: int
) -> list[list[Prediction] | Exception]:
    """One forward pass over every prepared request's images, split back per request.

    If the batch as a whole raises, each request is predicted alone, so the input that
    breaks the model fails only its own request.
    """
    prepared = [o for o in outcomes if isinstance(o, PreparedRequest)]
    images = [image for request in prepared for image in request.images]
    try:
        predictions = iter(_predict_counted(served, images, max_batch))
        per_request = {id(r): [next(predictions) for _ in r.images] for r in prepared}
    except Exception:
        logger.exception("batch of %d images failed; predicting its requests one by one", len(images))
        per_request = {id(r): _predict_alone(served, r, max_batch) for r in prepared}
    return [per_request[id(o)] if isinstance(o, PreparedRequest) else o for o in outcomes]


def _predict_counted(served: ServedLearner, images: list[Image.Image], max_batch: int) -> list[Prediction]:
    """The predictions of `images`, one each, or an error: never a result that could belong to another image."""
    predictions = predict_images(served, images, max_batch)
    if len(predictions) != len(images):
        raise RuntimeError(f"{len(predictions)} predictions for {len(images)} images")
    return predictions


def _predict_alone(served: ServedLearner, request: PreparedRequest, max_batch: int) -> list[Prediction] | Exception:
    try:
        return _predict_counted(served, request.images, max_batch)
    except Exception as error:
        logger.exception("prediction failed for one request")
        return PredictionFailed(f"the model failed on this request's input ({type(error).__name__})")


def encode_responses(
    served: ServedLearner, outcomes: Sequence[Outcome], results: Sequence[list[Prediction] | Exception]
) -> list[tuple[int, dict[str, Any]]]:
    """(HTTP status, JSON body) per request, in order."""
    responses = []
    for outcome, result in zip(outcomes, results, strict=True):
        if isinstance(result, Exception):
            responses.append((getattr(result, "status", 500), {"error": str(result)}))
        else:
            responses.append((200, response_body(served, outcome.body, result)))
    return responses
