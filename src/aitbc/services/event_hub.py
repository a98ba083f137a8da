"""Fan-out of committed events to this process's ``/ws`` subscribers (DESIGN.md
section 8).

The database is the source of truth. One pump task reads the events committed after
the last one it delivered (``storage.event_queries.after``) and hands each, encoded
once, to the subscribers that may see it, found through an index (channel, then
``*``/``c:<client>``/``m:<miner>``): an event costs its readers, not every
connection. Offsets are in commit order (``models.EventRecord``), so reading "after
n" never skips an event that commits later.

The pump wakes when this process commits events (:meth:`EventHub.committed`), when
the event bus says another process did (``services.event_bus``), and every
``event_poll_seconds`` while anyone listens, as a safety net; with no subscriber it
reads nothing.

A subscriber's queue is bounded (``ws_max_queued_events``): the pump never waits for
a connection; one whose queue is full is dropped as too slow (``/ws`` closes it
with 1013, "try again later") and resumes with ``since``. A subscription with
``since`` first replays the stored events after it, waiting for room as the
connection drains, while live events for that channel are held back; then the held
events not replayed follow, so nothing is missed or repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from aitbc.domain.events import Channel, Event, Viewer, audience_keys, frame, viewer_key
from aitbc.errors import Conflict, Gone
from aitbc.settings import Settings
from aitbc.storage import event_queries
from aitbc.storage.db import read, transaction
from aitbc.storage.event_queries import LogBounds, SqliteEventReader

log = logging.getLogger(__name__)

# Events read per pump round / per page of a replay.
PUMP_BATCH = 1000
REPLAY_PAGE = 500
# Live events held back during a replay, per queued event allowed.
HELD_PER_QUEUED = 10
TOO_SLOW_REASON = "too slow: events overflowed the queue"


@dataclass(slots=True)
class _ChannelState:
    # The last offset sent (or to skip up to) on this channel.
    floor: int
    # While a replay runs: live events held back until it ends.
    held: list[Event] | None = None


@dataclass(eq=False)
class Subscriber:
    """One ``/ws`` connection as the hub sees it: who it is, what it follows and its
    bounded queue of text frames to send (drained by the connection's writer)."""

    viewer: Viewer
    max_queued: int
    channels: dict[Channel, _ChannelState] = field(default_factory=dict)
    # Set when the connection must close, with this code; or too_slow, when the hub
    # dropped it for overflowing its queue (the route picks the close code for that).
    close_code: int | None = None
    close_reason: str = ""
    too_slow: bool = False
    _frames: deque[str] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _room: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def queued(self) -> int:
        """Frames waiting to be sent."""
        return len(self._frames)

    def send_now(self, text: str) -> None:
        """Queue a reply (acknowledgement or error): not counted against the bound."""
        self._frames.append(text)
        self._ready.set()

    @property
    def closing(self) -> bool:
        """Whether the connection must close (:meth:`close` or :meth:`drop_too_slow`)."""
        return self.close_code is not None or self.too_slow

    def close(self, code: int, reason: str) -> None:
        """Close the connection once what is queued ahead of the close is dropped."""
        if not self.closing:
            self.close_code, self.close_reason = code, reason
            self._shut()

    def drop_too_slow(self) -> None:
        """Close the connection as too slow to keep up (its queue overflowed)."""
        if not self.closing:
            self.too_slow, self.close_reason = True, TOO_SLOW_REASON
            self._shut()

    def _shut(self) -> None:
        self._frames.clear()
        self._ready.set()
        self._room.set()

    def offer(self, channel: Channel, event: Event, text: str) -> bool:
        """A live event from the pump; never waits. False when it overflowed the queue
        (the subscriber is then dropped as too slow)."""
        state = self.channels.get(channel)
        if state is None or event.seq <= state.floor or self.closing:
            return True
        if state.held is not None:
            if len(state.held) >= self.max_queued * HELD_PER_QUEUED:
                self.drop_too_slow()
                return False
            state.held.append(event)
            return True
        if len(self._frames) >= self.max_queued:
            self.drop_too_slow()
            return False
        state.floor = event.seq
        self._frames.append(text)
        self._ready.set()
        return True

    async def put_replayed(self, text: str) -> None:
        """A replayed event: waits while the queue is full (a replay is paced by the
        connection, never dropped for its own size)."""
        while len(self._frames) >= self.max_queued and not self.closing:
            self._room.clear()
            await self._room.wait()
        if not self.closing:
            self._frames.append(text)
            self._ready.set()

    async def next_frame(self) -> str | None:
        """The next frame to send, waiting for one; None once the connection must close."""
        while not self._frames:
            if self.closing:
                return None
            self._ready.clear()
            await self._ready.wait()
        if self.closing:
            return None
        text = self._frames.popleft()
        self._room.set()
        return text


class EventHub:
    """This process's subscribers, and the pump that feeds them."""

    def __init__(self) -> None:
        # channel -> index key -> subscribers.
        self._index: dict[Channel, dict[str, set[Subscriber]]] = {}
        self._subscribers: set[Subscriber] = set()
        # The newest offset handed to subscribers (None: not following, no subscriber).
        self.last_seq: int | None = None
        self._wake = asyncio.Event()
        self.delivered = 0
        self.dropped = 0
        # Called after a local commit wrote events (the bus's publish), set at start.
        self.on_commit: Callable[[], None] | None = None
        # SQLite: the pump's own connection, read inline (see :meth:`committed`).
        self._reader: SqliteEventReader | None = None
        # The pump's settings, set at start.
        self._settings: Settings | None = None

    @property
    def _slice(self) -> int:
        """Events handed out between two loop turns: half a queue (read from the
        settings each time, so a change to them applies from the next slice)."""
        if self._settings is None:
            return PUMP_BATCH
        return max(1, self._settings.ws_max_queued_events // 2)

    @property
    def connections(self) -> int:
        """Subscribers connected to this process."""
        return len(self._subscribers)

    def committed(self) -> None:
        """A transaction that appended events committed in this process: hand them to
        the subscribers, and tell the other processes (through the bus).

        On SQLite the events are read and handed out right here, in the committing
        task, on the pump's own connection (a few rows by primary key): a loaded
        event loop would otherwise make them wait a turn for the pump. Elsewhere,
        and for what does not fit in one slice, the pump is woken."""
        if self._subscribers:
            if self._reader is not None and self.last_seq is not None:
                self._deliver_now(self._reader, self.last_seq)
            else:
                self._wake.set()
        if self.on_commit is not None:
            self.on_commit()

    def _deliver_now(self, reader: SqliteEventReader, last_seq: int) -> None:
        try:
            events = reader.after(last_seq, self._slice)
        except Exception:  # the pump will retry through the engine
            log.exception("reading events failed; leaving it to the pump")
            self._wake.set()
            return
        for event in events:
            self.fan_out(event)
            self.last_seq = event.seq
        if len(events) == self._slice:
            self._wake.set()

    def remote_committed(self) -> None:
        """The bus says another process committed events."""
        if self._subscribers:
            self._wake.set()

    def add(self, subscriber: Subscriber) -> None:
        """Register a connection (before it subscribes to anything)."""
        self._subscribers.add(subscriber)

    def remove(self, subscriber: Subscriber) -> None:
        """Forget a connection and all its subscriptions."""
        for channel in list(subscriber.channels):
            self._unindex(subscriber, channel)
        subscriber.channels.clear()
        self._subscribers.discard(subscriber)
        if not self._subscribers:
            self.last_seq = None

    def close_all(self) -> None:
        """Close every connection (the coordinator is stopping): 1001, going away."""
        for subscriber in tuple(self._subscribers):
            subscriber.close(1001, "the coordinator is shutting down")

    def unsubscribe(self, subscriber: Subscriber, channel: Channel) -> None:
        """Stop sending ``channel`` to ``subscriber``."""
        if subscriber.channels.pop(channel, None) is not None:
            self._unindex(subscriber, channel)

    async def subscribe(
        self,
        engine: AsyncEngine,
        subscriber: Subscriber,
        channels: list[Channel],
        since: dict[Channel, int],
        on_subscribed: Callable[[dict[Channel, int]], None],
    ) -> None:
        """Subscribe to ``channels``: live from now, or resumed after ``since[channel]``.

        Raises :class:`Gone` for a ``since`` whose events were pruned and
        :class:`Conflict` for one beyond the newest event; nothing is subscribed then.
        ``on_subscribed`` is called with each channel's starting offset before any
        replayed event is queued (so the acknowledgement goes first).
        """
        # PostgreSQL: what committed before this subscription gets its offset first,
        # so "from now" starts after it.
        await transaction(engine, event_queries.number_pending, PUMP_BATCH)
        bounds: LogBounds = await read(engine, event_queries.bounds)
        for channel, offset in since.items():
            if offset < bounds.pruned_through:
                raise Gone(
                    f"events of {channel.value} after {offset} are no longer kept (the "
                    f"log starts after {bounds.pruned_through}): subscribe without since, "
                    "and read what was missed from the API",
                    error_code="since_expired",
                )
            if offset > bounds.newest:
                raise Conflict(
                    f"since {offset} for {channel.value} is beyond the newest event "
                    f"({bounds.newest}): an offset from another coordinator network?",
                    error_code="since_unknown",
                )
        if self.last_seq is None:
            self.last_seq = bounds.newest
        starts: dict[Channel, int] = {}
        replays: list[Channel] = []
        for channel in channels:
            if channel in subscriber.channels:
                self._unindex(subscriber, channel)
            resume_after = since.get(channel)
            replay = resume_after is not None and resume_after < bounds.newest
            start = bounds.newest if resume_after is None else resume_after
            subscriber.channels[channel] = _ChannelState(start, [] if replay else None)
            self._index.setdefault(channel, {}).setdefault(
                viewer_key(subscriber.viewer, channel), set()
            ).add(subscriber)
            starts[channel] = start
            if replay:
                replays.append(channel)
        on_subscribed(starts)
        for channel in replays:
            await self._replay(engine, subscriber, channel)

    async def _replay(self, engine: AsyncEngine, subscriber: Subscriber, channel: Channel) -> None:
        state = subscriber.channels[channel]
        cursor = state.floor
        while not subscriber.closing:
            page = await read(
                engine,
                event_queries.channel_after,
                channel,
                subscriber.viewer,
                cursor,
                REPLAY_PAGE,
            )
            for event in page:
                await subscriber.put_replayed(frame(event))
                cursor = event.seq
            if len(page) < REPLAY_PAGE:
                break
        if subscriber.channels.get(channel) is not state:
            return  # unsubscribed meanwhile
        # Nothing is awaited from here on: no live event can slip between the two.
        held = state.held or []
        state.held = None
        state.floor = cursor
        for event in held:
            if event.seq > state.floor:
                subscriber.offer(channel, event, frame(event))

    def _unindex(self, subscriber: Subscriber, channel: Channel) -> None:
        by_key = self._index.get(channel)
        if by_key is None:
            return
        key = viewer_key(subscriber.viewer, channel)
        members = by_key.get(key)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del by_key[key]
        if not by_key:
            del self._index[channel]

    def fan_out(self, event: Event) -> None:
        """Hand one committed event to every subscriber that may see it."""
        try:
            channel = Channel(event.channel)
        except ValueError:
            return  # a channel this version does not know (a newer coordinator's)
        by_key = self._index.get(channel)
        if not by_key:
            return
        text: str | None = None
        for key in ("*", *audience_keys(event)):
            members = by_key.get(key)
            if not members:
                continue
            if text is None:
                text = frame(event)
            for subscriber in tuple(members):
                if subscriber.offer(channel, event, text):
                    self.delivered += 1
                else:
                    self.dropped += 1

    async def run(
        self, engine: AsyncEngine, settings: Settings, reader: SqliteEventReader | None = None
    ) -> None:
        """The pump: deliver committed events until cancelled.

        Events are handed out in slices of half a queue, with a loop turn between
        slices in which every writer sends what it holds: a burst larger than a
        queue (a thousand jobs submitted at once) passes a connection that keeps up,
        and only one whose socket stopped taking data overflows."""
        self._reader = reader
        self._settings = settings
        while True:
            if self._subscribers:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.event_poll_seconds):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            last = self.last_seq
            if last is None or not self._subscribers:
                continue
            try:
                if reader is not None:
                    events = reader.after(last, PUMP_BATCH)
                else:
                    # PostgreSQL: number what committed since (the events' offsets).
                    numbered = await transaction(engine, event_queries.number_pending, PUMP_BATCH)
                    if numbered == PUMP_BATCH:
                        self._wake.set()
                    events = await read(engine, event_queries.after, last, PUMP_BATCH)
            except asyncio.CancelledError:
                raise
            except Exception:  # the pump must outlive a database hiccup
                log.exception("reading events failed; retrying")
                await asyncio.sleep(settings.event_poll_seconds)
                self._wake.set()
                continue
            for index, event in enumerate(events):
                if self.last_seq is None:
                    break  # everyone left while the events were read
                if index and index % self._slice == 0:
                    await asyncio.sleep(0)
                    if self.last_seq is None:
                        break
                self.fan_out(event)
                self.last_seq = event.seq
            if len(events) == PUMP_BATCH:
                self._wake.set()
