"""The start queue: a few servers start at once, the rest wait in order and see their place.

JupyterHub's own ``concurrent_spawn_limit`` answers every login beyond it with HTTP 429 "Too many
users trying to log in right now" (a morning burst of 40 turned half of them away), and a REST
client gets a refusal instead of a place. beamside lets every start in and queues it here instead
(JupyterHub's limit is off): ``hub.concurrent_spawn_limit`` servers start at once, from the
moment their sandbox is made until their server answers HTTP, which is what costs the machine's
CPU; the others wait first come, first served. While they wait, the spawn page (and the REST
progress stream, ``/hub/api/users/<name>/server/progress``) shows how many are ahead and about
how long that takes, from how long recent starts took.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque


class StartQueue:
    """First come, first served turns to start a server, ``slots`` at a time (0: no queue)."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = asyncio.Semaphore(slots) if slots > 0 else None  # its waiters are woken in order
        self._waiting: list[str] = []  # who waits, first first
        self._started: dict[str, float] = {}  # who holds a turn, since when
        self._recent: deque[float] = deque(maxlen=20)  # seconds recent starts took

    def place(self, who: str) -> int | None:
        """1 for the next to start; None if ``who`` is not waiting."""
        try:
            return self._waiting.index(who) + 1
        except ValueError:
            return None

    def waiting(self) -> list[str]:
        return list(self._waiting)

    def full(self) -> bool:
        """Whether a new start would wait."""
        return bool(self.slots) and (len(self._started) >= self.slots or bool(self._waiting))

    def estimate(self, place: int) -> float:
        """Seconds until the ``place``-th in line starts: the turns ahead of it times a recent start."""
        typical = statistics.median(self._recent) if self._recent else 10.0
        return math.ceil(place / self.slots) * typical

    async def wait_turn(self, who: str) -> None:
        """Return when ``who`` may start (at once when a slot is free and nobody waits)."""
        if self._free is None or who in self._started:
            return
        self._waiting.append(who)
        try:
            await self._free.acquire()
        finally:
            self._waiting.remove(who)
        self._started[who] = time.monotonic()

    def end_turn(self, who: str, *, started: bool) -> None:
        """``who``'s start is over (its server answers, or it failed): the next in line goes.
        Ending a turn not held does nothing, so every way out of a start may call it."""
        since = self._started.pop(who, None)
        if since is None:
            return
        if started:
            self._recent.append(time.monotonic() - since)
        self._free.release()

    def message(self, who: str) -> str | None:
        """What the spawn page says while ``who`` waits (None: not waiting)."""
        place = self.place(who)
        if place is None:
            return None
        ahead = place - 1
        line = f"{ahead} server{'s' if ahead != 1 else ''} ahead of yours" if ahead else "yours is next"
        return (f"Waiting for a free slot to start ({self.slots} start at once; {line}): "
                f"about {self.estimate(place):.0f} s")
