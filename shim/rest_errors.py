"""The REST front's errors: every failure as an HTTP status and {"error": "<message>"}, in one place.

Nothing leaks a stack trace or an HTML page: the service's failures, the core's errors, the
routes' own (no such route, wrong method) and werkzeug's (a body over the limit) all end here.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from fastai_serving.errors import ServingError
from fastai_serving_shim.errors import Failure, ServiceError, service_error

HTTP_STATUS = {
    Failure.BAD_INPUT: 400,
    Failure.NOT_FOUND: 404,
    Failure.TOO_LARGE: 413,
    Failure.MODEL_FAILED: 500,
    Failure.UNAVAILABLE: 503,
    Failure.TIMEOUT: 504,
    Failure.OUTDATED_ARCHIVE: 412,
    Failure.REFUSED: 400,  # unless TorchServe's own status says otherwise
}


class RouteError(Exception):
    """A request no route answers (404) or a method a route does not take (405): REST's own errors."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def status_of(error: ServiceError) -> int:
    return error.upstream_status or HTTP_STATUS[error.failure]


def error_response(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn every error, the service's, the body contract's or werkzeug's, into a JSON body."""

    @app.errorhandler(ServiceError)
    def failed(error: ServiceError) -> Response:
        return error_response(status_of(error), error.message)

    @app.errorhandler(ServingError)
    def core_error(error: ServingError) -> Response:
        return failed(service_error(error))

    @app.errorhandler(RouteError)
    def no_route(error: RouteError) -> Response:
        return error_response(error.status, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        messages = {
            404: "no such route: see /openapi.yaml for the API",
            405: "method not allowed on this route",
            413: f"request body over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        return error_response(error.code or 500, messages.get(error.code, error.description or error.name))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        app.logger.exception("unexpected error")
        return error_response(500, "internal error in the shim")
