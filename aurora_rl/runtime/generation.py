"""From an engine request to text pieces, on the asyncio side of the server.

The engine's worker thread hands each step's output to a sink; here the sink is
``loop.call_soon_threadsafe(queue.put_nowait, output)``, so outputs cross into the event
loop in order without the worker ever waiting on it. :func:`text_pieces` detokenises them
incrementally, applies stop strings, and turns engine failures into API errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, TypeVar

from transformers import PreTrainedTokenizerBase

from aurora_rl.runtime.detokenize import IncrementalDetokenizer
from aurora_rl.runtime.engine import SHUTTING_DOWN, Engine, EngineClosed, EngineFull, EngineOutput, GenerationRequest, RequestStats
from aurora_rl.runtime.protocol import APIError

T = TypeVar("T")

# What a 429 asks clients to wait: a queue of short requests drains in about a second.
RETRY_AFTER_SECONDS = 1


class Submission:
    """A request submitted to the engine, its outputs readable from the event loop.

    Submitting happens in the constructor so that a full queue or a closing engine becomes
    an HTTP status (429 / 503) before any response (or stream) has started.
    """

    def __init__(self, engine: Engine, request: GenerationRequest) -> None:
        loop = asyncio.get_running_loop()
        self._outputs: asyncio.Queue[EngineOutput] = asyncio.Queue()
        self.request_id = request.request_id
        try:
            self._handle = engine.submit(request, lambda output: loop.call_soon_threadsafe(self._outputs.put_nowait, output))
        except EngineFull as error:
            raise APIError(429, f"The server is at capacity: {error}.", code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None  # fmt: skip
        except EngineClosed:
            raise APIError(503, "The server is shutting down and takes no new requests; retry on another replica.",
                           code="shutting_down") from None  # fmt: skip

    async def outputs(self) -> AsyncIterator[EngineOutput]:
        """The request's outputs up to and including the final one. Leaving early (a client
        that disconnected) cancels the request in the engine."""
        try:
            while True:
                output = await self._outputs.get()
                yield output
                if output.finished:
                    return
        finally:
            self._handle.cancel()

    def cancel(self, finish_reason: str = "cancelled") -> None:
        self._handle.cancel(finish_reason)


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its decoding was cancelled."""


async def unless_disconnected(receive, work: Awaitable[T]) -> T:
    """``await work``, cancelling it if the client disconnects first (``receive`` is the
    request's ASGI receive, its body already read: its next message is the disconnect).

    Raises:
        ClientGone: the client went away; ``work`` was cancelled (and with it the request's
            decoding: :meth:`Submission.outputs` cancels the engine request when left).
    """
    task = asyncio.ensure_future(work)

    async def disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnect())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself is being cancelled: so is the work
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientGone()


@dataclass(frozen=True)
class Piece:
    """Newly settled text of one step (possibly empty).

    ``finish_reason`` ("stop" or "length") and ``stats`` are set on the last piece.
    """

    text: str
    draft_version: int | None
    finish_reason: str | None = None
    stats: RequestStats | None = None


async def text_pieces(submission: Submission, tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> AsyncIterator[Piece]:
    """The text of ``submission`` as it is decoded, ending at EOS, the budget or a stop string.

    Raises:
        APIError: 503 if the server shut down mid-request, 500 if decoding failed.
    """
    text = IncrementalDetokenizer(tokenizer, stop)
    version = None
    async for output in submission.outputs():
        if output.draft_version is not None:
            version = output.draft_version
        if text.stopped:  # draining the steps decoded before our cancel landed
            if output.finished:
                yield Piece("", version, "stop", output.stats)
            continue
        if output.error is not None:
            status = 503 if output.error == SHUTTING_DOWN else 500
            raise APIError(status, f"The request could not be completed: {output.error}.",
                           code="shutting_down" if status == 503 else "decode_failed")  # fmt: skip
        delta = text.push(output.token_ids)
        if output.finished and not text.stopped:
            delta += text.flush()
        if text.stopped and not output.finished:
            submission.cancel("stop")  # the rest of the budget is not wanted; the final output follows
            yield Piece(delta, version)
        elif output.finished:
            reason = "stop" if text.stopped or output.stats.finish_reason == "eos" else "length"
            yield Piece(delta, version, reason, output.stats)
        else:
            yield Piece(delta, version)
