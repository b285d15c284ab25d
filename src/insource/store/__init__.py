"""Storage: schema, ordered migrations, batched writer."""

from __future__ import annotations

from insource.config import Config
from insource.errors import ConfigError
from insource.store.sqlite import Row, Store

__all__ = ["AUDITS_SQL", "CALLER_REQUESTS_SQL", "REFUSED_SQL", "SERVED_BY_SQL", "Row", "Store", "open_store"]

# Usage records of teacher audits (endpoint 'audit') are spend, but not requests a caller sent; requests insource
# refused itself before any teacher or student saw them (rate limit, budget, validation: no served_by and no
# upstream attempt) are neither. Reports count the three apart with these aggregates over the usage table.
_REFUSED = "served_by IS NULL AND attempts = 0"
CALLER_REQUESTS_SQL = f"SUM(CASE WHEN endpoint = 'audit' OR ({_REFUSED}) THEN 0 ELSE 1 END)"
AUDITS_SQL = "SUM(CASE WHEN endpoint = 'audit' THEN 1 ELSE 0 END)"
REFUSED_SQL = f"SUM(CASE WHEN endpoint <> 'audit' AND {_REFUSED} THEN 1 ELSE 0 END)"
# Who answered, for grouping: requests insource refused itself are insource's, as their response header says.
SERVED_BY_SQL = "COALESCE(served_by, 'insource')"


def open_store(cfg: Config) -> Store:
    """Open (creating and migrating when needed) the store named by `[store] url`."""
    url = cfg.store.url
    if url.startswith(("postgresql://", "postgres://", "env::")):
        from insource.config import resolve_secret
        from insource.store.postgres import PgStore

        resolved = resolve_secret(url) if url.startswith("env::") else url
        if not resolved:
            raise ConfigError(f"[store] url references {url}, which is not set")
        return PgStore(resolved, cfg.report.timezone)
    path = cfg.sqlite_path()
    if path is None:
        raise ConfigError(f"unsupported store url {url!r}: use sqlite:///PATH or postgresql://HOST/DB")
    return Store(path, cfg.report.timezone)
