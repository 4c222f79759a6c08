"""The gRPC front's .proto files are the single source: the committed generated code is what they make.

Regenerate with `make protos` after editing client/fastai_serving_protos/*.proto. tests/test_grpc.py checks the
same messages against TF Serving's own descriptors, field by field.
"""

from __future__ import annotations

from fastai_serving_protos import tensorflow_serving_pb2
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
