"""The simulated provider: an OpenAI- and Anthropic-compatible server for runs, tests, benchmarks.

``serve(MockConfig(...))`` runs one in-process and yields its base URL; ``runner mock`` runs one
from the command line. See docs/MOCK.md for the tokenizer, cache, latency and fault models.
"""

from .config import MockConfig
from .server import MockServer, serve

__all__ = ["MockConfig", "MockServer", "serve"]
