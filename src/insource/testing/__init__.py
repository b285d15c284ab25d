"""insource.testing: a fake OpenAI / Azure OpenAI upstream, a background server runner and the demo's
simulated teacher and generated data. Everything here is simulated and says so.

Names are resolved lazily (PEP 562) so that ``python -m insource.testing.fake_upstream`` does not import
the module twice.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from insource.testing.fake_upstream import FakeUpstream, RecordedRequest, echo_responder
    from insource.testing.server import ServerHandle, run_server
    from insource.testing.teacher import SimulatedTeacher

_EXPORTS = {
    "FakeUpstream": "insource.testing.fake_upstream",
    "RecordedRequest": "insource.testing.fake_upstream",
    "echo_responder": "insource.testing.fake_upstream",
    "ServerHandle": "insource.testing.server",
    "run_server": "insource.testing.server",
    "SimulatedTeacher": "insource.testing.teacher",
}

__all__ = ["FakeUpstream", "RecordedRequest", "ServerHandle", "SimulatedTeacher", "echo_responder", "run_server"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'insource.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
