"""Every error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: the
exception routes raise (``ServeError``), the handlers that turn every other failure into that
shape (validation, unknown routes, wrong methods, unreadable bodies, a full queue, a bug), the
request body limit (413) and the OpenAPI schema that states these answers.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coh.generation.engine import QueueFull
from coh.serve.schemas import Refusal, describe_validation

RETRY_AFTER_S = 1
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, the logs do
# OpenAI's error "type" for each status this server answers.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 503: "server_busy"}


class ServeError(Exception):
    """An answer other than 200: ``status``, a ``message`` that names what was wrong, the field
    at fault (``param``), OpenAI's error ``error_type`` and extra response ``headers``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 error_type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.error_type, self.headers = status, message, param, error_type, headers


def busy(e: QueueFull) -> ServeError:
    """503 with ``Retry-After``: the engine's queue is full."""
    return ServeError(503, str(e), error_type="server_busy", headers={"Retry-After": str(RETRY_AFTER_S)})


def error_response(status: int, message: str, param: str | None = None, error_type: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    error_type = error_type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": error_type, "param": param, "code": status}}, status,
                        headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every failure in OpenAI's shape, 400 (not FastAPI's 422) for a bad body."""

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError):
        return error_response(e.status, e.message, e.param, e.error_type, e.headers)

    @app.exception_handler(Refusal)
    async def refused(request: Request, e: Refusal):
        return error_response(400, e.message, e.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        message, param = describe_validation(e.errors())
        return error_response(400, message, param)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, e: QueueFull):
        error = busy(e)
        return error_response(error.status, error.message, error_type=error.error_type, headers=error.headers)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, e: ValueError):
        return error_response(400, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return error_response(e.status_code, _http_message(request, e), headers=e.headers)

    @app.exception_handler(Exception)
    async def crash(request: Request, e: Exception):  # a bug: say so in the API's shape (uvicorn logs the trace)
        return error_response(500, f"internal error: {type(e).__name__}: {e}", error_type="server_error")


def _http_message(request: Request, e: StarletteHTTPException) -> str:
    if e.status_code == 404:
        return f"no route {request.url.path}: see /openapi.json for this server's routes"
    if e.status_code == 405:
        allowed = (e.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}" if allowed else "")
    cause = e.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8: byte 0x{cause.object[cause.start]:02x} at position {cause.start} ({cause.reason})"
    if isinstance(cause, RecursionError):
        return "the body nests JSON arrays or objects too deeply"
    if cause is not None and e.status_code == 400:
        return f"the body could not be read as JSON: {type(cause).__name__}: {cause}"
    return str(e.detail)


class BodyLimit:
    """413, in the API's error shape, for a body over the limit: at once when Content-Length says
    so, else as soon as the bytes received pass it. (Starlette's own limit answers in plain text.)"""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return (f"the request body is larger than this server's limit of {self.limit / 2**20:.3g} MiB "
                "(coh serve --max-body-mb)")

    async def _too_large(self, scope, receive, send) -> None:
        await error_response(413, self._message(), headers={"Connection": "close"})(scope, receive, send)


ERRORS = {400: "malformed or out-of-range request, unsupported field, text that is not Unicode",
          401: "missing or wrong API key", 404: "unknown route or model", 405: "wrong method",
          413: "body over --max-body-mb", 500: "the model failed on this batch", 503: "queue full (see Retry-After)"}
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": "integer"}}}}}
STREAMING_ROUTES = ("/v1/completions", "/v1/chat/completions")


def openapi(app: FastAPI) -> dict:
    """FastAPI's schema with the errors this server really answers (OpenAI's shape, 400 for a bad
    body) instead of FastAPI's 422, and streaming routes that may answer server-sent events."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        components["Error"] = ERROR_SCHEMA
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                responses = operation["responses"]
                responses.pop("422", None)
                for code, why in ERRORS.items():
                    responses.setdefault(str(code), {"description": why, "content": error})
                if path in STREAMING_ROUTES:
                    # Each event is a JSON chunk of the answer (or "[DONE]") in its data field.
                    responses["200"]["content"]["text/event-stream"] = {"schema": {
                        "type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}}
        app.openapi_schema = schema
    return app.openapi_schema
