"""The start queue: a few servers start at once, the rest wait in order and see their place.

JupyterHub's own ``concurrent_spawn_limit`` answers every login beyond it with HTTP 429 "Too many
users trying to log in right now" (a morning burst of 40 turned half of them away), and a REST
client gets a refusal instead of a place. beamside lets every start in and queues it here instead
(JupyterHub's limit is off): ``hub.concurrent_spawn_limit`` servers start at once, from the
moment their sandbox is made until their server answers HTTP, which is what costs the machine's
CPU; the others wait first come, first served. While they wait, the spawn page (and the REST
progress stream, ``/hub/api/users/<name>/server/progress``) shows how many are ahead and about
how long that takes, from how long recent starts took. Admins see the whole queue with
``beamside queue``: the hub rewrites it, at every change, to a root-only file in its state folder.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import statistics
import time
from collections import deque

_hub_queue: StartQueue | None = None  # the hub process's one queue (hub_queue)


class StartQueue:
    """First come, first served turns to start a server, ``slots`` at a time (0: no queue)."""

    def __init__(self, slots: int, report_file: str = ""):
        self.slots = slots
        self.report_file = report_file  # rewritten at every change (see report), if set
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
        self._publish()
        try:
            await self._free.acquire()
        finally:
            self._waiting.remove(who)
            self._publish()
        self._started[who] = time.monotonic()
        self._publish()

    def end_turn(self, who: str, *, started: bool) -> None:
        """``who``'s start is over (its server answers, or it failed): the next in line goes.
        Ending a turn not held does nothing, so every way out of a start may call it."""
        since = self._started.pop(who, None)
        if since is None:
            return
        if started:
            self._recent.append(time.monotonic() - since)
        self._free.release()
        self._publish()

    def message(self, who: str) -> str | None:
        """What the spawn page says while ``who`` waits (None: not waiting)."""
        place = self.place(who)
        if place is None:
            return None
        ahead = place - 1
        line = f"{ahead} server{'s' if ahead != 1 else ''} ahead of yours" if ahead else "yours is next"
        return (f"Waiting for a free slot to start ({self.slots} start at once; {line}): "
                f"about {self.estimate(place):.0f} s")

    def report(self) -> dict:
        """The queue as an admin sees it: who starts (for how long), who waits (place, estimate)."""
        now = time.monotonic()
        return {
            "slots": self.slots,
            "starting": [{"user": who, "seconds": round(now - since, 1)} for who, since in self._started.items()],
            "waiting": [{"user": who, "place": i + 1, "estimate_seconds": round(self.estimate(i + 1), 1)}
                        for i, who in enumerate(self._waiting)],
            "recent_start_seconds": round(statistics.median(self._recent), 1) if self._recent else None,
        }

    def _publish(self) -> None:
        """The report, replaced whole in ``report_file`` (root's, 0600; a reader never sees half of
        it). A status view, not a record: no fsync, and a failed write only goes to the log."""
        if not self.report_file:
            return
        from . import rootfs

        report = {"hub_pid": os.getpid(), "updated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                  **self.report()}
        folder, name = os.path.split(self.report_file)
        try:
            with rootfs.root_dir(folder) as parent:
                rootfs.replace_file(parent, name, json.dumps(report).encode(), mode=0o600, durable=False)
        except OSError as exc:
            import logging

            logging.getLogger("JupyterHub").warning("could not write the start queue to %s: %s", self.report_file, exc)


def hub_queue(slots: int, report_file: str = "") -> StartQueue:
    """The hub's one queue of starts, made by the first spawner that asks (again if ``slots`` changed)."""
    global _hub_queue
    if _hub_queue is None or _hub_queue.slots != slots:
        _hub_queue = StartQueue(slots, report_file)
        _hub_queue._publish()  # a hub that restarted says so at once (nobody in line)
    return _hub_queue


def show(report: dict, hub_alive: bool) -> str:
    """``beamside queue``'s text: who starts, who waits, in order."""
    recent = report["recent_start_seconds"]
    lines = [(f"start queue of the hub (pid {report['hub_pid']}), as of {report['updated']}: "
              f"{report['slots']} servers start at once; a recent start took {'?' if recent is None else recent} s")]
    if not hub_alive:
        lines.append("the hub is not running: this is the queue it left")
    lines += [f"  starting  {s['user']:<24} for {s['seconds']:.0f} s" for s in report["starting"]]
    lines += [f"  waiting   {w['user']:<24} place {w['place']}, about {w['estimate_seconds']:.0f} s"
              for w in report["waiting"]]
    if not (report["starting"] or report["waiting"]):
        lines.append("  nobody is starting or waiting")
    return "\n".join(lines)


def default_slots() -> int:
    """Starts at once when ``hub.concurrent_spawn_limit`` is not set: two per core (more at once
    only makes every start slower)."""
    return 2 * (os.cpu_count() or 1)


def queue_file(state_dir: str) -> str:
    """Where a deployment's hub keeps its start queue (root's state folder)."""
    return os.path.join(state_dir, "start-queue.json")
