"""Encode predictions as the response body each request form asks for."""

from __future__ import annotations

from typing import Any

from .bodies import Body
from .learner import ServedLearner
from .predict import Prediction
from .vocabulary import (
    CLASS_INDEX_SIGNATURE,
    CLASSIFY,
    EXAMPLES,
    MULTI_LABEL,
    RAW,
    ROWS,
    SEGMENTATION,
    SINGLE,
    SINGLE_LABEL,
)


def response_body(served: ServedLearner, body: Body, predictions: list[Prediction]) -> dict[str, Any]:
    """The JSON body answering `body`, one entry per instance, in order."""
    if body.form in (RAW, SINGLE):
        return one_prediction(served, predictions[0])
    if body.form == EXAMPLES:
        if body.verb == CLASSIFY:
            return {"results": [labelled_scores(served, p) for p in predictions]}
        return {"results": [regression_value(p) for p in predictions]}
    if body.signature_name == CLASS_INDEX_SIGNATURE:
        entries = [class_index(served, p) for p in predictions]
    else:
        entries = [model_output(served, p) for p in predictions]
    return {"predictions" if body.form == ROWS else "outputs": entries}


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
