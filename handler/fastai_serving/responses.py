"""Encode predictions as the response body each request form asks for."""

from __future__ import annotations

from typing import Any

from .errors import BadInput
from .learner import MULTI_LABEL, REGRESSION, SEGMENTATION, SINGLE_LABEL, ServedLearner
from .payloads import CLASSIFY, EXAMPLES, RAW, REGRESS, ROWS, SINGLE, Payload
from .predict import Prediction

# signature_name values: probabilities (TF Serving's default name, or none), or the
# original fastai-serving's answer, the predicted class index.
PROBABILITIES_SIGNATURES = ("", "serving_default", "predict")
CLASS_INDEX_SIGNATURE = "classes"


def check_answerable(served: ServedLearner, payload: Payload) -> None:
    """Refuse, before any inference, a request this model cannot answer."""
    classifier = served.task in (SINGLE_LABEL, MULTI_LABEL)
    if payload.verb == CLASSIFY and not classifier:
        raise BadInput(f":classify needs a classifier; this model does {served.task} (use :predict)")
    if payload.verb == REGRESS and served.task != REGRESSION:
        raise BadInput(f":regress needs a regression model; this model does {served.task} (use :predict)")
    signature = payload.signature_name
    if signature == CLASS_INDEX_SIGNATURE and not classifier:
        raise BadInput(f"signature_name 'classes' needs a classifier; this model does {served.task}")
    if signature not in PROBABILITIES_SIGNATURES + (CLASS_INDEX_SIGNATURE,):
        raise BadInput(
            f"unknown signature_name {signature!r}: this model serves 'serving_default' "
            f"(probabilities) and 'classes' (class indices)"
        )


def response_body(served: ServedLearner, payload: Payload, predictions: list[Prediction]) -> dict[str, Any]:
    """The JSON body answering `payload`, one entry per instance, in order."""
    if payload.form in (RAW, SINGLE):
        return one_prediction(served, predictions[0])
    if payload.form == EXAMPLES:
        if payload.verb == CLASSIFY:
            return {"results": [labelled_scores(served, p) for p in predictions]}
        return {"results": [regression_value(p) for p in predictions]}
    if payload.signature_name == CLASS_INDEX_SIGNATURE:
        entries = [class_index(served, p) for p in predictions]
    else:
        entries = [model_output(served, p) for p in predictions]
    return {"predictions" if payload.form == ROWS else "outputs": entries}


def one_prediction(served: ServedLearner, prediction: Prediction) -> dict[str, Any]:
    """A one-image answer: the decoded prediction, with the scores behind it."""
    body: dict[str, Any] = {"prediction": readable(served, prediction)}
    if served.task == SINGLE_LABEL:
        body["probabilities"] = model_output(served, prediction)
    elif served.task == MULTI_LABEL:
        body["scores"] = model_output(served, prediction)
    return body


def model_output(served: ServedLearner, prediction: Prediction) -> Any:
    """Probabilities (classifier), scores (multi-label), values (regression), or the class-index mask."""
    if served.task == SEGMENTATION:
        return prediction.decoded.tolist()
    return prediction.output.tolist()


def readable(served: ServedLearner, prediction: Prediction) -> Any:
    """The decoded prediction: a class name, class names, values, or the mask."""
    if served.task == SINGLE_LABEL:
        return _class_name(served, int(prediction.decoded))
    if served.task == MULTI_LABEL:
        return [_class_name(served, index) for index in _on_indices(prediction)]
    return prediction.decoded.tolist()


def class_index(served: ServedLearner, prediction: Prediction) -> Any:
    """The original fastai-serving's answer: the predicted class index (multi-label: indices)."""
    if served.task == MULTI_LABEL:
        return _on_indices(prediction)
    return int(prediction.decoded)


def labelled_scores(served: ServedLearner, prediction: Prediction) -> list[list[Any]]:
    """TF Serving's classify result for one example: [label, score] per class, in vocab order."""
    scores = prediction.output.tolist()
    return [[_class_name(served, index), score] for index, score in enumerate(scores)]


def regression_value(prediction: Prediction) -> Any:
    """TF Serving's regress result for one example: the value (a list for several targets)."""
    values = prediction.output.flatten().tolist()
    return values[0] if len(values) == 1 else values


def _on_indices(prediction: Prediction) -> list[int]:
    return [index for index, on in enumerate(prediction.decoded.bool().tolist()) if on]


def _class_name(served: ServedLearner, index: int) -> str:
    return served.classes[index] if index < len(served.classes) else str(index)
