"""CLI commands (demo)."""

from __future__ import annotations

from insource.cli import app  # noqa: F401
