"""runner: an async, high-throughput batch runner for LLM chat APIs."""

__all__: list[str] = []
__version__ = "0.1.0"
