"""The miner's output stream: what it sends is always a prefix of the final result."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aitbc.miner.streaming import OutputStream


def drain(stream: OutputStream) -> str:
    """Send everything sendable now (as a coordinator taking it all would ack)."""
    sent = ""
    while (pending := stream.pending()) is not None:
        offset, text = pending
        assert offset == stream.sent
        sent += text
        stream.acknowledged(offset + len(text))
    return sent


def test_without_stops_everything_is_sent_as_it_comes() -> None:
    stream = OutputStream()
    stream.feed("Hel")
    stream.feed("lo")
    assert stream.pending() == (0, "Hello")
    stream.acknowledged(5)
    assert stream.pending() is None
    stream.feed(", world")
    assert stream.pending() == (5, ", world")


def test_text_that_may_begin_a_stop_is_held_back_until_it_does_not() -> None:
    stream = OutputStream(["END"])
    stream.feed("abcE")
    assert drain(stream) == "abc"  # "E" could begin "END"
    stream.feed("x")
    assert drain(stream) == "Ex"
    stream.feed("yEN")
    assert drain(stream) == "y"
    stream.feed("D and more")
    assert drain(stream) == ""  # the stop came: nothing at or after it, ever
    assert stream.pending() is None


def test_an_unacknowledged_report_is_sent_again_and_resend_all_starts_over() -> None:
    stream = OutputStream()
    stream.feed("abc")
    assert stream.pending() == (0, "abc")
    stream.feed("def")  # the first report's answer never came
    assert stream.pending() == (0, "abcdef")
    stream.acknowledged(6)
    stream.resend_all()
    assert stream.pending() == (0, "abcdef")


@given(
    pieces=st.lists(st.text(alphabet="abXY", max_size=4), max_size=30),
    stops=st.lists(st.text(alphabet="abXY", min_size=1, max_size=3), max_size=3),
    drain_every=st.integers(min_value=1, max_value=5),
)
def test_what_is_sent_is_a_prefix_of_the_result_cut_at_its_first_stop(
    pieces: list[str], stops: list[str], drain_every: int
) -> None:
    stream = OutputStream(stops)
    sent = ""
    for index, piece in enumerate(pieces):
        stream.feed(piece)
        if index % drain_every == 0:
            sent += drain(stream)
    sent += drain(stream)
    generated = "".join(pieces)
    cuts = [generated.find(stop) for stop in stops if stop in generated]
    result = generated[: min(cuts)] if cuts else generated
    # Never past the result; all of it once no stop can still be pending.
    assert result.startswith(sent)
    hold = max((len(stop) for stop in stops), default=1) - 1
    assert len(result) - len(sent) <= (0 if cuts else hold)
