"""Shared by the serving tests: the tiny world, a live server on loopback, greedy references."""

from __future__ import annotations

import copy
import socket
import threading
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

import httpx
import torch
import uvicorn

from aurora_rl.core.spec import DecodeConfig
from aurora_rl.core.target import Target
from aurora_rl.policies.small_lm import SmallLMDrafter
from aurora_rl.runtime.config import EngineSection, ServerSection, SnapshotSection
from aurora_rl.runtime.http import uvicorn_config
from aurora_rl.online.learner import LearnerConfig
from aurora_rl.runtime.server import Server, build_server
from aurora_rl.world import get_world

MODEL = "aurora-tiny"
STARTUP_SECONDS = 300  # a backstop for a hung start-up, not a speed requirement


@lru_cache(maxsize=1)
def tiny():
    """(tokenizer, target model) of the tiny world, loaded once per test session."""
    world = get_world("tiny", progress=False)
    return world.tokenizer(), world.target()


def noisy_drafter(model, scale: float, seed: int, version: int = 0) -> SmallLMDrafter:
    """A drafter that is the target plus weight noise: it agrees with the target often
    (scale ~0.2) or rarely (scale ~1), so decoding exercises accepted and rejected runs."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in noisy.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale * param.std().clamp_min(1e-3))
    return SmallLMDrafter(noisy, version=version)


def tiny_server(*, learner: LearnerConfig | None = None, server: ServerSection = ServerSection(),
                engine: EngineSection = EngineSection(keep_request_traces=64), snapshot_dir=None,
                k: int = 4) -> Server:  # fmt: skip
    tokenizer, model = tiny()
    return build_server(
        Target(model), tokenizer, noisy_drafter(model, scale=0.2, seed=1),
        decode=DecodeConfig(k=k), model_name=MODEL, server=server, engine=engine, learner=learner,
        snapshots=SnapshotSection(directory=None if snapshot_dir is None else str(snapshot_dir)),
    )  # fmt: skip


@contextmanager
def serving(server: Server, section: ServerSection = ServerSection()) -> Iterator[str]:
    """Run ``server.app`` with uvicorn (the CLI's settings: ``section``'s header limit) on a
    free loopback port in a thread; yields the base URL and shuts the server down (lifespan
    included) on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn_config(server, section, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not report started within {STARTUP_SECONDS} s (or its thread died)")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uv.should_exit = True
        thread.join(60)
        sock.close()


def metric(url: str, name: str) -> float:
    """The value of an unlabelled (or fully labelled) sample ``name`` on ``url``/metrics."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def greedy(model, prompt_ids: list[int], max_new_tokens: int, eos: int, pad: int) -> list[int]:
    """The target's own greedy continuation (HF generate), EOS included if it stopped there."""
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=eos, pad_token_id=pad)  # fmt: skip
    return out[0, len(prompt_ids) :].tolist()


def text_of(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def wait_for(condition, timeout: float = 300.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; the deadline is only a backstop against a hang (a
    loaded machine may be slow, never wrong)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def expected_text(prompt: str, max_tokens: int = 24) -> str:
    """The tiny target's own greedy continuation: what every lossless response must say."""
    tokenizer, model = tiny()
    ids = greedy(model, tokenizer(prompt)["input_ids"], max_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return text_of(tokenizer, ids)


def complete(url: str, prompt: str, max_tokens: int = 24) -> dict:
    """One greedy /v1/completions request; asserts a 200 and returns the JSON body."""
    response = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
                                                         "temperature": 0}, timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()
