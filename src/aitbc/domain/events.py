"""Live events (DESIGN.md section 8): channels, who may see an event, and its frame.

An event is one committed change, numbered by ``seq``: one offset shared by every
channel, which only rises (a channel's events are the subsequence on that channel,
so a subscriber sees gaps where events of other channels or of other clients were).
``since`` (exclusive) resumes a channel after the last offset a subscriber received.

Who sees what:

- ``job_updates``: a job's client, the miner running it (events from its claim on),
  and admins;
- ``miner_heartbeats``, ``blocks``, ``receipts``: everyone, anonymous callers too
  (the same public facts the explorer serves);
- ``trades`` (each exchange fill: market, price, amount, the taker's side) and
  ``orderbook`` (the price levels each matching batch changed, with the book's
  ``sequence``; an amount of 0 is a level emptied): everyone.

The frame sent for an event is the same bytes for every subscriber, so it is
encoded once: ``{"channel", "type", "seq", "data"}`` with ``data`` as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aitbc.domain.jobs import JobStatus


class Channel(StrEnum):
    """The channels of ``/ws``."""

    JOB_UPDATES = "job_updates"
    MINER_HEARTBEATS = "miner_heartbeats"
    BLOCKS = "blocks"
    RECEIPTS = "receipts"
    # The exchange's channels (DESIGN.md section 7).
    TRADES = "trades"
    ORDERBOOK = "orderbook"


# Channels whose events anyone may see.
PUBLIC_CHANNELS = frozenset(
    {
        Channel.MINER_HEARTBEATS,
        Channel.BLOCKS,
        Channel.RECEIPTS,
        Channel.TRADES,
        Channel.ORDERBOOK,
    }
)

HEARTBEAT_TYPE = "miner.heartbeat"
BLOCK_TYPE = "block.sealed"
RECEIPT_TYPE = "receipt.issued"
JOB_PROGRESS_TYPE = "job.progress"


def job_event_type(status: str) -> str:
    """The event type of a job entering ``status``: ``job.pending``, ``job.running``..."""
    return "job." + JobStatus(status).value


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whoever reads events: a role (``client``, ``miner``, ``admin``) and the id it
    acts as, or ``role=None`` for an anonymous caller."""

    role: str | None
    owner_id: str | None

    @property
    def sees_all_jobs(self) -> bool:
        """Admins follow every job."""
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event: its offset, channel and type, the job's client and miner
    (job events only: who may see it) and its ``data`` as JSON text."""

    seq: int
    channel: str
    type: str
    client_id: str | None
    miner_id: str | None
    data: str


def may_subscribe(viewer: Viewer, channel: Channel) -> bool:
    """Whether ``viewer`` may subscribe to ``channel`` at all: job updates need a key."""
    return channel in PUBLIC_CHANNELS or viewer.role is not None


def visible_to(viewer: Viewer, event: Event) -> bool:
    """Whether ``viewer`` may receive ``event``."""
    if event.channel != Channel.JOB_UPDATES:
        return True
    if viewer.sees_all_jobs:
        return True
    if viewer.role == "client":
        return event.client_id is not None and event.client_id == viewer.owner_id
    if viewer.role == "miner":
        return event.miner_id is not None and event.miner_id == viewer.owner_id
    return False


def audience_keys(event: Event) -> tuple[str, ...]:
    """The subscriber index keys an event goes to beyond those who see everything:
    ``c:<client>`` and ``m:<miner>`` for a job event, none for a public one."""
    if event.channel != Channel.JOB_UPDATES:
        return ()
    keys: list[str] = []
    if event.client_id is not None:
        keys.append("c:" + event.client_id)
    if event.miner_id is not None:
        keys.append("m:" + event.miner_id)
    return tuple(keys)


def viewer_key(viewer: Viewer, channel: Channel) -> str:
    """The index key a subscriber is found under: ``*`` (sees all of the channel),
    ``c:<client>`` or ``m:<miner>`` (its own job events)."""
    if channel != Channel.JOB_UPDATES or viewer.sees_all_jobs:
        return "*"
    prefix = "c:" if viewer.role == "client" else "m:"
    return prefix + (viewer.owner_id or "")


def frame(event: Event) -> str:
    """The text frame sent for ``event``. Channel and type are our own identifiers
    (letters, digits, ``_`` and ``.``), so they need no escaping."""
    return (
        f'{{"channel":"{event.channel}","type":"{event.type}",'
        f'"seq":{event.seq},"data":{event.data}}}'
    )
