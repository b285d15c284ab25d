"""insource.testing: test doubles users can use too: a fake OpenAI / Azure OpenAI upstream and a background
server runner. (The demo's simulated teacher and generated data live in `insource.demo`.)

Names are resolved lazily (PEP 562) so that ``python -m insource.testing.fake_upstream`` does not import
the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from insource.testing.fake_upstream import FakeUpstream, RecordedRequest, echo_responder
    from insource.testing.server import ServerHandle, run_server

_EXPORTS = {
    "FakeUpstream": "insource.testing.fake_upstream",
    "RecordedRequest": "insource.testing.fake_upstream",
    "echo_responder": "insource.testing.fake_upstream",
    "ServerHandle": "insource.testing.server",
    "run_server": "insource.testing.server",
}

__all__ = ["FakeUpstream", "RecordedRequest", "ServerHandle", "echo_responder", "run_server"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'insource.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
