"""The frames of a session on their way to its link, around a resume.

During and after a replay, each generation's frames go out once, in order:
the frames the replay already sent are skipped, and the frames made while
the store is read wait for the replay (``park``, then ``unpark``). A frame
past a hole (frames the store lost) is not sent: the client hears
``resume_failed`` ``gap`` instead, and nothing more of that generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from tokenwire.protocol import GenerationFrame, ServerFrame

from ..metrics import Metrics
from ..stores import resume
from ..stores.resume import SKIP_ALL, Cause


class Delivery:
    """A session's replay window: what was sent of each generation, what waits."""

    __slots__ = ("_lost", "_metrics", "_parked", "delivered")

    def __init__(self, metrics: Metrics, lost: Callable[[str], Cause | None]) -> None:
        self._metrics = metrics
        self._lost = lost
        self._parked: dict[str, list[GenerationFrame]] | None = None
        self.delivered: dict[str, int] = {}
        """While a resume replays, and after: the last seq sent, per generation."""

    @property
    def open(self) -> bool:
        """Whether frames must pass ``filter`` (a replay is on, or was)."""
        return self._parked is not None or bool(self.delivered)

    def clear(self) -> None:
        """The link went: a new one starts afresh."""
        self.delivered.clear()
        self._parked = None

    def filter(self, frames: list[ServerFrame]) -> list[ServerFrame]:
        """The frames of ``frames`` that go out now, in order."""
        out: list[ServerFrame] = []
        for frame in frames:
            gid = getattr(frame, "id", None)
            seq = getattr(frame, "seq", None)
            if gid is None or seq is None:
                out.append(frame)
                continue
            if self._parked is not None and gid in self._parked:
                self._parked[gid].append(frame)  # type: ignore[arg-type]
                continue
            last = self.delivered.get(gid)
            if last is None:
                out.append(frame)
            elif seq == last + 1:
                out.append(frame)
                self.delivered[gid] = seq
            elif seq > last + 1:  # frames the store lost: say so, send no more
                cause = self._lost(gid) or Cause.STORE_UNREACHABLE
                span = (last + 1, seq - 1)
                out.append(resume.failed(self._metrics, gid, "gap", cause, frames=span))
                self.delivered[gid] = SKIP_ALL
        return out

    def parked_for(self, gid: str) -> bool:
        """Whether live frames of ``gid`` wait for its replay."""
        return self._parked is not None and bool(self._parked.get(gid))

    def park(self, ids: Iterable[str]) -> None:
        """Hold the live frames of ``ids`` while their stored frames are read."""
        self._parked = {gid: [] for gid in ids}

    def unpark(self, gid: str, last_seq: int | None) -> list[ServerFrame]:
        """``gid``'s stored frames up to ``last_seq`` were sent: the parked
        ones, to deliver now (None: the session never had ``gid``; a generate
        the client sends again starts it afresh)."""
        parked = self._parked.pop(gid, []) if self._parked is not None else []
        if last_seq is None:
            self.delivered.pop(gid, None)
        else:
            self.delivered[gid] = last_seq
        if not self._parked:
            self._parked = None
        return list(parked)

    def started(self, gid: str) -> None:
        """A new generation ``gid``: a resume's filter was for an older one."""
        self.delivered.pop(gid, None)
