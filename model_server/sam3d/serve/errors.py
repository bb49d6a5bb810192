"""Every error the API answers, as a real HTTP status with a JSON body {"error", "message", "hint"}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from ..engine.session import InvalidBox, NothingToUndo, SessionLimit

log = logging.getLogger("sam3d.serve")


class APIError(Exception):
    """An error answered as ``status`` with the code, message and hint of docs/PROTOCOL.md."""

    status = 500
    code = "internal_error"
    hint = "This is a bug: the session is unchanged and the server keeps running; see the server log."

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def body(self) -> dict:
        return {"error": self.code, "message": self.message, "hint": self.hint}


class BadRequest(APIError):
    status, code = 400, "bad_request"
    hint = "Fix the request as the message says; see docs/PROTOCOL.md."


class Unauthorized(APIError):
    status, code = 401, "unauthorized"
    hint = "Send 'Authorization: Bearer <key>' with the key the server was started with (--api-key or SAM3D_API_KEY)."


class HostNotAllowed(APIError):
    status, code = 400, "host_not_allowed"
    hint = ("Reach the server by a name it serves (loopback names by default); start it with "
            "--allowed-hosts NAME to serve another name.")


class OriginNotAllowed(APIError):
    status, code = 403, "origin_not_allowed"
    hint = ("Web pages of other origins may not use this server (browser safety); start it with "
            "--cors-origin ORIGIN to allow one.")


class TooManyAuthFailures(APIError):
    status, code = 429, "too_many_auth_failures"
    hint = "Too many requests with a missing or wrong API key from this address; wait and retry with the right key."


class SessionNotFound(APIError):
    status, code = 404, "session_not_found"
    hint = "Create a session by uploading the volume (POST /v1/sessions)."


class NotFound(APIError):
    status, code = 404, "not_found"
    hint = "See GET /openapi.json for the API's paths."


class MethodNotAllowed(APIError):
    status, code = 405, "method_not_allowed"
    hint = "See GET /openapi.json for the methods each path accepts."


# The engine's own errors, answered with these statuses, codes and hints (the engine knows no HTTP).
ENGINE_ERRORS: dict[type[Exception], tuple[int, str, str]] = {
    NothingToUndo: (409, "nothing_to_undo", "The object has no earlier interaction to return to."),
    InvalidBox: (422, "invalid_box", "A box is two opposite corners [[k, j, i], [k, j, i]] inside the volume "
                 "spanning at least two axes, for a model whose capabilities list the 'box' prompt; see "
                 "docs/PROTOCOL.md."),
    SessionLimit: (409, "session_limit", "Start the next object (POST .../reset) or a new session; the "
                   "server's per-object limits are in GET /v1/capabilities."),
}


def engine_error(error: Exception) -> APIError | None:
    """The API error for one of the engine's ENGINE_ERRORS, or None."""
    for kind, (status, code, hint) in ENGINE_ERRORS.items():
        if isinstance(error, kind):
            answer = APIError(str(error), hint)
            answer.status, answer.code = status, code
            return answer
    return None


class SessionExpired(APIError):
    status, code = 410, "session_expired"
    hint = ("The session expired after a period without requests, or was closed while idle to make "
            "room for another user; upload the volume again.")


class PayloadTooLarge(APIError):
    status, code = 413, "payload_too_large"
    hint = ("Crop the volume to the region of interest, or start the server with a higher "
            "--max-upload-bytes / --max-voxels.")


class ServerAtCapacity(APIError):
    status, code = 503, "server_at_capacity"
    hint = "The server holds its maximum number of sessions; retry later or delete a session."


class ClientClosedRequest(APIError):
    status, code = 499, "client_closed_request"
    hint = "The client closed the connection before the request was complete; nothing was stored."


class OutOfMemory(APIError):
    status, code = 507, "out_of_memory"
    hint = "The device ran out of memory; the session is unchanged. Close other sessions or use a smaller volume."


class MemoryBudgetExceeded(APIError):
    status, code = 507, "memory_budget_exceeded"
    hint = ("The server's memory budget (--max-memory, --max-session-memory) cannot hold this; crop the "
            "volume, delete sessions you no longer use, or start the server with a larger budget.")


def error_response(error: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def send_error(scope, send, error: APIError) -> None:
    """Answer ``error`` from ASGI middleware, before the application sees the request (the
    connection is closed afterwards: an unread body is never read)."""
    response = error_response(error)
    response.headers["Connection"] = "close"
    await response(scope, None, send)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "the request does not match the API: " + "; ".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """Methods of every route whose path matches the request (a path may have several routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_handlers(app: FastAPI, count_error) -> None:
    """Answer validation errors, unknown paths and unexpected exceptions in the JSON error format;
    ``count_error()`` is called for every 5xx answer."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        if error.status >= 500:
            count_error()
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        if all(item.get("loc", ("body",))[0] != "body" for item in error.errors()):
            return error_response(BadRequest(_validation_message(error)))  # a malformed query: 400
        return JSONResponse({"error": "validation_error", "message": _validation_message(error),
                             "hint": "Send the body described in GET /openapi.json."}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # FastAPI wraps what goes wrong while it reads a JSON body (a body over the size limit, a
        # client gone) in a 400 "error parsing the body": answer the cause instead.
        if isinstance(error.__cause__, APIError):
            return error_response(error.__cause__)
        if isinstance(error.__cause__, ClientDisconnect):
            return await client_gone(request, error.__cause__)
        if error.status_code == 404:
            return error_response(NotFound(f"no such path: {request.method} {request.url.path}"))
        if error.status_code == 405:
            allowed = _allowed_methods(request)
            response = error_response(MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}"))
            response.headers["Allow"] = ", ".join(allowed)  # as RFC 9110 asks
            return response
        code = "bad_request" if error.status_code < 500 else "internal_error"
        return JSONResponse({"error": code, "message": str(error.detail), "hint": ""},
                            status_code=error.status_code)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> JSONResponse:
        log.info("client closed %s %s before its body arrived", request.method, request.url.path)
        return error_response(ClientClosedRequest(f"the client closed {request.url.path} mid-request"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        count_error()
        return error_response(APIError(f"unexpected {type(error).__name__}: {error}"))
