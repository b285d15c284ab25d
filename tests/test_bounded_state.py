"""Per-worker state stays bounded under load (the gateway soak of bench/gateway_bench.py): no structure grows with
the number of requests served. Counts of entries, never timings."""

from __future__ import annotations

from pathlib import Path

from insource.metering.budgets import RateLimiter, RateWindow
from insource.service.keys import DIGEST_CACHE_SIZE, KEY_PREFIX, KeyCache, create_key, hash_key, revoke_key
from insource.store.sqlite import Store


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


def test_key_digest_cache_holds_known_keys_only_and_follows_revocation(tmp_path: Path) -> None:
    store = Store(tmp_path / "insource.db")
    try:
        secret = b"s" * 32
        made = create_key(store, secret, "acme")
        cache = KeyCache(store, secret)
        cache.refresh()
        for i in range(3000):  # wrong keys: refused, never remembered
            assert cache.lookup(f"{KEY_PREFIX}wrong-{i}") is None
        assert len(cache._digests) == 0
        for _ in range(3):
            info = cache.lookup(made["key"])
            assert info is not None and info.id == made["id"]
        assert cache._digests == {made["key"]: hash_key(secret, made["key"])}
        revoke_key(store, made["id"])
        cache.refresh()
        assert cache.lookup(made["key"]) is None  # a remembered digest still reads the refreshed key
        for i in range(DIGEST_CACHE_SIZE + 5):  # bounded whatever number of keys are presented
            cache._digests[f"{KEY_PREFIX}x{i}"] = "0"
        other = create_key(store, secret, "globex")
        assert cache.lookup(other["key"]) is not None
        assert len(cache._digests) <= DIGEST_CACHE_SIZE
    finally:
        store.close()
