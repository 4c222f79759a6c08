"""The Open Inference Protocol's own Python clients, driven over stdin/stdout: the tests' real v2 clients.

Runs with the test-only environment's Python (.venv-v2client: tritonclient[http,grpc] and the KServe
SDK, which pin their own grpcio and protobuf), not as part of the `harness` package:
`.venv-v2client/bin/python harness/v2_client.py triton|kserve HOST:REST_PORT HOST:GRPC_PORT`: one family
per process, since tritonclient's and KServe's generated protos both register the `inference` package
and cannot share one. Each line on stdin is one JSON command naming its client (`triton_http`,
`triton_grpc`, `kserve_rest`, `kserve_grpc`); each answer is one JSON line on stdout. Requests are built as those clients' users build them (an
`InferInput` with `set_data_from_numpy`, binary or JSON) and answers read as they read them
(`as_numpy`). harness/v2_clients.py runs it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from importlib import metadata
from typing import Any

import grpc
import httpx
import numpy as np

FAMILY = sys.argv[1] if __name__ == "__main__" else "triton"
if FAMILY == "kserve":
    import kserve
else:
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

REFUSALS = () if FAMILY == "kserve" else (InferenceServerException,)
NUMPY_TYPES = {"BYTES": np.object_, "BOOL": np.bool_, "INT64": np.int64, "INT32": np.int32, "FP32": np.float32,
               "FP64": np.float64}  # fmt: skip


def array_of(entry: dict) -> np.ndarray:
    """An input's elements as numpy: "b64" (bytes), "strings" (UTF-8 bytes, as a user's texts) or "values"."""
    if "b64" in entry:
        values = [base64.b64decode(value) for value in entry["b64"]]
    elif "strings" in entry:
        values = [value.encode("utf-8") for value in entry["strings"]]
    else:
        values = entry["values"]
    array = np.array(values, dtype=NUMPY_TYPES[entry["datatype"]])
    return array.reshape(entry.get("shape", [len(values)]))


def output_of(name: str, datatype: str, array: np.ndarray) -> dict:
    values = [base64.b64encode(v).decode() for v in array.ravel()] if datatype == "BYTES" else array.tolist()
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "values": values}


class Clients:
    def __init__(self, rest: str, grpc_address: str) -> None:
        self.rest, self.grpc = rest, grpc_address
        if FAMILY == "triton":
            self.triton_http = triton_http.InferenceServerClient(url=rest, network_timeout=120)
            self.triton_grpc = triton_grpc.InferenceServerClient(url=grpc_address)
        self.loop = asyncio.new_event_loop()

    # --- tritonclient ------------------------------------------------------------------------

    def triton(self, command: dict) -> Any:
        return triton_grpc if command["client"] == "triton_grpc" else triton_http

    def triton_client(self, command: dict) -> Any:
        return self.triton_grpc if command["client"] == "triton_grpc" else self.triton_http

    def triton_infer(self, command: dict) -> dict:
        module, client = self.triton(command), self.triton_client(command)
        binary = command.get("binary", True)
        inputs = []
        for entry in command["inputs"]:
            array = array_of(entry)
            tensor = module.InferInput(entry["name"], list(array.shape), entry["datatype"])
            if module is triton_http:
                tensor.set_data_from_numpy(array, binary_data=binary)
            else:
                tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = None
        if command.get("outputs"):
            if module is triton_http:
                binary_output = command.get("binary_output", True)
                outputs = [module.InferRequestedOutput(name, binary_data=binary_output) for name in command["outputs"]]
            else:
                outputs = [module.InferRequestedOutput(name) for name in command["outputs"]]
        result = client.infer(command["model"], inputs, model_version=command.get("version", ""), outputs=outputs)
        response = result.get_response(as_json=True) if module is triton_grpc else result.get_response()
        return {
            "model_name": response["model_name"],
            "model_version": response.get("model_version", ""),
            "outputs": [output_of(o["name"], o["datatype"], result.as_numpy(o["name"])) for o in response["outputs"]],
        }

    def triton_health(self, command: dict) -> dict:
        client = self.triton_client(command)
        answer = {"live": client.is_server_live(), "ready": client.is_server_ready()}
        if command.get("model"):
            answer["model_ready"] = client.is_model_ready(command["model"], command.get("version", ""))
        return answer

    def triton_metadata(self, command: dict) -> dict:
        client = self.triton_client(command)
        as_json = {"as_json": True} if command["client"] == "triton_grpc" else {}
        return {
            "server": client.get_server_metadata(**as_json),
            "model": client.get_model_metadata(command["model"], command.get("version", ""), **as_json),
        }

    # --- KServe's SDK ------------------------------------------------------------------------

    def kserve_request(self, command: dict) -> Any:
        inputs = []
        for entry in command["inputs"]:
            array = array_of(entry)
            tensor = kserve.InferInput(entry["name"], list(array.shape), entry["datatype"])
            if command["client"] == "kserve_rest" and not command.get("binary", False):
                tensor.set_data_from_numpy(array, binary_data=False)  # KServe's REST default: JSON tensors
            else:
                tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        outputs = [kserve.RequestedOutput(name) for name in command.get("outputs", [])] or None
        return kserve.InferRequest(
            model_name=command["model"], infer_inputs=inputs, request_outputs=outputs,
            model_version=command.get("version"),
        )  # fmt: skip

    async def kserve_call(self, command: dict, call: str) -> dict:
        base_url = f"http://{self.rest}"
        if command["client"] == "kserve_rest":
            async with kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0)) as client:
                if call == "infer":
                    return self.kserve_answer(
                        await client.infer(base_url, self.kserve_request(command), command["model"])
                    )
                answer = {
                    "live": await client.is_server_live(base_url),
                    "ready": await client.is_server_ready(base_url),
                }
                if command.get("model"):
                    answer["model_ready"] = await client.is_model_ready(base_url, command["model"])
                return answer
        async with kserve.InferenceGRPCClient(self.grpc, retries=0) as client:
            if call == "infer":
                return self.kserve_answer(await client.infer(self.kserve_request(command)))
            answer = {"live": await client.is_server_live(), "ready": await client.is_server_ready()}
            if command.get("model"):
                answer["model_ready"] = await client.is_model_ready(command["model"])
            return answer

    @staticmethod
    def kserve_answer(response: Any) -> dict:
        return {
            "model_name": response.model_name,
            "model_version": response.model_version or "",
            "outputs": [output_of(o.name, o.datatype, o.as_numpy()) for o in response.outputs],
        }

    # --- dispatch ----------------------------------------------------------------------------

    def run(self, command: dict) -> dict:
        call, client = command["call"], command["client"]
        if client.startswith("kserve"):
            return self.loop.run_until_complete(self.kserve_call(command, call))
        return getattr(self, f"triton_{call}")(command)


def failure(error: BaseException) -> dict:
    """How each client reports a refusal: an HTTP status or a gRPC code, and the server's message."""
    if FAMILY == "triton" and isinstance(error, InferenceServerException):
        return {"ok": False, "status": str(error.status()).removeprefix("StatusCode."), "message": error.message()}
    if isinstance(error, httpx.HTTPStatusError):
        return {"ok": False, "status": str(error.response.status_code), "message": error.response.json().get("error")}
    if isinstance(error, grpc.RpcError):
        return {"ok": False, "status": error.code().name, "message": error.details()}
    return {"ok": False, "status": type(error).__name__, "message": str(error)}


def main() -> int:
    clients = Clients(sys.argv[2], sys.argv[3])
    print(json.dumps({"ready": metadata.version("tritonclient" if FAMILY == "triton" else "kserve")}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = {"ok": True, **clients.run(command)}
        except (*REFUSALS, httpx.HTTPStatusError, grpc.RpcError) as error:
            answer = failure(error)
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
