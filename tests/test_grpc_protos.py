"""The gRPC front's .proto files are the single source: the committed generated code is what they make.

Regenerate with `make protos` after editing client/fastai_serving_protos/*.proto. tests/test_grpc.py checks the
same messages against TF Serving's own descriptors, field by field.
"""

from __future__ import annotations

from fastai_serving_protos import open_inference_pb2, tensorflow_serving_pb2
from harness import PROJECT_ROOT
from harness.protos import PROTO_FOLDER, generate


def test_the_committed_generated_code_is_what_the_proto_files_make(tmp_path):
    fresh = {path.name: path.read_bytes() for path in generate(tmp_path)}
    committed = {path.name: path.read_bytes() for path in (PROJECT_ROOT / PROTO_FOLDER).glob("*_pb2*.py")}
    assert set(fresh) == set(committed), "the generated files differ in name: run `make protos`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"{', '.join(stale)} are stale: run `make protos` and commit them"


def test_the_services_and_methods_are_tf_servings():
    services = tensorflow_serving_pb2.DESCRIPTOR.services_by_name
    assert {name: [m.name for m in service.methods] for name, service in services.items()} == {
        "PredictionService": ["Classify", "Regress", "Predict", "GetModelMetadata"],
        "ModelService": ["GetModelStatus"],
    }
    assert {service.full_name for service in services.values()} == {
        "tensorflow.serving.PredictionService",
        "tensorflow.serving.ModelService",
    }


def test_the_open_inference_service_and_methods_are_kserves_v2():
    services = open_inference_pb2.DESCRIPTOR.services_by_name
    assert {service.full_name: [m.name for m in service.methods] for service in services.values()} == {
        "inference.GRPCInferenceService": [
            "ServerLive",
            "ServerReady",
            "ModelReady",
            "ServerMetadata",
            "ModelMetadata",
            "ModelInfer",
        ]
    }


def test_the_infer_messages_keep_kserves_field_numbers():
    request = open_inference_pb2.ModelInferRequest.DESCRIPTOR
    response = open_inference_pb2.ModelInferResponse.DESCRIPTOR
    assert {field.name: field.number for field in request.fields} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
        "raw_input_contents": 7,
    }  # fmt: skip
    assert {field.name: field.number for field in response.fields} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5, "raw_output_contents": 6,
    }  # fmt: skip
