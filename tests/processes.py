"""Processes a test starts, ended even when the test fails.

``processes`` (a fixture; conftest imports it) starts commands in their own process group,
with output to a log file (a pipe nobody reads would block a chatty server), and kills each
group in its finalizer -- whatever the test did, passed, failed or raised. Readiness waits
poll for an event (``/health`` answering, a line in the log) under a generous deadline that
only guards against a hang, and fail naming what was waited for, with the log's tail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

READY_SECONDS = 300  # start-up backstop: a loaded 2-core machine is slow, not broken
STOP_SECONDS = 120
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together, so the OS cannot hand one out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Process:
    """One started command: its ``Popen`` (leader of its own process group) and its log."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.argv, self.log_path = argv, log
        self._log = open(log, "w")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, text=True,
                                      env=env or ENV, start_new_session=True)  # fmt: skip
        self.pid = self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_until(self, condition, what: str, seconds: float = READY_SECONDS) -> None:
        """Poll ``condition()`` until true; fail if the process exits or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while not condition():
            if not self.alive():
                raise AssertionError(f"{self.argv[2:4]} exited ({self.popen.returncode}) while waiting for {what}:\n"
                                     f"{self.output()[-4000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {seconds:.0f} s for {what}; still not there:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def wait_healthy(self, url: str) -> None:
        """Until ``GET url/health`` answers at all (200, or 503 while it drains)."""

        def answers() -> bool:
            try:
                httpx.get(f"{url}/health", timeout=5)
                return True
            except httpx.TransportError:
                return False

        self.wait_until(answers, f"{url}/health to answer")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group (children included)."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = STOP_SECONDS) -> str:
        """SIGTERM (a graceful drain) and wait; returns the output. Asserts exit status 0."""
        self.signal(signal.SIGTERM)
        self.popen.wait(timeout)
        assert self.popen.returncode == 0, self.output()
        return self.output()

    def kill(self) -> None:
        """SIGKILL the group and reap the leader (idempotent)."""
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(STOP_SECONDS)
        finally:
            self._log.close()


class Processes:
    """What a test started; :meth:`end_all` kills every group (the fixture's finalizer)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Process] = []

    def start(self, *argv: str, name: str = "process") -> Process:
        log = self.directory / f"{name}-{len(self.started)}.log"
        process = Process(list(argv), log)
        self.started.append(process)
        return process

    def serve(self, port: int, *args: str, name: str = "server") -> Process:
        """``python -m aurora_rl.serve`` on the tiny world, returned once /health answers."""
        process = self.start(sys.executable, "-m", "aurora_rl.serve", "world.name=tiny", f"server.port={port}",
                             "progress=false", "server.log_level=warning", "torch_threads=1", *args, name=name)  # fmt: skip
        process.wait_healthy(f"http://127.0.0.1:{port}")
        return process

    def end_all(self) -> None:
        for process in self.started:
            process.kill()


@pytest.fixture
def processes(tmp_path):
    """Start processes with ``processes.start(...)`` / ``processes.serve(port, ...)``; every
    one of them (its whole process group) is killed when the test ends, pass or fail."""
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.end_all()
