"""The Open Inference Protocol (KServe v2) end to end: Triton's and KServe's own clients, the real shim, gRPC front
and TorchServe, for image, tabular and text models; answers equal the TF-Serving routes' (same batching path).

The clients run unchanged in their own environment (harness/v2_client.py, .venv-v2client); hostile bodies
are sent as raw HTTP, since the clients would refuse to build them.
"""

from __future__ import annotations

import base64
import json
import math
import struct

import numpy as np
import pytest
import requests

from harness.learners import TABULAR_CATEGORICAL, TABULAR_CONTINUOUS, tabular_frame
from harness.v2_clients import CLIENTS, V2Clients

pytestmark = pytest.mark.e2e

TEXTS = ["Great!", "The plot was dull and the actor was awful.", "Très bon film, très beau 🎬", "x"]
# Each client's ways of sending tensors: tritonclient.http binary (its default) and JSON; KServe's REST
# JSON (its default) and binary; gRPC raw_input_contents.
WAYS = [
    ("triton_http", True), ("triton_http", False), ("triton_grpc", True),
    ("kserve_rest", False), ("kserve_rest", True), ("kserve_grpc", True),
]  # fmt: skip


@pytest.fixture(scope="module")
def clients(torchserve, tmp_path_factory) -> V2Clients:
    opened = V2Clients(torchserve.shim.removeprefix("http://"), torchserve.grpc, tmp_path_factory.mktemp("v2clients"))
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def digits(demo_model) -> list[bytes]:
    return [(demo_model / "samples" / f"{digit}.png").read_bytes() for digit in (0, 3, 7)]


def tf_predictions(torchserve, model: str, body: dict) -> np.ndarray:
    response = requests.post(f"{torchserve.shim}/v1/models/{model}:predict", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["predictions"], dtype=np.float32)


def image_input(images: list[bytes], binary: bool) -> dict:
    """Binary: the images' bytes; JSON: each image a base64 string (JSON carries no bytes)."""
    encoded = [base64.b64encode(image).decode() for image in images]
    return {"name": "image_bytes", "datatype": "BYTES", **({"b64": encoded} if binary else {"strings": encoded})}


def only_output(answer: dict) -> tuple[str, np.ndarray]:
    assert answer["ok"], answer
    ((output),) = answer["outputs"]
    return output["name"], np.asarray(output["values"], dtype=np.float32)


@pytest.mark.parametrize(("client", "binary"), WAYS)
def test_image_probabilities_equal_the_tf_serving_routes(torchserve, clients, digits, client, binary):
    expected = tf_predictions(
        torchserve, "digits", {"instances": [{"b64": base64.b64encode(d).decode()} for d in digits]}
    )
    answer = clients.call("infer", client=client, model="digits", inputs=[image_input(digits, binary)], binary=binary)
    name, probabilities = only_output(answer)
    version_read = "" if client == "kserve_rest" else "1"  # KServe's REST client drops the model_version it gets
    assert (name, answer["model_name"], answer["model_version"]) == ("probabilities", "digits", version_read)
    assert np.array_equal(probabilities, expected)


def tabular_rows(count: int = 12) -> list[dict]:
    """Rows from the training distribution, categories all present (a binary BYTES tensor has no null), continuous
    values float32 ones (an FP32 column's), so the TF-Serving rows carry exactly the values the v2 columns do."""
    frame = tabular_frame(rows=40, seed=3)[[*TABULAR_CATEGORICAL, *TABULAR_CONTINUOUS]]
    frame = frame.dropna(subset=list(TABULAR_CATEGORICAL)).head(count)
    for name in TABULAR_CONTINUOUS:
        frame[name] = frame[name].astype(np.float32).astype(np.float64)
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v.item() if isinstance(v, np.generic) else v)
         for k, v in row.items()}
        for row in frame.astype(object).to_dict("records")
    ]  # fmt: skip


def column_inputs(torchserve, model: str, rows: list[dict]) -> list[dict]:
    """One input per column, typed as the model's v2 metadata declares (NaN: a missing continuous value)."""
    declared = requests.get(f"{torchserve.shim}/v2/models/{model}", timeout=30).json()["inputs"]
    inputs = []
    for spec in declared:
        values = [row[spec["name"]] for row in rows]
        if spec["datatype"] == "BYTES":
            inputs.append({"name": spec["name"], "datatype": "BYTES", "strings": values})
        else:
            inputs.append({"name": spec["name"], "datatype": spec["datatype"],
                           "values": [math.nan if value is None else value for value in values]})  # fmt: skip
    return inputs


@pytest.mark.parametrize(("client", "binary"), WAYS)
def test_tabular_columns_answer_as_the_tf_serving_rows_do(torchserve, clients, client, binary):
    rows = tabular_rows()
    assert any(row["size"] is None for row in rows)  # a missing value goes through as NaN
    expected = tf_predictions(torchserve, "tabular", {"instances": rows})
    answer = clients.call("infer", client=client, model="tabular", inputs=column_inputs(torchserve, "tabular", rows),
                          binary=binary)  # fmt: skip
    name, probabilities = only_output(answer)
    assert name == "probabilities" and np.array_equal(probabilities, expected)


@pytest.mark.parametrize(("client", "binary"), WAYS)
def test_texts_answer_as_the_tf_serving_routes_do(torchserve, clients, client, binary):
    expected = tf_predictions(torchserve, "text", {"instances": TEXTS})
    inputs = [{"name": "text", "datatype": "BYTES", "strings": TEXTS}]
    name, probabilities = only_output(clients.call("infer", client=client, model="text", inputs=inputs, binary=binary))
    assert name == "probabilities" and np.array_equal(probabilities, expected)


def test_a_tabular_regressor_answers_its_values(torchserve, clients):
    rows = tabular_rows(4)
    expected = tf_predictions(torchserve, "tabular_regressor", {"instances": rows})
    inputs = column_inputs(torchserve, "tabular_regressor", rows)
    name, values = only_output(clients.call("infer", client="triton_http", model="tabular_regressor", inputs=inputs))
    assert name == "values" and np.array_equal(values, expected.reshape(len(rows), -1))


def test_a_segmenter_answers_int64_masks(torchserve, clients, exported_learners):
    images = [sorted((exported_learners["segmenter"].parent / "images").glob("*.png"))[0].read_bytes()]
    expected = tf_predictions(torchserve, "segmenter", {"instances": [{"b64": base64.b64encode(images[0]).decode()}]})
    answer = clients.call("infer", client="triton_grpc", model="segmenter", inputs=[image_input(images, True)])
    ((output,),) = [answer["outputs"]]
    assert (output["name"], output["datatype"]) == ("mask", "INT64")
    assert np.array_equal(np.asarray(output["values"]), expected)


@pytest.mark.parametrize("client", ["triton_http", "triton_grpc"])
def test_a_requested_output_comes_back_and_a_version_in_the_url_is_served(clients, digits, client):
    answer = clients.call("infer", client=client, model="digits", version="1", inputs=[image_input(digits[:1], True)],
                          outputs=["probabilities"], binary_output=False)  # fmt: skip
    assert answer["ok"] and [o["name"] for o in answer["outputs"]] == ["probabilities"]


@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_sees_the_server_live_and_ready(clients, client):
    answer = clients.call("health", client=client, model="digits")
    assert answer == {"ok": True, "live": True, "ready": True, "model_ready": True}


@pytest.mark.parametrize("client", ["triton_http", "triton_grpc"])
def test_tritonclient_reads_the_metadata(clients, client):
    answer = clients.call("metadata", client=client, model="tabular")
    assert answer["server"]["extensions"] == ["binary_tensor_data"]
    declared = {tensor["name"]: tensor["datatype"] for tensor in answer["model"]["inputs"]}
    assert declared == {"colour": "BYTES", "shape": "BYTES", "grade": "INT64", "size": "FP32", "weight": "FP32"}
    assert [tensor["name"] for tensor in answer["model"]["outputs"]] == ["probabilities"]


def test_a_bad_image_is_refused_naming_the_instance_and_its_neighbours_are_served(clients, digits):
    answer = clients.call("infer", client="triton_http", model="digits",
                          inputs=[image_input([digits[0], b"not an image"], True)])  # fmt: skip
    assert (answer["ok"], answer["status"]) == (False, "400") and "instance 1" in answer["message"]
    assert clients.call("infer", client="triton_grpc", model="digits", inputs=[image_input(digits, True)])["ok"]


def raw_body(header: dict, *chunks: bytes) -> tuple[bytes, dict]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text))}


PNG_CHUNK = struct.pack("<I", 4) + b"\x89PNG"
HOSTILE = [
    ({"inputs": [{"name": "image_bytes", "datatype": "FP32", "shape": [1], "data": [1.0]}]}, (), None,
     "input 'image_bytes' is FP32: this model takes BYTES"),
    ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}, (), None,
     "has shape [2] (2 elements) but holds 1 values"),
    ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 900}}]},
     (PNG_CHUNK,), None, "'binary_data_size' is 900 bytes, past the end of the body"),
    ({"inputs": []}, (), "100000", "says 100000 bytes of JSON"),
    ({"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}],
      "parameters": {"sequence_id": 1}}, (), None, "unknown parameter(s) 'sequence_id'"),
]  # fmt: skip


@pytest.mark.parametrize(("header", "chunks", "header_length", "message"), HOSTILE)
def test_a_hostile_body_is_a_400_with_a_message_and_the_server_serves_on(
    torchserve, clients, digits, header, chunks, header_length, message
):
    body, headers = raw_body(header, *chunks)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    elif not chunks:
        headers = {"Content-Type": "application/json"}
    response = requests.post(f"{torchserve.shim}/v2/models/digits/infer", data=body, headers=headers, timeout=30)
    assert response.status_code == 400 and message in response.json()["error"]
    assert clients.call("infer", client="triton_http", model="digits", inputs=[image_input(digits[:1], True)])["ok"]


def test_a_hostile_grpc_request_is_invalid_argument_and_the_server_serves_on(clients, digits):
    answer = clients.call("infer", client="triton_grpc", model="digits", inputs=[{**image_input(digits[:1], True),
                          "datatype": "BYTES", "shape": [1, 1, 1]}])  # fmt: skip
    assert (answer["ok"], answer["status"]) == (False, "INVALID_ARGUMENT") and "shape [1, 1, 1]" in answer["message"]
    assert clients.call("infer", client="kserve_grpc", model="digits", inputs=[image_input(digits, True)])["ok"]


def test_v2_requests_are_counted_in_the_metrics_with_their_protocol(torchserve, clients, digits):
    clients.call("infer", client="triton_http", model="digits", inputs=[image_input(digits[:1], True)])
    clients.call("infer", client="triton_grpc", model="digits", inputs=[image_input(digits[:1], True)])
    text = requests.get(f"{torchserve.shim}/metrics", timeout=30).text
    counted = [line for line in text.splitlines() if line.startswith("fastai_serving_requests_total{")]
    assert any('protocol="v2"' in line and 'route="/v2/models/{model}/infer"' in line and 'model="digits"' in line
               for line in counted)  # fmt: skip
    assert any('front="grpc"' in line and 'protocol="v2"' in line and "GRPCInferenceService/ModelInfer" in line
               for line in counted)  # fmt: skip
