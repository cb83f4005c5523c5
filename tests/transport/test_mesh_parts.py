"""The mesh's small parts without sockets: tokens, rate limits, backoff, awareness, send queue."""

from __future__ import annotations

import random

import pytest

from transport.auth import InsecureListenError, TokenAuth, check_listen_safety, is_loopback, token_from_request
from transport.awareness import OUTDATED_TIMEOUT, AwarenessTable
from transport.limits import Backoff, Limits, RateLimiter, ReconnectPolicy, TokenBucket
from transport.messages import AwarenessEntry, decode_awareness_update, encode_awareness_update
from transport.peer import Kind, SendQueue


class Clock:
    """A manual clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_read_write_read_only_and_refusals() -> None:
    auth = TokenAuth(["writer"], ["reader"])
    assert auth.required
    assert auth.check("writer").allowed and not auth.check("writer").read_only
    assert auth.check("reader").allowed and auth.check("reader").read_only
    for presented, reason in ((None, "missing token"), ("", "wrong token"), ("writer ", "wrong token"),
                              ("wri", "wrong token"), ("zoë", "wrong token")):
        access = auth.check(presented)
        assert not access.allowed and access.reason == reason
    assert TokenAuth().check(None).allowed and not TokenAuth().required
    with pytest.raises(ValueError):
        TokenAuth([""])


def test_token_sources() -> None:
    assert token_from_request("Bearer abc", "") == "abc"
    assert token_from_request("bearer  abc ", "token=zzz") == "abc"
    assert token_from_request(None, "token=q%20s&x=1") == "q s"
    assert token_from_request("Basic Zm9v", "token=fromquery") == "fromquery"
    assert token_from_request(None, "") is None


def test_loopback_rule() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.org", ""):
        assert not is_loopback(host)
    with pytest.raises(InsecureListenError):
        check_listen_safety("0.0.0.0", TokenAuth(), allow_insecure_public=False)
    check_listen_safety("0.0.0.0", TokenAuth(read_only_tokens=["r"]), allow_insecure_public=False)


def test_token_bucket_and_rate_limiter() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert all(bucket.take(1) for _ in range(5)) and not bucket.take(1)
    clock.now += 0.5
    assert all(bucket.take(1) for _ in range(5)) and not bucket.take(1)
    limiter = RateLimiter(Limits(messages_per_second=1, message_burst=2, bytes_per_second=1, max_frame_size=1024), clock)
    assert limiter.admit(4000) is None
    assert limiter.admit(1) is None
    assert limiter.admit(1) == "messages per second"
    clock.now += 10
    assert limiter.admit(10_000) == "bytes per second"


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        Limits(max_frame_size=10)
    with pytest.raises(ValueError):
        Limits(send_queue_bytes=0)
    with pytest.raises(ValueError):
        Limits(integrity_check_bytes=-1)
    assert Limits(integrity_check_bytes=0).integrity_check_bytes == 0
    assert Limits(max_frame_size=4096).effective_byte_burst >= 4 * 4096


def test_backoff_grows_with_jitter_is_bounded_and_resets() -> None:
    policy = ReconnectPolicy(initial=0.1, factor=2, maximum=1.0, jitter=0.5)
    backoff = Backoff(policy, random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.05 - 1e-9 <= delay <= 1.0 for delay in delays)
    assert delays[0] <= 0.1 and max(delays[5:]) > 0.5
    assert len(set(delays)) == len(delays), "jittered"
    backoff.reset()
    assert backoff.next_delay() <= 0.1
    with pytest.raises(ValueError):
        ReconnectPolicy(initial=2, maximum=1)


def test_awareness_follows_y_protocols_rules() -> None:
    clock = Clock()
    table = AwarenessTable(1, {"me": True}, clock=clock, max_states=3)
    update = encode_awareness_update([AwarenessEntry(2, 1, {"user": "x"}), AwarenessEntry(3, 0, {"user": "y"})])
    relayed = table.apply(update, via="c1")
    assert relayed is not None and [e.client_id for e in decode_awareness_update(relayed)] == [2]
    assert table.apply(update, via="c1") is None, "same clock: nothing new"
    removal = encode_awareness_update([AwarenessEntry(2, 1, None)])
    assert table.apply(removal, via="c1") is not None, "null at the same clock removes"
    assert 2 not in {s["client_id"] for s in table.online()}
    spoof = encode_awareness_update([AwarenessEntry(1, 50, None)])
    assert table.apply(spoof, via="c2") is None and table.local_state == {"me": True}
    assert decode_awareness_update(table.renew_local() or b"")[0].clock == 51
    table.apply(encode_awareness_update([AwarenessEntry(4, 1, {}), AwarenessEntry(5, 1, {}), AwarenessEntry(6, 1, {})]), "c3")
    assert len(table.online()) <= 3, "bounded"
    gone = table.remove_via("c3")
    assert gone is not None and all(e.state is None for e in decode_awareness_update(gone))
    table.apply(encode_awareness_update([AwarenessEntry(7, 1, {"user": "z"})]), "c4")
    clock.now += OUTDATED_TIMEOUT + 1
    table.expire()
    assert [s["client_id"] for s in table.online()] == [1]


def test_send_queue_is_bounded_and_overflow_requests_a_resync() -> None:
    queue = SendQueue(max_items=4, max_bytes=100)
    queue.put(Kind.FRAME, b"hello", essential=True)
    for _ in range(3):
        assert queue.put(Kind.UPDATE, b"u" * 10)
    assert not queue.put(Kind.UPDATE, b"u" * 10)
    assert queue.resync_requested and len(queue) == 1 and queue.overflows == 1
    assert not queue.put(Kind.UPDATE, b"x"), "dropped while a resync is pending"
    queue.start_resync()
    assert not queue.resync_requested
    assert queue.put(Kind.UPDATE, b"a" * 10) and queue.put(Kind.UPDATE, b"b" * 10)
    assert queue.put(Kind.STEP2, b"\x00")
    first = queue.pop(max_merge_bytes=1000)
    assert first[0].payload == b"hello"
    merged = queue.pop(max_merge_bytes=1000)
    assert [item.payload for item in merged] == [b"a" * 10, b"b" * 10], "consecutive updates pop together"
    assert queue.pop(1000)[0].kind is Kind.STEP2 and queue.pop(1000) == []
    assert queue.high_water_items <= 4 and queue.high_water_bytes <= 100
    big = SendQueue(max_items=4, max_bytes=100)
    assert big.put(Kind.UPDATE, b"z" * 500), "an empty queue takes one oversized item"
