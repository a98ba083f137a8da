"""The pure rules of the event stream: who sees an event (the subscriber index agrees
with the visibility rule), the frame's bytes, and a subscriber's bounded queue."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given
from hypothesis import strategies as st

from aitbc.domain.events import (
    Channel,
    Event,
    Viewer,
    audience_keys,
    frame,
    may_subscribe,
    viewer_key,
    visible_to,
)
from aitbc.services.event_hub import Subscriber, _ChannelState

IDS = st.sampled_from(["c1", "c2", "m1", "m2", None])
viewers = st.builds(Viewer, st.sampled_from(["client", "miner", "admin", None]), IDS)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
events = st.builds(
    Event,
    st.integers(min_value=1, max_value=2**53),
    st.sampled_from([channel.value for channel in Channel]),
    st.sampled_from(["job.pending", "job.running", "block.sealed", "miner.heartbeat"]),
    IDS,
    IDS,
    json_values.map(json.dumps),
)


@given(viewers, events)
def test_the_index_finds_exactly_the_subscribers_that_may_see_an_event(
    viewer: Viewer, event: Event
) -> None:
    channel = Channel(event.channel)
    if not may_subscribe(viewer, channel):
        return
    if viewer.role in ("client", "miner") and viewer.owner_id is None:
        return  # every key acts as someone
    reached = viewer_key(viewer, channel) in ("*", *audience_keys(event))
    assert reached == visible_to(viewer, event)


@given(events)
def test_a_frame_is_the_event_as_json(event: Event) -> None:
    assert json.loads(frame(event)) == {
        "channel": event.channel,
        "type": event.type,
        "seq": event.seq,
        "data": json.loads(event.data),
    }


def test_anonymous_callers_get_public_channels_only() -> None:
    anonymous = Viewer(None, None)
    assert may_subscribe(anonymous, Channel.BLOCKS)
    assert not may_subscribe(anonymous, Channel.JOB_UPDATES)
    job = Event(1, "job_updates", "job.pending", "c1", None, "{}")
    assert not visible_to(Viewer("miner", "m1"), job)
    assert visible_to(Viewer("client", "c1"), job) and visible_to(Viewer("admin", None), job)


def _event(seq: int) -> Event:
    return Event(seq, "blocks", "block.sealed", None, None, "{}")


async def test_a_full_queue_drops_the_subscriber_as_too_slow() -> None:
    subscriber = Subscriber(Viewer(None, None), max_queued=3)
    subscriber.channels[Channel.BLOCKS] = _ChannelState(floor=0)  # live from offset 0
    assert all(subscriber.offer(Channel.BLOCKS, _event(n), frame(_event(n))) for n in (1, 2, 3))
    assert not subscriber.offer(Channel.BLOCKS, _event(4), frame(_event(4)))
    assert subscriber.too_slow and subscriber.closing  # /ws maps it to 1013
    assert await subscriber.next_frame() is None


async def test_events_up_to_the_floor_are_skipped_and_a_replay_holds_live_ones() -> None:
    subscriber = Subscriber(Viewer(None, None), max_queued=10)
    state = _ChannelState(floor=5, held=[])
    subscriber.channels[Channel.BLOCKS] = state
    subscriber.offer(Channel.BLOCKS, _event(5), frame(_event(5)))  # at the floor: skipped
    subscriber.offer(Channel.BLOCKS, _event(7), frame(_event(7)))  # replaying: held
    assert subscriber.queued == 0 and [event.seq for event in state.held] == [7]
    state.held, state.floor = None, 7
    subscriber.offer(Channel.BLOCKS, _event(8), frame(_event(8)))
    async with asyncio.timeout(1):
        assert json.loads(await subscriber.next_frame() or "")["seq"] == 8
