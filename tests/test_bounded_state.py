"""Per-worker state stays bounded under load (the gateway soak of bench/gateway_bench.py): no structure grows with
the number of requests served. Counts of entries, never timings."""

from __future__ import annotations

from insource.metering.budgets import RateLimiter, RateWindow


def test_rate_window_of_a_key_without_limits_does_not_grow() -> None:
    limiter = RateLimiter()
    for _ in range(50_000):
        assert limiter.check("key-1", None, None, 0) is None
    assert len(limiter.requests["key-1"].events) == 0
    assert len(limiter.tokens["key-1"].events) == 0


def test_rate_window_holds_buckets_not_events() -> None:
    window = RateWindow()
    t = 1000.0
    for _ in range(150_000):  # 1,000 requests a second for 150 s
        assert not window.would_exceed(1, 10**9, t)
        window.add(1, t)
        t += 0.001
    assert len(window.events) <= 62
    assert 60_000 <= window.total <= 61_000  # the last minute's requests, counted at most a second longer


def test_rate_window_still_limits_and_expires() -> None:
    limiter_window = RateWindow()
    for i in range(3):
        assert not limiter_window.would_exceed(1, 3, 100.0 + i * 0.1)
        limiter_window.add(1, 100.0 + i * 0.1)
    assert limiter_window.would_exceed(1, 3, 130.0)
    assert 29.0 <= limiter_window.retry_after(130.0) <= 31.0
    assert not limiter_window.would_exceed(1, 3, 160.3)  # the bucket's last event is a minute old
    assert limiter_window.total == 0
