"""Near-misses of a job line's field names: a typo that would otherwise be ignored, and paid.

The compact shape passes fields it does not know by (an evaluation set's ``expected`` or
``label`` beside the job is fine), so a misspelt ``parms`` or ``cache-id`` used to run the job
without its ``max_tokens`` or without its context: a different, billed request. A field that is
one edit or so away from a field of the shape, or a ``system`` prompt given on the job (which
the compact shape has no place for), is a bad line instead, naming the field it resembles
(docs/FORMATS.md, "Jobs file"). Answers are cached per field name, so a file whose every line
carries the same extra field costs one lookup per line.
"""

from __future__ import annotations

from difflib import get_close_matches
from functools import lru_cache
from typing import Final

COMPACT_KEYS: Final = frozenset(
    {"id", "query", "messages", "cache_id", "params", "model", "metadata"}
)
TOKEN_PARAMS: Final = ("max_tokens", "max_completion_tokens")
_CUTOFF: Final = 0.85  # parms, querry, cache-id, models; not ids, max_new_tokens
#: words near a field name that an evaluation set's lines carry as fields of their own
#: ("mode": "few-shot", "cached": true): not typos
_OWN_WORDS: Final = frozenset({"mode", "cached"})


@lru_cache(maxsize=256)
def compact_field_problem(key: str) -> str | None:
    """Why ``key``, a field the compact shape does not know, is taken for a mistake (or None)."""
    if key == "system":
        return (
            "not a field of the compact shape (it would be dropped): put the system prompt in "
            "the contexts file and name it with cache_id, or give messages with a system turn"
        )
    name = key.lower().replace("-", "_")
    stem = name.rstrip("0123456789")
    if name in _OWN_WORDS or (stem != name and stem in COMPACT_KEYS):
        # a numbered sibling (a pairwise set's model1/model2, query1/query2) is data, as
        # model_1 is: a typo does not append a number
        return None
    near = get_close_matches(name, sorted(COMPACT_KEYS), 1, _CUTOFF)
    if near:
        return f"unknown field, did you mean {near[0]}? (it would be ignored)"
    return None


@lru_cache(maxsize=256)
def token_param_problem(key: str) -> str | None:
    """Why ``key`` among the params looks like a misspelt ``max_tokens`` (or None): the
    server would ignore it or refuse it, and the run would count the job without a budget."""
    if key in TOKEN_PARAMS:
        return None
    near = get_close_matches(key.lower().replace("-", "_"), TOKEN_PARAMS, 1, _CUTOFF)
    if near:
        return f"unknown parameter, did you mean {near[0]}? (the reply would have no limit)"
    return None
