"""ASGI middleware, outermost first: per-endpoint request counts, a catch-all for bugs (a
500 with a JSON body, counted), the API key (checked before any body is read), the
Content-Type, a body size limit and a body read deadline.

Each refuses with an OpenAI-style JSON error before the route (or FastAPI's body parsing)
runs, so hostile input costs no parsing, tokenising or decoding.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aurora_rl.runtime.metrics import ServingMetrics
from aurora_rl.runtime.protocol import APIError

logger = logging.getLogger(__name__)

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


def error_response(error: APIError) -> Response:
    """The JSON response of ``error`` (ASCII-escaped: a message may quote a lone surrogate
    a client sent, which UTF-8 cannot carry)."""
    return Response(json.dumps(error.body(), ensure_ascii=True), error.status, headers=error.headers,
                    media_type="application/json")  # fmt: skip


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body exceeds this server's limit of {limit} bytes (server.max_body_bytes); "
                         "send a shorter prompt.", code="request_too_large")  # fmt: skip


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, without reading them.

    A declared ``Content-Length`` over the limit is answered at once; a body without one
    (chunked) is counted as it arrives and cut off the moment it passes the limit (the
    route's body reading then fails with the 413).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await error_response(too_large(self.limit))(scope, receive, send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI passes an HTTPException raised while reading the body through
                    # to the exception handlers, which render it as an OpenAI error.
                    raise HTTPException(413, too_large(self.limit).message)
            return message

        await self.app(scope, counting_receive, send)


class CountRequests:
    """Count answered HTTP requests by endpoint and status code (unknown paths as "other",
    so random URLs cannot blow up the label set)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/v1/models/{model}" if path.startswith("/v1/models/") else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http_requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


class CatchAll:
    """A bug anywhere below becomes a 500 with a JSON body (never plain text), logged with its
    traceback and counted in ``aurora_internal_errors_total``; a response already under way
    is only logged and counted (its connection closes)."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("internal error answering %s %s", scope.get("method"), scope.get("path"))
            self.metrics.internal_errors.inc()
            if not started:
                error = APIError(500, "The server failed on this request (a bug: it was logged and counted in "
                                      "aurora_internal_errors_total); retry, and report it if it persists.",
                                 code="internal_error")  # fmt: skip
                await error_response(error)(scope, receive, send)


class HeaderLimit:
    """Request headers over ``limit`` bytes get 431. (h11 itself refuses a head that is
    still incomplete past the limit; one that arrives whole is measured here.)"""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) + 4 for name, value in scope["headers"])  # "name: value\r\n"
            if size > self.limit:
                error = APIError(431, f"The request headers are {size} bytes; this server accepts at most {self.limit} "
                                      "(server.max_header_bytes). Send fewer or shorter headers.",
                                 code="headers_too_large")  # fmt: skip
                return await error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


class RequireKey:
    """``/v1/*`` needs ``Authorization: Bearer <key>`` (scheme in any case) when a key is set,
    checked before the body is read: a request without the key gets 401, not a parse error."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http" or not scope["path"].startswith("/v1"):
            return await self.app(scope, receive, send)
        value = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            error = APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer <key>'.",
                             code="missing_api_key")  # fmt: skip
        elif not hmac.compare_digest(token.strip().encode("latin-1"), self.api_key.encode()):
            error = APIError(401, "Incorrect API key provided; use the key this server was started with "
                                  "(server.api_key or $AURORA_RL_API_KEY).", code="invalid_api_key")  # fmt: skip
        else:
            return await self.app(scope, receive, send)
        await error_response(error)(scope, receive, send)


class RequireJSON:
    """A ``POST`` body declared as anything but JSON gets 415 naming the Content-Type it had
    (a body without a Content-Type is parsed as JSON)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            declared = dict(scope["headers"]).get(b"content-type")
            media = (declared or b"").decode("latin-1").split(";")[0].strip().lower()
            if declared is not None and media != "application/json" and not media.endswith("+json"):
                error = APIError(415, f"Unsupported Content-Type '{declared.decode('latin-1')}': send the body as "
                                      "JSON with Content-Type: application/json.", code="unsupported_media_type")  # fmt: skip
                return await error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


class ReadTimeout:
    """The whole request body must arrive within ``seconds`` of its headers: a client that
    sends less than its Content-Length (or stalls a chunked body) gets 408 and its connection
    is closed, instead of holding it open for ever."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # afterwards receive only reports a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                raise HTTPException(408, f"The request body did not arrive within {self.seconds:g} s "
                                         "(server.read_timeout); send the whole body at once.",
                                    headers={"Connection": "close"}) from None  # fmt: skip
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)
