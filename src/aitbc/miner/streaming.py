"""The text a running job has generated, and how much of it the coordinator holds.

The backend hands over text as the engine produces it (:meth:`OutputStream.feed`,
from the engine's thread); the daemon's progress reports send what is new
(:meth:`OutputStream.pending`) and record what the coordinator acknowledged
(:meth:`OutputStream.acknowledged`). Only text the final result is sure to start
with is sent: when the job has stop sequences, the engine cuts its result at the
first one, so the last ``len(longest stop) - 1`` characters are held back until more
text shows they begin no stop sequence, and nothing at or after a stop is ever sent.
Each report carries only the new characters (never the whole text again).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence


class OutputStream:
    """Generated text so far (thread-safe to feed), and the part acknowledged."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._hold = max((len(stop) for stop in self._stops), default=1) - 1
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._text = ""
        # Characters known to precede any stop sequence (the sendable prefix).
        self._safe = 0
        self._stopped = False
        self.sent = 0

    def feed(self, text: str) -> None:
        """Add text the engine produced (from any thread)."""
        if text:
            with self._lock:
                self._parts.append(text)

    def _settle(self) -> None:
        """Join what was fed and move the sendable boundary (under the lock)."""
        if self._parts:
            self._text += "".join(self._parts)
            self._parts.clear()
        if self._stopped:
            return
        if not self._stops:
            self._safe = len(self._text)
            return
        # A stop may begin up to len(stop) - 1 characters before the old boundary.
        search_from = max(0, self._safe - self._hold)
        first = min(
            (
                found
                for found in (self._text.find(stop, search_from) for stop in self._stops)
                if found >= 0
            ),
            default=-1,
        )
        if first >= 0:
            self._safe, self._stopped = first, True
        else:
            self._safe = max(self._safe, len(self._text) - self._partial_stop_length())

    def _partial_stop_length(self) -> int:
        """The length of the longest end of the text that begins some stop sequence."""
        text = self._text
        for length in range(min(self._hold, len(text)), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self._stops):
                return length
        return 0

    def pending(self) -> tuple[int, str] | None:
        """``(offset, text)``: the sendable characters not acknowledged yet, starting
        at character ``offset`` of the output; None when there are none."""
        with self._lock:
            self._settle()
            if self._safe <= self.sent:
                return None
            return self.sent, self._text[self.sent : self._safe]

    def acknowledged(self, streamed: int) -> None:
        """The coordinator holds the first ``streamed`` characters."""
        with self._lock:
            self.sent = max(0, min(streamed, self._safe))

    def resend_all(self) -> None:
        """The coordinator holds less than it acknowledged (it says where to resume
        only in prose): send everything again; it keeps what it has."""
        with self._lock:
            self.sent = 0
