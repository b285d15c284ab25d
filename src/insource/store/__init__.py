"""Storage: schema, ordered migrations, batched writer."""

from __future__ import annotations

from insource.config import Config
from insource.errors import ConfigError
from insource.store.sqlite import Row, Store

__all__ = ["Row", "Store", "open_store"]


def open_store(cfg: Config) -> Store:
    """Open (creating and migrating when needed) the store named by `[store] url`."""
    path = cfg.sqlite_path()
    if path is None:
        raise ConfigError(
            f"unsupported store url {cfg.store.url!r}: use sqlite:///PATH "
            "(PostgreSQL support is planned behind the [postgres] extra)"
        )
    return Store(path)
