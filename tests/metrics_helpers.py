"""Reading a Prometheus exposition (the metrics textfile, the push gateway's body) in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

#: a sample's value by (name, its labels sorted)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, keyed by name and sorted labels (the parser's view)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
