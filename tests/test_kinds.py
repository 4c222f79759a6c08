"""Tabular, text and collaborative-filtering Learners through the real make-archive, TorchServe and shim.

Every answer is compared with `learn.predict` on a freshly loaded export (fastai's own
`load_learner`): probabilities and scores within 1e-5, regression values within 1e-4, in the
row and the columnar forms, with missing values, unseen categories, and texts of very
different lengths in one batch. Responses are checked against the OpenAPI document.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import requests

from harness.learners import TABULAR_CATEGORICAL, TABULAR_CONTINUOUS, ratings_frame, tabular_frame
from harness.load import concurrently
from openapi_contract import assert_matches_spec

pytestmark = pytest.mark.e2e

PREDICT, CLASSIFY, REGRESS = "/v1/models/{model}:predict", "/v1/models/{model}:classify", "/v1/models/{model}:regress"
PROBABILITIES, VALUES = 1e-5, 1e-4

# Rows a client sends: ordinary ones, a missing value (FillMissing fills "size"), a missing category,
# categories never seen in training (and a key the model does not read), and a whole-number float.
ROWS = [
    {"colour": "red", "shape": "round", "grade": 3, "size": 11.5, "weight": 52.0},
    {"colour": "blue", "shape": "flat", "grade": 1, "size": None, "weight": 61.2},
    {"colour": None, "shape": "square", "grade": 5, "size": 8.0, "weight": 40},
    {"colour": "purple", "shape": "hexagon", "grade": 99, "size": 14.25, "weight": 49.5, "note": "not a column"},
    {"colour": "green", "shape": "round", "grade": 2.0, "size": -3, "weight": 70.5},
]
TEXTS = [
    "Great!",
    "a film",
    "The plot was dull and the actor was awful, " * 12 + "but the scene at the end is wonderful.",
    "Wonderful, superb, lovely movie.",
    "x",
    "Terrible. " * 40,
    "Très bon film, très beau 🎬",
    "",
]


def training_rows(count: int = 24) -> list[dict]:
    """Rows from the same distribution as the training table (another seed), as JSON sends them."""
    frame = tabular_frame(rows=count, seed=1)[[*TABULAR_CATEGORICAL, *TABULAR_CONTINUOUS]]
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]  # fmt: skip


def as_json(value):
    return value.item() if isinstance(value, np.generic) else value


def post(torchserve, model: str, body: dict, verb: str = "predict") -> requests.Response:
    path = {"predict": PREDICT, "classify": CLASSIFY, "regress": REGRESS}[verb]
    response = requests.post(f"{torchserve.shim}/v1/models/{model}:{verb}", json=body, timeout=120)
    assert_matches_spec(response, path, "POST")
    return response


def columns(rows: list[dict]) -> dict[str, list]:
    """The columnar form of rows: one list per column (keys of the first row)."""
    return {name: [row.get(name) for row in rows] for name in rows[0]}


def predict_row(learn, row: dict):
    """`learn.predict` on one row, as fastai's tabular docs call it: (decoded, decoded tensor, output)."""
    return learn.predict(pd.Series({**row}))


def predict_text(learn, text: str):
    return learn.predict(text)


# --- Tabular: answers equal learn.predict -------------------------------------------------------------


@pytest.mark.parametrize("model", ["tabular", "tabular_multilabel"])
def test_tabular_classifier_rows_answer_learn_predicts_probabilities(torchserve, fresh_learners, model):
    rows = ROWS + training_rows()
    response = post(torchserve, model, {"instances": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    for row, answer in zip(rows, predictions, strict=True):
        _, _, expected = predict_row(fresh_learners[model], row)
        assert answer == pytest.approx(expected.tolist(), abs=PROBABILITIES), row


@pytest.mark.parametrize("model", ["tabular_regressor", "tabular_multi_regressor"])
def test_tabular_regressor_rows_answer_learn_predicts_values(torchserve, fresh_learners, model):
    rows = ROWS + training_rows()
    predictions = post(torchserve, model, {"instances": rows}).json()["predictions"]
    for row, answer in zip(rows, predictions, strict=True):
        _, values, _ = predict_row(fresh_learners[model], row)
        assert len(answer) == len(values) and answer == pytest.approx(values.tolist(), abs=VALUES), row


@pytest.mark.parametrize("model", ["tabular", "tabular_multilabel", "tabular_regressor", "tabular_multi_regressor"])
def test_the_columnar_form_answers_learn_predict_too(torchserve, fresh_learners, model):
    rows = [{k: v for k, v in row.items() if k != "note"} for row in ROWS]
    response = post(torchserve, model, {"inputs": columns(rows)})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    for row, answer in zip(rows, outputs, strict=True):
        _, decoded, output = predict_row(fresh_learners[model], row)
        expected = decoded if "regressor" in model else output
        assert answer == pytest.approx(expected.tolist(), abs=PROBABILITIES if "regressor" not in model else VALUES)


def test_one_row_shortcut_answers_the_label_and_probabilities(torchserve, fresh_learners, loaded_learners):
    row = ROWS[1]
    body = post(torchserve, "tabular", {"row": row}).json()
    _, index, probabilities = predict_row(fresh_learners["tabular"], row)
    assert body["prediction"] == loaded_learners["tabular"].classes[int(index)]
    assert body["probabilities"] == pytest.approx(probabilities.tolist(), abs=PROBABILITIES)


def test_one_row_shortcut_of_a_multilabel_model_answers_its_labels(torchserve, fresh_learners):
    row = ROWS[0]
    body = post(torchserve, "tabular_multilabel", {"row": row}).json()
    _, flags, scores = predict_row(fresh_learners["tabular_multilabel"], row)
    assert body["prediction"] == [name for name, on in zip(["is_big", "is_red"], flags.tolist(), strict=True) if on]
    assert body["scores"] == pytest.approx(scores.tolist(), abs=PROBABILITIES)


def test_classify_answers_each_example_row_with_labels_and_scores(torchserve, fresh_learners, loaded_learners):
    response = post(torchserve, "tabular", {"examples": ROWS[:3]}, verb="classify")
    for row, result in zip(ROWS[:3], response.json()["results"], strict=True):
        _, _, probabilities = predict_row(fresh_learners["tabular"], row)
        assert [label for label, _ in result] == loaded_learners["tabular"].classes
        assert [score for _, score in result] == pytest.approx(probabilities.tolist(), abs=PROBABILITIES)


@pytest.mark.parametrize("model", ["tabular_regressor", "tabular_multi_regressor"])
def test_regress_answers_a_value_per_example_a_list_for_several_targets(torchserve, fresh_learners, model):
    results = post(torchserve, model, {"examples": ROWS}, verb="regress").json()["results"]
    for row, result in zip(ROWS, results, strict=True):
        _, values, _ = predict_row(fresh_learners[model], row)
        expected = values.tolist()
        assert result == pytest.approx(expected[0] if len(expected) == 1 else expected, abs=VALUES)


def test_the_classes_signature_answers_class_indices(torchserve, fresh_learners):
    response = post(torchserve, "tabular", {"instances": ROWS, "signature_name": "classes"})
    assert response.json()["predictions"] == [int(predict_row(fresh_learners["tabular"], row)[1]) for row in ROWS]


# --- Tabular: bad rows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, message",
    [
        ({"colour": "red", "shape": "round", "grade": 3, "weight": 52.0}, "instance 1 has no column 'size'"),
        ({**ROWS[0], "size": "big"}, "instance 1, column 'size' must be a number, not a string"),
        ({**ROWS[0], "colour": 7}, "instance 1, column 'colour' must be a string (a category such as 'blue')"),
        ({**ROWS[0], "grade": "3"}, "instance 1, column 'grade' must be an integer"),
        ({**ROWS[0], "grade": 2.5}, "instance 1, column 'grade' must be an integer"),
        ({**ROWS[0], "weight": None}, "instance 1, column 'weight': null (a missing value), but the Learner saw no"),
        ({**ROWS[0], "size": True}, "instance 1, column 'size' must be a number, not a boolean"),
        ({**ROWS[0], "size": [1]}, "instance 1, column 'size' must be a number, not a list"),
        ({**ROWS[0], "size": 1e39}, "instance 1, column 'size': 1e+39 is not a finite number within float32"),
        (["red", "round", 3, 11.5, 52.0], "instance 1 must be a row: an object keyed by column name, not a list"),
    ],
)
def test_a_bad_row_is_a_400_naming_the_instance_and_the_column(torchserve, row, message):
    response = post(torchserve, "tabular_regressor", {"instances": [ROWS[0], row]})
    assert response.status_code == 400
    assert message in response.json()["error"], response.json()["error"]


def test_a_bad_row_in_the_columnar_form_is_named_too(torchserve):
    body = {"inputs": {**columns(ROWS[:2]), "size": [1.0, "big"]}}
    response = post(torchserve, "tabular_regressor", body)
    assert response.status_code == 400 and "instance 1, column 'size' must be a number" in response.json()["error"]


def test_nan_and_infinity_literals_are_refused_as_json(torchserve):
    body = b'{"instances": [{"colour": "red", "shape": "round", "grade": 3, "size": NaN, "weight": Infinity}]}'
    response = requests.post(f"{torchserve.shim}/v1/models/tabular_regressor:predict", data=body, timeout=60)
    assert response.status_code == 400 and "NaN is not a JSON value" in response.json()["error"]


def test_a_bad_row_fails_only_its_own_request_in_a_shared_batch(torchserve, fresh_learners):
    """Four requests to "tabular" (it gathers batches of 4 for 400 ms) share one batch and one DataFrame."""
    bad = {**ROWS[0], "size": "big"}
    bodies = [{"instances": ROWS[:2]}, {"instances": [ROWS[2], bad]}, {"inputs": columns(ROWS[3:4])}, {"row": ROWS[4]}]
    url = f"{torchserve.shim}/v1/models/tabular:predict"
    wanted = {"requests": 4, "instances": 4, "failed": 1}
    responses, batches = torchserve.in_one_batch(
        lambda: concurrently([lambda body=body: requests.post(url, json=body, timeout=60) for body in bodies]), wanted
    )
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    assert "instance 1, column 'size'" in responses[1].json()["error"]
    assert wanted in batches
    learn = fresh_learners["tabular"]
    answered = [*responses[0].json()["predictions"], *responses[2].json()["outputs"], responses[3].json()]
    for row, answer in zip([ROWS[0], ROWS[1], ROWS[3], ROWS[4]], answered, strict=True):
        probabilities = answer["probabilities"] if isinstance(answer, dict) else answer
        assert probabilities == pytest.approx(predict_row(learn, row)[2].tolist(), abs=PROBABILITIES)


# --- Collaborative filtering ---------------------------------------------------------------------------


def collab_reference(learn, rows: list[dict]) -> list[float]:
    """fastai's own batch prediction of the rows: `get_preds` on a `test_dl` of them.

    fastai 2.8's `learn.predict` takes no row for a collab Learner (its test_dl gets a list
    holding a Series and raises), so this is the nearest in-process answer.
    """
    preds, _ = learn.get_preds(dl=learn.dls.test_dl(pd.DataFrame(rows)))
    return preds.reshape(len(rows)).tolist()


COLLAB_ROWS = [
    {"user": 3, "item": "m4"},
    {"user": 12, "item": "m19"},
    {"user": 3000, "item": "m4"},  # a user never seen: fastai's #na# embedding
    {"user": 7, "item": None},  # a missing item
    {"user": 0.0, "item": "m0"},
]


def test_collab_rows_and_columns_answer_fastais_predictions(torchserve, fresh_learners):
    expected = collab_reference(fresh_learners["collab"], COLLAB_ROWS)
    rows = post(torchserve, "collab", {"instances": COLLAB_ROWS}).json()["predictions"]
    outputs = post(torchserve, "collab", {"inputs": columns(COLLAB_ROWS)}).json()["outputs"]
    regressed = post(torchserve, "collab", {"examples": COLLAB_ROWS}, verb="regress").json()["results"]
    for answer in (rows, outputs):
        assert [value for (value,) in answer] == pytest.approx(expected, abs=VALUES)
    assert regressed == pytest.approx(expected, abs=VALUES)


def test_one_collab_row_is_answered_as_in_a_batch(torchserve, fresh_learners):
    frame = ratings_frame().head(8)
    rows = [{"user": as_json(u), "item": i} for u, i in zip(frame["user"], frame["item"], strict=True)]
    expected = collab_reference(fresh_learners["collab"], rows)
    alone = [post(torchserve, "collab", {"row": row}).json()["prediction"] for row in rows[:2]]
    assert [value for (value,) in alone] == pytest.approx(expected[:2], abs=VALUES)


def test_a_collab_row_without_its_item_column_is_a_400(torchserve):
    response = post(torchserve, "collab", {"instances": [{"user": 3}]})
    assert response.status_code == 400 and "instance 0 has no column 'item'" in response.json()["error"]


# --- Text ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["text", "text_multilabel"])
def test_texts_of_very_different_lengths_in_one_batch_answer_learn_predict(torchserve, fresh_learners, model):
    response = post(torchserve, model, {"instances": TEXTS})
    assert response.status_code == 200, response.text
    for text, answer in zip(TEXTS, response.json()["predictions"], strict=True):
        _, _, expected = predict_text(fresh_learners[model], text)
        assert answer == pytest.approx(expected.tolist(), abs=PROBABILITIES), text


def test_text_rows_and_columns_answer_learn_predict_too(torchserve, fresh_learners):
    rows = post(torchserve, "text", {"instances": [{"text": t} for t in TEXTS[:4]]}).json()["predictions"]
    outputs = post(torchserve, "text", {"inputs": {"text": TEXTS[:4]}}).json()["outputs"]
    for text, row, column in zip(TEXTS[:4], rows, outputs, strict=True):
        expected = predict_text(fresh_learners["text"], text)[2].tolist()
        assert row == pytest.approx(expected, abs=PROBABILITIES) and column == pytest.approx(
            expected, abs=PROBABILITIES
        )


def test_one_text_shortcut_answers_the_label(torchserve, fresh_learners):
    body = post(torchserve, "text", {"text": TEXTS[3]}).json()
    label, _, probabilities = predict_text(fresh_learners["text"], TEXTS[3])
    assert body["prediction"] == label
    assert body["probabilities"] == pytest.approx(probabilities.tolist(), abs=PROBABILITIES)


@pytest.mark.parametrize("content_type", [None, "text/plain; charset=utf-8"])
def test_a_raw_text_body_sent_to_torchserve_is_one_text(torchserve, fresh_learners, content_type):
    text = "Très bon film, très beau 🎬"
    headers = {"Content-Type": content_type} if content_type else {}
    url = f"{torchserve.inference}/predictions/text_multilabel"
    response = requests.put(url, data=text.encode(), headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    labels, _, scores = predict_text(fresh_learners["text_multilabel"], text)
    assert response.json()["prediction"] == list(labels)
    assert response.json()["scores"] == pytest.approx(scores.tolist(), abs=PROBABILITIES)


def test_a_text_over_the_length_limit_is_a_400_naming_the_limit(torchserve):
    response = post(torchserve, "text_multilabel", {"instances": ["fine", "a" * 10_001]})
    assert response.status_code == 400
    assert response.json()["error"] == "instance 1 is 10001 characters long, over the limit of 10000"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instances": [7]}, 'instance 0 must be a text: a string or {"text": "..."}, not a number'),
        ({"instances": [{"review": "good"}]}, "instance 0 has no 'text'"),
        ({"row": {"text": "good"}}, 'this text model takes {"text": ...}'),
    ],
)
def test_an_instance_that_is_no_text_is_named(torchserve, body, message):
    response = post(torchserve, "text_multilabel", body)
    assert response.status_code == 400 and message in response.json()["error"]


def test_texts_from_concurrent_requests_share_a_batch_and_each_gets_its_own_answers(torchserve, fresh_learners):
    bodies = [{"instances": TEXTS[:3]}, {"instances": TEXTS[3:5]}, {"text": TEXTS[5]}, {"instances": TEXTS[6:]}]
    url = f"{torchserve.shim}/v1/models/text:predict"
    wanted = {"requests": 4, "instances": len(TEXTS), "failed": 0}
    responses, batches = torchserve.in_one_batch(
        lambda: concurrently([lambda body=body: requests.post(url, json=body, timeout=60) for body in bodies]), wanted
    )
    assert [r.status_code for r in responses] == [200] * 4
    assert wanted in batches
    answered = [*responses[0].json()["predictions"], *responses[1].json()["predictions"]]
    answered += [responses[2].json()["probabilities"], *responses[3].json()["predictions"]]
    for text, answer in zip(TEXTS, answered, strict=True):
        assert answer == pytest.approx(predict_text(fresh_learners["text"], text)[2].tolist(), abs=PROBABILITIES)


# --- Metadata --------------------------------------------------------------------------------------------


def metadata(torchserve, model: str) -> dict:
    response = requests.get(f"{torchserve.shim}/v1/models/{model}/metadata", timeout=30)
    assert_matches_spec(response, "/v1/models/{model}/metadata", "GET")
    return response.json()["metadata"]


def test_tabular_metadata_describes_each_column_with_its_kind_and_categories(torchserve):
    described = metadata(torchserve, "tabular")
    fastai = described["fastai"]
    assert (fastai["kind"], fastai["input"], fastai["task"]) == ("tabular", "row", "classification")
    assert fastai["classes"] == ["high", "low", "mid"] and fastai["targets"] == ["quality"]
    assert fastai["inputs"] == [
        {"name": "colour", "kind": "categorical", "type": "string", "categories": ["blue", "green", "red"],
         "nullable": True},
        {"name": "shape", "kind": "categorical", "type": "string", "categories": ["flat", "round", "square"],
         "nullable": True},
        {"name": "grade", "kind": "categorical", "type": "integer", "categories": [1, 2, 3, 4, 5], "nullable": True},
        {"name": "size", "kind": "continuous", "type": "number", "nullable": True},
        {"name": "weight", "kind": "continuous", "type": "number", "nullable": False},
    ]  # fmt: skip
    inputs = described["signature_def"]["signature_def"]["serving_default"]["inputs"]
    assert {name: info["dtype"] for name, info in inputs.items()} == {
        "colour": "DT_STRING", "shape": "DT_STRING", "grade": "DT_INT64", "size": "DT_FLOAT", "weight": "DT_FLOAT",
    }  # fmt: skip


def test_regression_metadata_names_its_targets_in_output_order(torchserve):
    fastai = metadata(torchserve, "tabular_multi_regressor")["fastai"]
    assert fastai["task"] == "regression" and fastai["targets"] == ["price", "volume"] and fastai["classes"] == []


def test_collab_metadata_describes_its_user_and_item_columns(torchserve):
    fastai = metadata(torchserve, "collab")["fastai"]
    assert (fastai["kind"], fastai["task"], fastai["targets"]) == ("collab", "regression", ["rating"])
    user, item = fastai["inputs"]
    assert (user["name"], user["type"], user["categories"][:3]) == ("user", "integer", [0, 1, 2])
    assert (item["name"], item["type"], item["categories"][:2]) == ("item", "string", ["m0", "m1"])


def test_text_metadata_names_the_input_and_its_length_limit(torchserve):
    fastai = metadata(torchserve, "text_multilabel")["fastai"]
    assert (fastai["kind"], fastai["input"], fastai["task"]) == ("text", "text", "multilabel_classification")
    assert fastai["classes"] == ["long", "neg", "pos"]
    assert fastai["inputs"] == [{"name": "text", "kind": "text", "max_chars": 10_000}]


# --- Helpers ---------------------------------------------------------------------------------------------
