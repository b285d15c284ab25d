"""insource: stop renting your AI.

An OpenAI-compatible gateway that meters and captures traffic, distills it into
models you own, and routes traffic to them once they are proven.
"""

__version__ = "0.1.0"
