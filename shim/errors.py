"""Every error the shim answers is TF-Serving-shaped: {"error": "<message>"}, never an HTML page."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException


class ShimError(Exception):
    """An error with the HTTP status it is answered with; raised where it is detected."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    """Turn every error, ours or werkzeug's, into a JSON body; nothing leaks a stack trace."""

    @app.errorhandler(ShimError)
    def shim_error(error: ShimError):
        return error_response(error.status, error.message)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        messages = {
            404: "no such route: see /openapi.yaml for the API",
            405: "method not allowed on this route",
            413: f"request body over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        return error_response(error.code or 500, messages.get(error.code, error.description or error.name))

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        app.logger.exception("unexpected error")
        return error_response(500, "internal error in the shim")
