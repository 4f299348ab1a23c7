"""What both example shops share: their gate's rules and their settings.

From the environment: ``WR_URL`` (where wr answers, default
``http://127.0.0.1:8080``), ``WR_ROOM`` (default ``default``),
``WR_WAITING_URL`` (default: wr's own waiting page for the room),
``WR_SITE_ORIGIN`` (the shop's origin, so that wr can send people back to
it; list it in the room's ``allowed_targets``) and, for the Flask shop,
``WR_KEYS`` (wr's ``keys.json``).

Cookies belong to a host name, not a port: the waiting room and the shop
must share one (in production, proxy wr's ``/api/v1/rooms/`` and page under
the shop's host, as ``examples/nginx/wr.conf`` does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from wr.gate import Gate, Verifier


@dataclass(frozen=True)
class Settings:
    wr_url: str = "http://127.0.0.1:8080"
    room: str = "default"
    waiting_url: str | None = None
    site_origin: str | None = None
    keys: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            wr_url=os.environ.get("WR_URL", cls.wr_url),
            room=os.environ.get("WR_ROOM", cls.room),
            waiting_url=os.environ.get("WR_WAITING_URL"),
            site_origin=os.environ.get("WR_SITE_ORIGIN"),
            keys=os.environ.get("WR_KEYS"),
        )

    def gate(self, verifier: Verifier) -> Gate:
        return Gate(
            verifier,
            waiting_url=self.waiting_url or f"{self.wr_url}/?room={self.room}",
            # Health checks and assets need no place in line.
            pass_paths=("/healthz", "/static/"),
            site_origin=self.site_origin,
            wr_url=self.wr_url,
            # A POST here says "I am done": the place frees up at once.
            leave_path="/leave",
        )
