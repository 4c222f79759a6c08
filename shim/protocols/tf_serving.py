"""TF Serving's REST and gRPC API, as the service's values: its instances in (payloads), its status and metadata out.

Payloads: the JSON body of the REST routes (forwarded as it came, the handler reads it again instance
by instance) and the encoded images of a gRPC request (sent upstream as the images body: no base64, no
JSON). Each checks itself against the model's description before inference: what its task cannot
answer (a verb, a signature, an output filter) is refused then. Bodies: TF Serving's
model_version_status (with KServe v1's `name` and `ready`) and its metadata, with the fastai facts a
client needs (task, classes, inputs) beside the signatures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastai_serving.contract.bodies import Body, check_answerable
from fastai_serving.contract.errors import BadInput
from fastai_serving.contract.images_wire import IMAGES_CONTENT_TYPE, images_body
from fastai_serving.contract.vocabulary import (
    CLASS_INDEX_SIGNATURE,
    CLASSIFIERS,
    EXAMPLES,
    IMAGE_INPUT,
    MULTI_LABEL,
    PREDICT,
    ROWS,
)
from fastai_serving_shim.calls import Description, ModelStatus
from fastai_serving_shim.protocols.schema import TF_DTYPES, input_element, output_of, output_shape

JSON_CONTENT_TYPE = "application/json"
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


# --- Instances in ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonPayload:
    """A REST body, checked for its outer shape by the front, forwarded upstream as it came."""

    raw: bytes
    body: Body
    needs_current_handler = False  # the body of every fastai-serving since the first

    @property
    def instances(self) -> int:
        return len(self.body.instances)

    def check(self, description: Description) -> None:
        check_answerable(description.task, self.body)

    def upstream(self, description: Description) -> tuple[bytes, str]:
        return self.raw, JSON_CONTENT_TYPE  # JSON whatever the client's Content-Type said


@dataclass(frozen=True)
class ImagesPayload:
    """The encoded images of a gRPC Predict, Classify or Regress, and what the call asks of its answer."""

    images: Sequence[bytes]
    verb: str
    signature_name: str = ""
    output_filter: Sequence[str] = field(default_factory=tuple)
    needs_current_handler = True  # the images body

    @property
    def instances(self) -> int:
        return len(self.images)

    def check(self, description: Description) -> None:
        form = ROWS if self.verb == PREDICT else EXAMPLES
        check_answerable(description.task, Body(form, list(self.images), self.verb, self.signature_name))
        if self.verb == PREDICT:
            check_output_filter(description.task, self.signature_name, self.output_filter)

    def upstream(self, description: Description) -> tuple[bytes, str]:
        return images_body(self.images, self.signature_name), IMAGES_CONTENT_TYPE


def check_output_filter(task: str, signature_name: str, output_filter: Sequence[str]) -> None:
    """Refuse a Predict whose task cannot answer its signature or whose output filter names another output."""
    if signature_name == CLASS_INDEX_SIGNATURE and task == MULTI_LABEL:
        raise BadInput(
            "signature_name 'classes' of a multi-label model answers a list of class indices per image, "
            "which no tensor holds: use serving_default (one score per class) and threshold it"
        )
    name = output_of(task, signature_name).tf_name
    unknown = [alias for alias in output_filter if alias != name]
    if unknown:
        raise BadInput(f"output_filter names {unknown[0]!r}: this signature's one output is {name!r}")


# --- Status and metadata out -------------------------------------------------------------------------


def status_body(status: ModelStatus) -> tuple[int, dict[str, Any]]:
    """TF Serving's model_version_status (plus KServe v1's name and ready); 200 only when it can serve."""
    statuses = [
        {
            "version": version.version,
            "state": "AVAILABLE" if version.ready else "LOADING",
            "status": {
                "error_code": "OK" if version.ready else "UNAVAILABLE",
                "error_message": "" if version.ready else "no worker is ready yet",
            },
        }
        for version in status.versions
    ]
    body = {"model_version_status": statuses, "name": status.model, "ready": status.ready}
    return (200 if status.ready else 503), body


def signature_inputs(described: Mapping[str, Any]) -> dict[str, Any]:
    """TF Serving's tensor info for each input the handler describes: the image, the text, or each column."""
    inputs = described.get("inputs") or [{"name": IMAGE_INPUT, "kind": "image"}]
    return {
        str(item["name"]): {
            "dtype": TF_DTYPES[input_element(item)],
            "tensor_shape": {"dim": [{"size": "-1"}]},
            "name": f"{item['name']}:0",
        }
        for item in inputs
    }


def metadata_body(description: Description) -> dict[str, Any]:
    """TF Serving's metadata shape, with the fastai facts a client needs (task, classes, inputs)."""
    described = description.described
    output = output_of(description.task)
    dims = {"dim": [{"size": str(size)} for size in output_shape(described)]}
    inputs = signature_inputs(described)
    signatures = {
        DEFAULT_SIGNATURE: {
            "inputs": inputs,
            "outputs": {
                output.tf_name: {"dtype": TF_DTYPES[output.element], "tensor_shape": dims, "name": "outputs:0"}
            },
            "method_name": PREDICT_METHOD,
        }
    }
    if description.task in CLASSIFIERS:
        indices = output_of(description.task, CLASS_INDEX_SIGNATURE)
        signatures[CLASS_INDEX_SIGNATURE] = {
            "inputs": inputs,
            "outputs": {
                indices.tf_name: {
                    "dtype": TF_DTYPES[indices.element],
                    "tensor_shape": {"dim": [{"size": "-1"}]},
                    "name": "classes:0",
                }
            },
            "method_name": PREDICT_METHOD,
        }
    return {
        "model_spec": {"name": description.model, "signature_name": "", "version": description.version},
        "metadata": {"signature_def": {"signature_def": signatures}, "fastai": dict(described)},
    }
