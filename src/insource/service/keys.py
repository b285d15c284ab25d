"""Tenants and virtual keys. Keys are stored only as HMAC-SHA256 with a server secret."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from insource.config import Config, resolve_secret
from insource.errors import BadRequest, ConfigError, NotFound
from insource.service.spend import keys_month_to_date
from insource.store import Store, keys_queries

KEY_PREFIX = "isk-"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant: str
    budget_usd: float | None
    rpm: int | None
    tpm: int | None
    models: frozenset[str] | None  # None: every model
    capture: bool | None  # None: follow the tenant / global setting
    revoked: bool


def server_secret(cfg: Config, store: Store) -> bytes:
    """`[server] secret` when configured; else one generated once and kept in the store (never printed)."""
    if cfg.server.secret is not None:
        value = resolve_secret(cfg.server.secret)
        if not value:
            raise ConfigError(f"[server] secret references {cfg.server.secret}, which is not set")
        return value.encode()
    return store.meta_setdefault("server_secret", secrets.token_hex(32)).encode()


DIGEST_CACHE_SIZE = 10_000  # presented keys whose HMAC a worker remembers


def hash_key(secret: bytes, key: str) -> str:
    return hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def _row_to_info(row: dict[str, Any]) -> KeyInfo:
    models = orjson.loads(row["models"]) if row["models"] else None
    return KeyInfo(
        id=row["id"],
        tenant=row["tenant"],
        budget_usd=row["budget_usd"],
        rpm=row["rpm"],
        tpm=row["tpm"],
        models=frozenset(models) if models is not None else None,
        capture=None if row["capture"] is None else bool(row["capture"]),
        revoked=row["revoked_at"] is not None,
    )


def _check_limits(budget_usd: object, rpm: object, tpm: object) -> None:
    """Refuse limits that are the wrong type, negative or not finite: a bad limit must never mean no limit."""
    if budget_usd is not None:
        if isinstance(budget_usd, bool) or not isinstance(budget_usd, int | float) or not math.isfinite(budget_usd):
            raise BadRequest("budget_usd must be a finite number of US dollars", param="budget_usd")
        if budget_usd < 0:
            raise BadRequest("budget_usd must not be negative", param="budget_usd")
    for name, value in (("rpm", rpm), ("tpm", tpm)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"{name} must be a whole number", param=name)
        if value < 0:
            raise BadRequest(f"{name} must not be negative", param=name)


def _check_models(models: object) -> list[str] | None:
    """None allows every model; otherwise a non-empty list of model names (an empty list would fail open)."""
    if models is None:
        return None
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise BadRequest("models must be a list of model names", param="models")
    names = sorted({m.strip() for m in models if m.strip()})
    if not names:
        raise BadRequest("models must name at least one model (omit it to allow every model)", param="models")
    return names


def create_key(
    store: Store,
    secret: bytes,
    tenant: str,
    *,
    budget_usd: float | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    models: list[str] | None = None,
    capture: bool | None = None,
) -> dict[str, str]:
    """Create a key; returns {"id", "key", "tenant"}. The key itself is shown only here."""
    tenant = tenant.strip() if isinstance(tenant, str) else ""
    if not tenant:
        raise BadRequest("a tenant name is required", param="tenant")
    _check_limits(budget_usd, rpm, tpm)
    models = _check_models(models)
    if capture is not None and not isinstance(capture, bool):
        raise BadRequest("capture must be true or false", param="capture")
    key_id = "key_" + secrets.token_hex(6)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    keys_queries.insert_key(
        store,
        {
            "id": key_id,
            "tenant": tenant,
            "hash": hash_key(secret, key),
            "prefix": key[:8],
            "created_at": time.time(),
            "budget_usd": budget_usd,
            "rpm": rpm,
            "tpm": tpm,
            "models": orjson.dumps(sorted(models)).decode() if models is not None else None,
            "capture": None if capture is None else int(capture),
        },
    )
    return {"id": key_id, "key": key, "tenant": tenant}


def list_keys(store: Store) -> list[dict[str, Any]]:
    """Key metadata for operators, with `spent_usd`: the key's spend this month (UTC), the period its monthly
    budget covers. Never the key, never its hash."""
    rows = keys_queries.key_listing(store)
    spent = keys_month_to_date(store, time.time())
    for row in rows:
        row["models"] = orjson.loads(row["models"]) if row["models"] else None
        row["revoked"] = row["revoked_at"] is not None
        row["spent_usd"] = round(spent.get(row["id"], 0.0), 8)
    return rows


def revoke_key(store: Store, key_id: str) -> None:
    if not keys_queries.revoke(store, key_id, time.time()):
        raise NotFound(f"no key with id {key_id!r}", param="id", code="key_not_found")


class KeyCache:
    """Per-worker cache of keys by hash; `refresh()` reloads them all (called every 0.5 s)."""

    def __init__(self, store: Store, secret: bytes) -> None:
        self.store = store
        self.secret = secret
        self.by_hash: dict[str, KeyInfo] = {}
        # presented key -> its HMAC, for keys the store knows (an HMAC is ~2 µs a request; a dict hit 0.05).
        # Memory only, bounded: cleared when full, so random wrong keys can neither fill it nor evict for long.
        self._digests: dict[str, str] = {}

    def load_all(self) -> dict[str, KeyInfo]:
        rows = keys_queries.keys_for_cache(self.store)
        return {row["hash"]: _row_to_info(row) for row in rows}

    def refresh(self, loaded: dict[str, KeyInfo] | None = None) -> None:
        self.by_hash = self.load_all() if loaded is None else loaded

    def lookup(self, key: str) -> KeyInfo | None:
        """The active key for a presented secret, or None. A cache miss reads the store once."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        digest = self._digests.get(key)
        known = digest is not None
        if digest is None:
            digest = hash_key(self.secret, key)
        info = self.by_hash.get(digest)
        if info is None:
            row = keys_queries.key_by_hash(self.store, digest)
            if row is None:
                return None
            info = _row_to_info(row)
            self.by_hash[digest] = info
        if not known:
            if len(self._digests) >= DIGEST_CACHE_SIZE:
                self._digests.clear()
            self._digests[key] = digest
        return None if info.revoked else info
