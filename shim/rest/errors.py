"""The REST front's answers of JSON with a status, and every failure as an HTTP status and {"error": "<message>"}.

Nothing leaks a stack trace or an HTML page: the service's failures (every `ServingError`, of the
contract's `Failure` kinds), the routes' own (no such route, wrong method) and werkzeug's (a body
over the limit) all end here, in one table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from fastai_serving.contract.errors import HTTP_STATUS, Failure, Overloaded, ServingError
from fastai_serving_shim import observed

# nginx answers some methods (TRACE, CONNECT) 405 itself, with an HTML body and no Allow header: it asks the shim
# instead, as OPTIONS with this header naming the method it refused (scripts/nginx.conf), and passes on its answer.
REFUSED_METHOD_HEADER = "X-Fastai-Serving-Refused-Method"
BEARER_CHALLENGE = 'Bearer realm="fastai-serving"'  # RFC 6750: how a 401 says which credentials it takes


class RouteError(Exception):
    """A request no route answers (404) or a method a route does not take (405, with the methods it takes)."""

    def __init__(self, status: int, message: str, allowed: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.allowed = status, message, allowed or []


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer with its status (and headers): every answer of the REST front that is not a passed-on body."""
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def error_response(status: int, message: str, allowed: list[str] | None = None) -> Response:
    # RFC 9110: a 405 names the methods the resource takes
    return json_response(status, {"error": message}, {"Allow": ", ".join(allowed)} if allowed else None)


def not_allowed(method: str, path: str, allowed: list[str]) -> RouteError:
    """A 405 for `method` on `path`, naming the methods it takes (404 where no route takes any)."""
    if not allowed:
        return RouteError(404, f"no such route {path}: see /openapi.yaml for the API")
    return RouteError(405, f"{method} is not allowed on {path}: it takes {', '.join(allowed)}", allowed)


def register_error_handlers(app: Flask, allowed_methods: Callable[[str], list[str]]) -> None:
    """Turn every error, the service's, the body contract's or werkzeug's, into a JSON body.

    `allowed_methods(path)`: the methods a path takes, for every 405's Allow header.
    """

    @app.before_request
    def refused_by_the_proxy() -> None:
        refused = request.headers.get(REFUSED_METHOD_HEADER)
        if refused and request.method == "OPTIONS":
            raise not_allowed(refused[:16], request.path, allowed_methods(request.path))

    @app.errorhandler(ServingError)
    def failed(error: ServingError) -> Response:
        response = error_response(HTTP_STATUS[error.failure], error.message)
        if isinstance(error, Overloaded):  # RFC 9110: whole seconds; at least 1
            response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
        if error.failure is Failure.UNAUTHENTICATED:
            response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
        return response

    @app.errorhandler(RouteError)
    def no_route(error: RouteError) -> Response:
        return error_response(error.status, error.message, error.allowed)

    @app.errorhandler(MethodNotAllowed)
    def wrong_method(error: MethodNotAllowed) -> Response:
        return no_route(not_allowed(request.method, request.path, allowed_methods(request.path)))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        messages = {
            404: "no such route: see /openapi.yaml for the API",
            413: f"request body over the limit of {app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        return error_response(error.code or 500, messages.get(error.code, error.description or error.name))

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        record = observed.current()
        app.logger.exception("unexpected error (request %s)", record.request_id if record else "-")
        return error_response(500, "internal error in the shim")
