"""The HTTP front: an OpenAI-compatible FastAPI app over the decode engine.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both streaming over
SSE with ``stream: true``), ``GET /v1/models[/{id}]``, ``GET /health`` and ``GET /metrics``
(Prometheus text). ``/v1/*`` requires ``Authorization: Bearer <key>`` when a key is set.

Every refusal is an OpenAI-style error body ``{"error": {message, type, param, code}}``
with the status OpenAI uses: 400 (malformed JSON, invalid or unsupported parameter, prompt
or budget over the limits), 401 (missing or wrong key), 404 (unknown model or URL), 413
(body too large), 429 (queue full), 503 (shutting down). Nothing is decoded for a refused
request, and the server goes on serving the next one.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from transformers import PreTrainedTokenizerBase

from aurora_rl.core.sampling import SamplingParams
from aurora_rl.runtime.chat import format_chat
from aurora_rl.runtime.config import ServerSection
from aurora_rl.runtime.engine import Engine, GenerationRequest, RequestStats
from aurora_rl.runtime.follow import SnapshotFollower
from aurora_rl.runtime.generation import ClientGone, Piece, Submission, text_pieces, unless_disconnected
from aurora_rl.runtime.metrics import ServingMetrics, health_problems
from aurora_rl.runtime.middleware import (
    BodyLimit, CatchAll, CountRequests, HeaderLimit, ReadTimeout, RequireJSON, RequireKey, error_response,
)  # fmt: skip
from aurora_rl.online.learning import OnlineLearning
from aurora_rl.runtime.protocol import (
    APIError, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
    ChatDelta, ChatMessageOut, CompletionChoice, CompletionRequest, CompletionResponse, ModelCard, ModelList,
    SpecDecodeStats, Usage, validation_error,
)  # fmt: skip
from aurora_rl.online.publish import LivePolicy
from aurora_rl.online.snapshots import SnapshotStore

EXTENSION_FIELDS = ("usage", "spec_decode", "system_fingerprint")


def _dump(model: BaseModel) -> dict:
    """A response as JSON: standard fields always present (null included, as OpenAI sends
    them); extension and optional top-level fields only when set."""
    data = model.model_dump(mode="json")
    for key in EXTENSION_FIELDS:
        if data.get(key) is None:
            data.pop(key, None)
    for choice in data.get("choices", ()):
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return data


def _fingerprint(version: int | None) -> str | None:
    return None if version is None else f"draft-v{version}"


def _usage(stats: RequestStats) -> Usage:
    return Usage(prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                 total_tokens=stats.prompt_tokens + stats.completion_tokens)  # fmt: skip


def _spec(stats: RequestStats) -> SpecDecodeStats:
    return SpecDecodeStats(verify_steps=stats.verify_steps, proposed_tokens=stats.proposed_tokens,
                           accepted_tokens=stats.accepted_tokens, accepted_length=stats.accepted_length,
                           draft_versions=list(stats.draft_versions))  # fmt: skip


async def _sse(events: AsyncIterator[BaseModel]) -> AsyncIterator[str]:
    """Server-sent events: one ``data:`` line per chunk, then ``[DONE]``; an error after the
    stream started is sent as an OpenAI error event (clients raise it)."""
    try:
        async for event in events:
            yield f"data: {json.dumps(_dump(event), ensure_ascii=False)}\n\n"
    except APIError as error:
        yield f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
        return
    yield "data: [DONE]\n\n"


def create_app(
    *,
    engine: Engine,
    live: LivePolicy,
    tokenizer: PreTrainedTokenizerBase,
    config: ServerSection,
    model_name: str,
    metrics: ServingMetrics,
    learning: OnlineLearning | None = None,
    follower: SnapshotFollower | None = None,
    snapshots: SnapshotStore | None = None,
) -> FastAPI:
    """The app. Its lifespan starts the engine (and learner, or snapshot follower) and, on
    shutdown, stops the follower, drains the engine for ``config.drain_seconds``, then stops
    the learner and saves its state."""
    created = int(time.time())
    max_prompt = min(config.max_prompt_tokens or engine.max_context, engine.max_context - 1)
    max_token_bytes = max(len(token.encode("utf-8", "surrogatepass")) for token in tokenizer.get_vocab())
    default = engine.decode.sampling

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        if learning is not None:
            learning.start()
        if follower is not None:
            follower.start(live)
        try:
            yield
        finally:
            if follower is not None:  # no swap while draining
                await asyncio.to_thread(follower.stop)
            await asyncio.to_thread(engine.close, config.drain_seconds)
            if learning is not None:
                await asyncio.to_thread(learning.stop)

    app = FastAPI(title="aurora_rl", summary="Online speculative decoding, OpenAI-compatible", lifespan=lifespan)
    app.add_middleware(ReadTimeout, seconds=config.read_timeout)  # innermost
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequireJSON)
    app.add_middleware(RequireKey, api_key=config.api_key)
    app.add_middleware(HeaderLimit, limit=config.max_header_bytes)
    app.add_middleware(CatchAll, metrics=metrics)
    app.add_middleware(CountRequests, metrics=metrics)  # outermost: counts every answer, 500s included

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return await api_error(request, validation_error(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            message, code = f"Unknown request URL: {request.method} {request.url.path}. See GET /v1/models.", "unknown_url"
        elif error.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
        else:
            message, code = str(error.detail), {413: "request_too_large", 408: "request_timeout"}.get(error.status_code)
        return error_response(APIError(error.status_code, message, code=code, headers=error.headers))

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{model_name}' "
                                "(see GET /v1/models).", "model", "model_not_found")  # fmt: skip

    def plan(body, ids: list[int], max_tokens: int | None, budget_param: str, prompt_param: str, prefix: str) -> GenerationRequest:
        """Check a tokenised request against the limits and turn it into an engine request."""
        if (error := body.unsupported()) is not None:
            raise error
        if len(ids) > max_prompt:
            raise APIError(400, f"The prompt is {len(ids)} tokens long; this server accepts at most {max_prompt} "
                                "(server.max_prompt_tokens). Shorten the prompt.", prompt_param, "context_length_exceeded")  # fmt: skip
        room = engine.max_context - len(ids)
        if max_tokens is None:
            budget = min(config.default_max_tokens, room)
        elif max_tokens > config.max_tokens:
            raise APIError(400, f"Invalid '{budget_param}': {max_tokens} is more than this server allows "
                                f"({config.max_tokens}, server.max_tokens).", budget_param, "invalid_value")  # fmt: skip
        elif max_tokens > room:
            raise APIError(400, f"This model's maximum context length is {engine.max_context} tokens. However, you "
                                f"requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, {max_tokens} for "
                                f"the completion). Please reduce the prompt or '{budget_param}'.",
                           budget_param, "context_length_exceeded")  # fmt: skip
        else:
            budget = max_tokens
        sampling = SamplingParams(
            default.temperature if body.temperature is None else body.temperature,
            default.top_k if body.top_k is None else body.top_k,
            default.top_p if body.top_p is None else body.top_p,
        )
        return GenerationRequest(f"{prefix}-{uuid.uuid4().hex}", tuple(ids), budget, sampling, body.seed)

    def check_size(texts: list[str], param: str) -> None:
        """Refuse text that cannot fit before tokenising it (a token spans at most
        ``max_token_bytes`` bytes, so the count of bytes bounds the count of tokens)."""
        size = sum(len(text.encode("utf-8")) for text in texts)
        if (at_least := -(-size // max_token_bytes)) > max_prompt:
            raise APIError(400, f"The prompt is at least {at_least} tokens long ({size} bytes of text); this server accepts "
                                f"at most {max_prompt} (server.max_prompt_tokens). Shorten the prompt.", param,
                           "context_length_exceeded")  # fmt: skip

    async def encode(prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            check_size([prompt], "prompt")
            return (await asyncio.to_thread(tokenizer, prompt))["input_ids"]  # off the event loop
        bad = [t for t in prompt if not 0 <= t < engine.vocab_size]
        if bad:
            raise APIError(400, f"Invalid 'prompt': token ids {bad[:5]} lie outside the vocabulary [0, {engine.vocab_size}).",
                           "prompt", "invalid_value")  # fmt: skip
        return list(prompt)

    async def finished(http: Request, pieces: AsyncIterator[Piece]) -> tuple[str, Piece]:
        """The whole text and the last piece of a non-streamed answer; decoding is
        cancelled if the client disconnects first (then a 499 goes nowhere)."""

        async def collect() -> tuple[str, Piece]:
            text, last = "", None
            async for last in pieces:
                text += last.text
            return text, last

        try:
            return await unless_disconnected(http.receive, collect())
        except ClientGone:
            raise APIError(499, "The client closed the connection before the answer was ready; decoding was cancelled.",
                           code="client_closed_request") from None  # fmt: skip

    v1 = APIRouter(prefix="/v1")

    @v1.get("/models")
    async def models() -> dict:
        return _dump(ModelList(data=[ModelCard(id=model_name, created=created)]))

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        check_model(model_id)
        return _dump(ModelCard(id=model_name, created=created))

    @v1.post("/completions")
    async def completions(body: CompletionRequest, http: Request):
        check_model(body.model)
        request = plan(body, await encode(body.single_prompt()), body.max_tokens, "max_tokens", "prompt", "cmpl")
        submission = Submission(engine, request)
        pieces = text_pieces(submission, tokenizer, body.stop_strings())
        now = int(time.time())

        def chunk(text: str, piece: Piece) -> CompletionResponse:
            return CompletionResponse(
                id=request.request_id, created=now, model=model_name, system_fingerprint=_fingerprint(piece.draft_version),
                choices=[CompletionChoice(text=text, finish_reason=piece.finish_reason)],
                spec_decode=_spec(piece.stats) if piece.stats else None,
            )  # fmt: skip

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[BaseModel]:
                async for piece in pieces:
                    if piece.text or piece.stats:
                        yield chunk(piece.text, piece)
                    if piece.stats and include_usage:
                        yield CompletionResponse(id=request.request_id, created=now, model=model_name, choices=[],
                                                 usage=_usage(piece.stats))  # fmt: skip

            return StreamingResponse(_sse(events()), media_type="text/event-stream", headers={"X-Request-Id": request.request_id})
        text, last = await finished(http, pieces)
        response = chunk(text, last)
        response.usage = _usage(last.stats)
        return JSONResponse(_dump(response), headers={"X-Request-Id": request.request_id})

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        check_model(body.model)
        messages = body.texts()
        check_size([text for _, text in messages], "messages")
        prompt = await asyncio.to_thread(format_chat, tokenizer, messages)  # tokenises: off the event loop
        budget_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        request = plan(body, prompt.token_ids, body.token_budget(), budget_param, "messages", "chatcmpl")
        submission = Submission(engine, request)
        pieces = text_pieces(submission, tokenizer, body.stop_strings() + list(prompt.stop))
        now = int(time.time())
        header = {"id": request.request_id, "created": now, "model": model_name}

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[BaseModel]:
                yield ChatCompletionChunk(**header, choices=[ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
                async for piece in pieces:
                    if piece.text:
                        yield ChatCompletionChunk(**header, system_fingerprint=_fingerprint(piece.draft_version),
                                                  choices=[ChatChunkChoice(delta=ChatDelta(content=piece.text))])  # fmt: skip
                    if piece.stats:
                        yield ChatCompletionChunk(**header, system_fingerprint=_fingerprint(piece.draft_version),
                                                  choices=[ChatChunkChoice(delta=ChatDelta(), finish_reason=piece.finish_reason)],
                                                  spec_decode=_spec(piece.stats))  # fmt: skip
                        if include_usage:
                            yield ChatCompletionChunk(**header, choices=[], usage=_usage(piece.stats))

            return StreamingResponse(_sse(events()), media_type="text/event-stream", headers={"X-Request-Id": request.request_id})
        text, last = await finished(http, pieces)
        response = ChatCompletionResponse(
            **header, system_fingerprint=_fingerprint(last.draft_version),
            choices=[ChatChoice(message=ChatMessageOut(content=text), finish_reason=last.finish_reason)],
            usage=_usage(last.stats), spec_decode=_spec(last.stats),
        )  # fmt: skip
        return JSONResponse(_dump(response), headers={"X-Request-Id": request.request_id})

    app.include_router(v1)

    @app.get("/health")
    async def health() -> JSONResponse:
        serving = engine.running and engine.accepting
        problems = health_problems(learning, snapshots)
        body = {
            "status": ("degraded" if problems else "ok") if serving else "unavailable",
            "model": model_name,
            "draft_version": live.version,
            "learner": learning.learner.state if learning is not None else "off",
            "queue_depth": engine.queue_depth,
            "active_requests": engine.num_active,
            **({"problems": problems} if problems else {}),
        }
        return JSONResponse(body, 200 if serving else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        content, content_type = metrics.render()
        return Response(content, media_type=content_type)

    return app
