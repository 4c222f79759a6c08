"""The gRPC front: TF Serving's gRPC API and the Open Inference Protocol's, on port 8500.

`server` builds and runs it (health, reflection, its limits and its stop); `tf_serving` and `v2` are its
servicers, `errors` every failure's status code. Each method reads its message, calls one verb of the
service, and writes the answer.
"""
