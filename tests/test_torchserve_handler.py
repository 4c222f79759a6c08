"""The handler inside a real TorchServe: answers equal `learn.predict`, batching, per-request errors.

Every test here talks HTTP to the TorchServe that `scripts/serve` started (see conftest.py).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from fastai_serving.engine.learner import ServedLearner
from harness.load import concurrently

pytestmark = pytest.mark.e2e


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict_url(torchserve, model: str) -> str:
    return f"{torchserve.inference}/predictions/{model}"


def post_json(torchserve, model: str, body: dict, verb: str | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if verb:
        headers["x-fastai-serving-verb"] = verb
    return requests.post(predict_url(torchserve, model), json=body, headers=headers, timeout=60)


def in_process(served: ServedLearner, image: bytes):
    """`learn.predict` on the same bytes: (decoded, decoded tensor, activated output)."""
    from fastai.vision.all import PILImage

    with served.learn.no_bar():
        return served.learn.predict(PILImage.create(image))


def sample_images(folder: Path, count: int = 3) -> list[bytes]:
    return [path.read_bytes() for path in sorted((folder.parent / "images").glob("*.png"))[:count]]


# --- The demo model, as the README uses it ------------------------------------------------


def test_uploaded_png_is_answered_with_its_digit(torchserve, demo_model, loaded_learners):
    answers = {}
    for digit in range(10):
        image = (demo_model / "samples" / f"{digit}.png").read_bytes()
        response = requests.put(predict_url(torchserve, "digits"), data=image, timeout=60)
        assert response.status_code == 200, response.text
        answers[digit] = response.json()["prediction"]
        assert answers[digit] == in_process(loaded_learners["digits"], image)[0]
    correct = sum(answers[digit] == str(digit) for digit in range(10))
    assert correct >= 9, answers


def test_one_image_answer_carries_the_class_probabilities(torchserve, demo_model, loaded_learners):
    image = (demo_model / "samples" / "4.png").read_bytes()
    body = requests.put(predict_url(torchserve, "digits"), data=image, timeout=60).json()
    _, _, probabilities = in_process(loaded_learners["digits"], image)
    assert body["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-4)
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-4)


# --- The four task kinds equal learn.predict ----------------------------------------------


def test_classifier_probabilities_equal_learn_predict(torchserve, exported_learners, loaded_learners):
    images = sample_images(exported_learners["classifier"])
    response = post_json(torchserve, "classifier", {"instances": [{"image_bytes": {"b64": b64(i)}} for i in images]})
    assert response.status_code == 200, response.text
    for image, probabilities in zip(images, response.json()["predictions"], strict=True):
        label, _, expected = in_process(loaded_learners["classifier"], image)
        assert probabilities == pytest.approx(expected.tolist(), abs=1e-4)
        assert loaded_learners["classifier"].classes[int(np.argmax(probabilities))] == label


def test_multilabel_scores_and_labels_equal_learn_predict(torchserve, exported_learners, loaded_learners):
    images = sample_images(exported_learners["multilabel"])
    response = post_json(torchserve, "multilabel", {"instances": [{"b64": b64(i)} for i in images]})
    assert response.status_code == 200, response.text
    for image, scores in zip(images, response.json()["predictions"], strict=True):
        _, _, expected = in_process(loaded_learners["multilabel"], image)
        assert scores == pytest.approx(expected.tolist(), abs=1e-4)
    one = requests.put(predict_url(torchserve, "multilabel"), data=images[0], timeout=60).json()
    assert one["prediction"] == list(in_process(loaded_learners["multilabel"], images[0])[0])


def test_regression_values_equal_learn_predict(torchserve, exported_learners, loaded_learners):
    images = sample_images(exported_learners["regressor"])
    response = post_json(torchserve, "regressor", {"instances": [{"b64": b64(i)} for i in images]})
    assert response.status_code == 200, response.text
    for image, values in zip(images, response.json()["predictions"], strict=True):
        _, _, expected = in_process(loaded_learners["regressor"], image)
        assert values == pytest.approx(expected.tolist(), abs=1e-4)


def test_segmentation_mask_equals_learn_predict(torchserve, exported_learners, loaded_learners):
    images = sample_images(exported_learners["segmenter"])
    response = post_json(torchserve, "segmenter", {"instances": [{"b64": b64(i)} for i in images]})
    assert response.status_code == 200, response.text
    for image, mask in zip(images, response.json()["predictions"], strict=True):
        expected_mask, _, probabilities = in_process(loaded_learners["segmenter"], image)
        mask = torch.tensor(mask)
        assert mask.shape == expected_mask.shape
        # Pixels whose two best classes are within float noise may go either way.
        top2 = probabilities.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 1e-4
        assert torch.equal(mask[clear], torch.as_tensor(expected_mask)[clear])
        assert clear.float().mean() > 0.99


def test_learner_needing_a_utils_module_is_served(torchserve, exported_learners, loaded_learners):
    images = sample_images(exported_learners["with_utils"])
    response = post_json(torchserve, "with_utils", {"instances": [{"b64": b64(i)} for i in images]})
    assert response.status_code == 200, response.text
    for image, probabilities in zip(images, response.json()["predictions"], strict=True):
        _, _, expected = in_process(loaded_learners["with_utils"], image)
        assert probabilities == pytest.approx(expected.tolist(), abs=1e-4)


# --- Batching --------------------------------------------------------------------------------


def test_concurrent_requests_share_one_handler_batch(torchserve, exported_learners):
    images = sample_images(exported_learners["classifier"], 8)
    before = len(torchserve.batch_lines())
    url = predict_url(torchserve, "classifier")
    responses = concurrently([lambda image=image: requests.put(url, data=image, timeout=60) for image in images])
    assert [r.status_code for r in responses] == [200] * 8
    wanted = {"requests": 8, "instances": 8, "failed": 0}
    assert wanted in torchserve.batches_since(before, wanted)


def test_requests_with_many_instances_share_one_batch_and_are_split_back_in_order(
    torchserve, exported_learners, loaded_learners
):
    images = sample_images(exported_learners["classifier"], 8)
    first = {"instances": [{"b64": b64(image)} for image in images[:5]]}
    second = {"instances": [{"b64": b64(image)} for image in images[5:]]}
    before = len(torchserve.batch_lines())
    responses = concurrently(
        [lambda: post_json(torchserve, "classifier", first), lambda: post_json(torchserve, "classifier", second)]
    )
    wanted = {"requests": 2, "instances": 8, "failed": 0}
    assert wanted in torchserve.batches_since(before, wanted)
    answered = [p for r in responses for p in r.json()["predictions"]]
    for image, probabilities in zip(images, answered, strict=True):
        assert probabilities == pytest.approx(in_process(loaded_learners["classifier"], image)[2].tolist(), abs=1e-4)


def test_a_bad_image_fails_only_its_own_request_in_a_shared_batch(torchserve, exported_learners, loaded_learners):
    good = sample_images(exported_learners["classifier"], 5)
    garbage = b"this is not an image at all"
    url = predict_url(torchserve, "classifier")
    before = len(torchserve.batch_lines())
    calls = [lambda image=image: requests.put(url, data=image, timeout=60) for image in good]
    calls.append(lambda: requests.put(url, data=garbage, timeout=60))
    responses = concurrently(calls)
    assert [r.status_code for r in responses] == [200] * 5 + [400]
    assert "not an image" in responses[-1].json()["error"]
    wanted = {"requests": 6, "instances": 5, "failed": 1}
    assert wanted in torchserve.batches_since(before, wanted)
    for image, response in zip(good, responses, strict=False):
        assert response.json()["prediction"] == in_process(loaded_learners["classifier"], image)[0]
    assert requests.put(url, data=good[0], timeout=60).status_code == 200


# --- Body forms and errors answered by the handler --------------------------------------------


def test_columnar_inputs_are_answered_as_outputs(torchserve, demo_model):
    image = b64((demo_model / "samples" / "2.png").read_bytes())
    response = post_json(torchserve, "digits", {"inputs": {"image_bytes": [{"b64": image}, {"b64": image}]}})
    assert response.status_code == 200
    outputs = response.json()["outputs"]
    assert len(outputs) == 2 and int(np.argmax(outputs[0])) == 2


def test_one_image_shortcut_is_answered_with_its_label(torchserve, demo_model):
    image = b64((demo_model / "samples" / "8.png").read_bytes())
    response = post_json(torchserve, "digits", {"image_bytes": image})
    assert response.json()["prediction"] == "8"


def test_classes_signature_answers_class_indices(torchserve, demo_model):
    images = [b64((demo_model / "samples" / f"{d}.png").read_bytes()) for d in (0, 7)]
    body = {"signature_name": "classes", "instances": [{"image_bytes": {"b64": i}} for i in images]}
    assert post_json(torchserve, "digits", body).json() == {"predictions": [0, 7]}


def test_classify_verb_answers_labels_with_scores(torchserve, demo_model):
    image = b64((demo_model / "samples" / "5.png").read_bytes())
    results = post_json(torchserve, "digits", {"examples": [{"image_bytes": {"b64": image}}]}, verb="classify").json()[
        "results"
    ]
    labels = [label for label, _ in results[0]]
    assert labels == [str(d) for d in range(10)]
    assert max(results[0], key=lambda pair: pair[1])[0] == "5"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instances": []}, "empty"),
        ({"instances": [{"b64": "%%%not base64%%%"}]}, "not valid base64"),
        ({"instances": [{"b64": b64(b"GIF89a-truncated")}]}, "instance 0"),
        ({"instances": [1, 2]}, "instance 0"),
        ({"instances": [], "inputs": []}, "exactly one"),
        ({"pictures": []}, "unexpected key"),
    ],
)
def test_malformed_json_bodies_get_a_400_naming_the_problem(torchserve, body, message):
    response = post_json(torchserve, "digits", body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_invalid_json_gets_a_400(torchserve):
    response = requests.post(
        predict_url(torchserve, "digits"),
        data=b'{"instances": [',
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_model_metadata_is_described_by_the_handler(torchserve):
    described = requests.get(f"{torchserve.management}/models/digits?customized=true", timeout=60).json()
    metadata = described[0]["customizedMetadata"]
    if isinstance(metadata, str):
        import json

        metadata = json.loads(metadata)
    assert metadata == {
        "task": "classification",
        "classes": [str(d) for d in range(10)],
        "input": "image",
        "precision": "fp32",
        "kind": "vision",
        "inputs": [{"name": "image_bytes", "kind": "image", "size": [32, 32]}],
    }


def test_odd_but_valid_images_are_served(torchserve):
    rgb = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
    images = {
        "grayscale": Image.fromarray(rgb[..., 0]),
        "rgba": Image.fromarray(np.dstack([rgb, np.full((32, 32), 128, np.uint8)])),
        "palette": Image.fromarray(rgb).convert("P"),
        "16-bit": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }
    for name, image in images.items():
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        response = requests.put(predict_url(torchserve, "digits"), data=buffer.getvalue(), timeout=60)
        assert response.status_code == 200, (name, response.text)


def test_an_input_that_breaks_the_model_fails_only_its_own_request(torchserve, exported_learners, loaded_learners):
    good = sample_images(exported_learners["with_utils"], 4)
    breaking = io.BytesIO()
    Image.new("RGB", (13, 13), "white").save(breaking, format="PNG")
    url = predict_url(torchserve, "with_utils")
    calls = [lambda image=image: requests.put(url, data=image, timeout=60) for image in good]
    calls.append(lambda: requests.put(url, data=breaking.getvalue(), timeout=60))
    responses = concurrently(calls)
    assert [r.status_code for r in responses] == [200] * 4 + [500]
    assert "the model failed on this request's input" in responses[-1].json()["error"]
    for image, response in zip(good, responses, strict=False):
        assert response.json()["prediction"] == in_process(loaded_learners["with_utils"], image)[0]
    assert requests.put(url, data=good[0], timeout=60).status_code == 200


def test_non_ascii_in_a_bad_request_fails_that_request_and_never_the_worker(torchserve, demo_model):
    # TorchServe 0.12 kills a worker whose reason phrase is not ASCII (see torchserve_handler.reason_phrase).
    image = b64((demo_model / "samples" / "2.png").read_bytes())
    workers_before = requests.get(f"{torchserve.management}/models/digits", timeout=10).json()[0]["workers"]
    response = post_json(torchserve, "digits", {"instances": [{"b64": image}], "signature_name": "größe"})
    assert response.status_code == 400 and "'größe'" in response.json()["error"]
    assert post_json(torchserve, "digits", {"instances": [{"b64": image}]}).status_code == 200
    workers_after = requests.get(f"{torchserve.management}/models/digits", timeout=10).json()[0]["workers"]
    assert [w["pid"] for w in workers_after] == [w["pid"] for w in workers_before]
