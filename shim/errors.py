"""Every error the shim answers is TF-Serving-shaped: {"error": "<message>"}, never an HTML page."""

from __future__ import annotations

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from fastai_serving.errors import ServingError


class ShimError(ServingError):
    """An error the shim detects (upstream down, a timeout): raised where detected, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status)


def error_response(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn every error, ours, the body contract's or werkzeug's, into a JSON body; nothing leaks a stack trace."""

    @app.errorhandler(ServingError)
    def serving_error(error: ServingError) -> Response:
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
