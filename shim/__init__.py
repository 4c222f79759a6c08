"""The fronts before TorchServe: TF Serving's REST and gRPC APIs and the Open Inference Protocol, over one service.

    rest/        the REST front (Flask under gunicorn, behind nginx): rest.app.create_app builds it
    grpc/        the gRPC front (grpc.aio): grpc.server runs it
    protocols/   the two protocols' words for the service's values, from one model schema
    service.py   the use case every front calls: one typed verb per thing a client asks (calls.py)
    torchserve.py  TorchServe's APIs, typed: the one module that knows them

Importing the package imports nothing else, so gunicorn's config can read the settings
before prometheus_client is imported (its multiprocess mode is chosen at import).
"""
