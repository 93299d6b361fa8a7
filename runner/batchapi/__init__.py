"""Provider batch APIs: ``runner run --via batch`` and ``runner status`` (docs/BATCH.md).

``wire`` speaks the OpenAI Batch and Anthropic Message Batches protocols, ``journal`` keeps
every upload, batch id and state in the output's meta file, ``engine`` plans, submits, polls
and writes results through the exactly-once sinks (``engine.run_batch``), ``status`` reads the
journal. Nothing is imported here, so a direct run that only checks the journal stays light.
"""

from __future__ import annotations

__all__: list[str] = []
