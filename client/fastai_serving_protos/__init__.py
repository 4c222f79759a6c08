"""The gRPC messages and services, TF Serving's (tensorflow_*) and the Open Inference Protocol's (open_inference,
KServe v2), shared by the gRPC front (shim/) and the batch client (client/).

The .proto files here are the single source; the *_pb2*.py modules are generated from them by
`make protos` (scripts/protos.py) and committed: do not edit them. tests/test_grpc_protos.py
fails while they are stale. They live in client/ so that `pip install './client[grpc]'` ships them
with predict-batch; the server's package (pyproject.toml) ships the same folder.
"""
