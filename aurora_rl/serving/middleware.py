"""ASGI middleware: a request-body size limit, and per-endpoint HTTP request counts."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aurora_rl.serving.metrics import ServingMetrics
from aurora_rl.serving.protocol import APIError

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


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
            error = too_large(self.limit)
            return await JSONResponse(error.body(), error.status)(scope, receive, send)
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
