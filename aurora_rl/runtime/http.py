"""Running a server's app under uvicorn with its limits and a shutdown that ends streams well.

- Header size: ``server.max_header_bytes`` bounds the request line plus headers (h11's
  incomplete-event limit); a larger head is refused before any of the app runs.
- Shutdown: on SIGINT/SIGTERM the engine starts draining at once, in parallel with uvicorn's
  own graceful shutdown: in-flight requests get ``server.drain_seconds`` to finish, then the
  engine cancels them, so a stream still open ends with the documented
  ``data: {"error": {..., "code": "shutting_down"}}`` event rather than a cut connection.
  uvicorn waits ``DRAIN_GRACE_SECONDS`` longer than the drain for those last events.
"""

from __future__ import annotations

import threading

import uvicorn

from aurora_rl.runtime.config import ServerSection
from aurora_rl.runtime.server import Server

# Time after the drain for the cancelled requests' final events to be written.
DRAIN_GRACE_SECONDS = 5.0


def uvicorn_config(server: Server, section: ServerSection, **overrides) -> uvicorn.Config:
    """uvicorn's settings for ``server``: h11 (whose header limit is configurable), the
    header limit, and a graceful-shutdown timeout that outlasts the drain."""
    settings = dict(host=section.host, port=section.port, log_level=section.log_level, http="h11",
                    h11_max_incomplete_event_size=section.max_header_bytes,
                    timeout_graceful_shutdown=section.drain_seconds + DRAIN_GRACE_SECONDS)  # fmt: skip
    return uvicorn.Config(server.app, **{**settings, **overrides})


class DrainingServer(uvicorn.Server):
    """A uvicorn server that starts the engine's drain the moment it is told to exit."""

    def __init__(self, config: uvicorn.Config, server: Server, drain_seconds: float) -> None:
        super().__init__(config)
        self.aurora, self.drain_seconds = server, drain_seconds
        self._drain: threading.Thread | None = None

    def handle_exit(self, sig, frame) -> None:
        self.begin_drain()
        super().handle_exit(sig, frame)

    def begin_drain(self) -> None:
        """Stop taking requests; cancel what is still running after ``drain_seconds``."""
        if self._drain is None:
            self._drain = threading.Thread(target=self.aurora.engine.close, args=(self.drain_seconds,),
                                           name="aurora-drain", daemon=True)  # fmt: skip
            self._drain.start()


def run(server: Server, section: ServerSection) -> None:
    """Serve until SIGINT/SIGTERM; the app's lifespan then stops the learner and saves it."""
    DrainingServer(uvicorn_config(server, section), server, section.drain_seconds).run()
