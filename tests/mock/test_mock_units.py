"""Pure parts of the simulated provider: tokenizer, cache, buckets, routing, config, flags."""

from __future__ import annotations

import argparse
import math
import re

import pytest

from runner.mock import MockConfig
from runner.mock.cache import PrefixCache, ReplicaRouter, anthropic_boundaries, block_boundaries
from runner.mock.cli import add_arguments, config_from_namespace
from runner.mock.limits import Bucket, go_duration, rfc3339_after
from runner.mock.server import latency_s
from runner.mock.tokenizer import anthropic_text, count_tokens, openai_text


def test_tokens_are_four_bytes_rounded_up() -> None:
    assert [count_tokens(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    text = openai_text([{"role": "system", "content": "abc"}, {"role": "user", "content": "é"}])
    assert text == "system\nabc\nuser\né\n".encode()
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert openai_text(parts) == b"user\nhi\n"


def test_anthropic_text_orders_tools_system_messages_and_marks_breakpoints() -> None:
    body = {
        "tools": [{"name": "t", "cache_control": {"type": "ephemeral"}}],
        "system": [{"type": "text", "text": "SYS", "cache_control": {"ttl": "1h"}}],
        "messages": [{"role": "user", "content": "Q"}],
    }
    text, marks = anthropic_text(body)
    assert text.index(b'"name":"t"') < text.index(b"SYS") < text.index(b"Q")
    assert [ttl for _, ttl in marks] == ["5m", "1h"]
    assert text[: marks[1][0]].endswith(b"SYS\n")
    _, top = anthropic_text({"messages": body["messages"], "cache_control": {"type": "ephemeral"}})
    assert top == [(len(b"user\nQ\n"), "5m")]


def test_block_boundaries_chain_the_whole_prefix() -> None:
    a = block_boundaries("m", b"x" * 1024 + b"A" * 600, 128, 300.0)
    b = block_boundaries("m", b"x" * 1024 + b"B" * 600, 128, 300.0)
    other_model = block_boundaries("n", b"x" * 1024, 128, 300.0)
    assert [t for _, t, _, _ in a] == [128, 256, 384]  # the partial last block is not cached
    assert a[:2] == b[:2] and a[2][0] != b[2][0]
    assert other_model[0][0] != a[0][0]


def test_anthropic_boundaries_skip_prefixes_below_minimum() -> None:
    text = b"y" * 8000
    bounds = anthropic_boundaries("m", text, [(400, "5m"), (6000, "5m"), (8000, "1h")], 1024)
    assert [(t, cost, ttl) for _, t, cost, ttl in bounds] == [
        (1500, 1500, 300.0),
        (2000, 500, 3600.0),
    ]


def test_cache_visibility_ttl_refresh_and_expiry() -> None:
    cache = PrefixCache(capacity_tokens=10_000)
    bounds = block_boundaries("m", b"z" * 2048, 128, ttl_s=10.0)
    assert cache.lookup(bounds, now=0.0) == 0  # nothing is visible before a commit
    cache.commit(bounds, now=0.0)
    assert cache.lookup(bounds, now=9.0) == 4  # hit at 9 s refreshes to 19 s
    assert cache.lookup(bounds, now=18.0) == 4
    assert cache.lookup(bounds, now=28.5) == 0  # idle past the TTL: expired
    assert len(cache) == 3 and cache.used_tokens == 3 * 128


def test_cache_evicts_least_recently_used_by_tokens() -> None:
    cache = PrefixCache(capacity_tokens=4 * 128)
    first = block_boundaries("m", b"a" * 1024, 128, 100.0)
    second = block_boundaries("m", b"b" * 1024, 128, 100.0)
    third = block_boundaries("m", b"c" * 1024, 128, 100.0)
    cache.commit(first, 0.0)
    cache.commit(second, 1.0)
    assert cache.lookup(first, 2.0) == 2  # first is now the most recently used
    cache.commit(third, 3.0)
    assert cache.used_tokens == 4 * 128
    assert cache.lookup(second, 4.0) == 0 and cache.lookup(first, 4.0) == 2


def test_router_overflows_above_key_rate_and_recovers() -> None:
    router = ReplicaRouter(replicas=3, key_rpm=2)
    text = b"p" * 4096
    home = router.route(text, "k", now=0.0)
    assert router.route(text, "k", now=0.0) == home
    spill = [router.route(text, "k", now=0.0) for _ in range(4)]
    assert home not in spill and len(set(spill)) == 2  # round robin over the other replicas
    assert router.route(text, "k", now=30.0) == home  # one request refilled after 30 s


def test_go_durations_like_openai() -> None:
    cases = {0.012: "12ms", 1.0: "1s", 360.0: "6m0s", 2.081: "2s81ms", 3725.0: "1h2m5s", 0: "0s"}
    assert {k: go_duration(k) for k in cases} == cases


def test_rfc3339_rounds_up_to_the_second() -> None:
    assert rfc3339_after(0.2, 1_700_000_000.5) == "2023-11-14T22:13:21Z"
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", rfc3339_after(60, 0.0))


def test_bucket_refills_per_minute() -> None:
    b = Bucket(60, now=0.0)
    assert b.wait_for(60, 0.0) == 0.0
    b.take(60)
    assert b.remaining() == 0 and b.reset_s() == pytest.approx(60.0)
    assert b.wait_for(1, 0.5) == pytest.approx(0.5)
    assert b.wait_for(61, 0.5) == math.inf  # more than the limit never fits


def test_latency_model() -> None:
    cfg = MockConfig(
        base_ms=100,
        prefill_ms_per_token=0.5,
        cached_prefill_ms_per_token=0.1,
        decode_ms_per_token=20,
    )
    ttft, decode = latency_s(cfg, uncached=1000, cached=2000, factor=1.0)
    assert ttft == pytest.approx(0.1 + 0.5 + 0.2) and decode == pytest.approx(0.02)
    assert latency_s(cfg, 1000, 2000, 1.1)[0] == pytest.approx(0.88)


def test_config_from_mapping_and_validation() -> None:
    mapping: dict[str, object] = {"models": ["a", "b"], "rpm": 10, "fault_http_500": 0.1}
    cfg = MockConfig(**mapping)  # type: ignore[arg-type]
    assert cfg.models == ("a", "b") and cfg.fault_rates()["http_500"] == 0.1
    for bad in (
        {"latency": "fast"},
        {"jitter": 1.5},
        {"fault_reset": 0.7, "fault_stall": 0.7},
        {"rpm": 0},
        {"cache_block_tokens": 0},
    ):
        with pytest.raises(ValueError):
            MockConfig(**bad)
    with pytest.raises(TypeError):
        unknown: dict[str, object] = {"no_such_knob": 1}
        MockConfig(**unknown)  # type: ignore[arg-type]


def test_every_config_field_is_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    ns = parser.parse_args(
        [
            "--port",
            "0",
            "--latency",
            "zero",
            "--no-cache",
            "--cache-block-tokens",
            "16",
            "--rpm",
            "60",
            "--models",
            "x",
            "y",
            "--fault-http-529",
            "0.5",
        ]
    )
    cfg = config_from_namespace(ns)
    assert cfg == MockConfig(
        latency="zero",
        cache=False,
        cache_block_tokens=16,
        rpm=60,
        models=("x", "y"),
        fault_http_529=0.5,
    )
    flags = {a for action in parser._actions for a in action.option_strings}
    missing = {f for f in MockConfig.field_names() if "--" + f.replace("_", "-") not in flags}
    assert missing == set()
    assert config_from_namespace(parser.parse_args([])) == MockConfig()
