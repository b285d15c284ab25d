"""insource.testing: a fake OpenAI / Azure OpenAI upstream, a background server runner and the demo's
simulated teacher and generated data. Everything here is simulated and says so."""

from insource.testing.fake_upstream import FakeUpstream, RecordedRequest, echo_responder
from insource.testing.server import ServerHandle, run_server
from insource.testing.teacher import SimulatedTeacher

__all__ = ["FakeUpstream", "RecordedRequest", "ServerHandle", "SimulatedTeacher", "echo_responder", "run_server"]
