"""Providers declare what they can do; the core reads the declaration, never a provider's name."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.budget import RequestBudget
from runner.config import PROVIDERS, RunConfig
from runner.models import Attempt, Job, Usage
from runner.pipeline import Engine
from runner.providers.capabilities import (
    ANTHROPIC,
    OPENAI,
    Capabilities,
    batch_cache_config,
    capabilities_for,
)

RUNNER = Path(__file__).resolve().parent.parent / "runner"
# Only these may know provider names: the wire modules, the config, the simulated provider.
ALLOWED = {"providers", "mock", "config.py"}


def _provider_mentions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in PROVIDERS:
            parent = parents.get(node)
            # `runner mock` is a subcommand's name (an add_parser call or a row of the CLI's
            # subcommand table, which names the module), not a provider check
            if isinstance(parent, ast.Call) and getattr(parent.func, "attr", "") == "add_parser":
                continue
            if isinstance(parent, ast.Tuple) and any(
                isinstance(e, ast.Constant) and str(e.value).startswith("runner.")
                for e in parent.elts
            ):
                continue
            found.append(f"{path.name}:{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.Attribute) and any(
            node.attr.startswith(p) for p in PROVIDERS if p != "mock"
        ):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Compare):
            # `config.provider == X` / `in (...)` against any string: a branch on a name
            parts = list(ast.walk(node))
            if any(isinstance(n, ast.Attribute) and n.attr == "provider" for n in parts) and any(
                isinstance(n, ast.Constant) and isinstance(n.value, str) for n in parts
            ):
                found.append(f"{path.name}:{node.lineno}: compares .provider")
    return found


# The batch API's wire module is a wire protocol like providers/ (one class per shape). The
# batch engine reads Capabilities (batch_primes_groups, batch_cache_ttl) and the wire's own
# methods, like the direct engine: it is held to the rule in full.
KNOWN: dict[str, int | None] = {"batchapi/wire.py": None}


def test_no_core_module_branches_on_a_provider_name() -> None:
    mentions = []
    for path in sorted(RUNNER.rglob("*.py")):
        rel = path.relative_to(RUNNER)
        if rel.parts[0] in ALLOWED:
            continue
        hits = _provider_mentions(path)
        known = KNOWN.get(rel.as_posix(), 0)
        if known is None or len(hits) <= known:
            continue
        mentions += hits
    assert mentions == []


def test_the_batch_engine_is_checked_and_clean() -> None:
    engine = RUNNER / "batchapi" / "engine.py"
    assert engine.exists() and "batchapi/engine.py" not in KNOWN
    assert _provider_mentions(engine) == []


def test_batch_capabilities_come_from_the_declaration() -> None:
    anth = RunConfig(provider="anthropic", base_url="http://x")
    assert ANTHROPIC.batch_primes_groups and ANTHROPIC.batch_cache_ttl == "1h"
    assert not OPENAI.batch_primes_groups and OPENAI.batch_cache_ttl is None
    assert batch_cache_config(anth).anthropic_cache_ttl == "1h"
    openai = RunConfig(provider="openai", base_url="http://x")
    assert batch_cache_config(openai) is openai


def test_the_checker_sees_a_provider_branch(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('def f(config):\n    return config.provider == "anthropic"\n')
    assert len(_provider_mentions(bad)) == 2


def test_each_provider_declares_its_capabilities() -> None:
    anth = capabilities_for(RunConfig(provider="anthropic", base_url="http://x"))
    assert anth.release_on_first_byte and anth.supports_prewarm and not anth.prewarm
    assert capabilities_for(
        RunConfig(provider="anthropic", base_url="http://x", anthropic_prewarm=True)
    ).prewarm
    assert capabilities_for(RunConfig(provider="openai", base_url="http://x")) == OPENAI
    assert OPENAI.spreads_cache_keys and not OPENAI.release_on_first_byte


def test_one_budget_policy_for_every_caller() -> None:
    job = Job("a", 1, ({"role": "user", "content": "x"},), 0, None, None, None, {}, 400, 0)
    anth = RequestBudget.for_run(RunConfig(provider="anthropic", base_url="http://x"))
    assert anth.completion(job) == ANTHROPIC.default_max_tokens == 1024
    # the config's max_completion_tokens counts as much as its max_tokens
    cfg = RunConfig(params={"max_completion_tokens": 7}, context_window=105)
    b = RequestBudget.for_run(cfg)
    assert b.completion(job) == 7 and b.tokens(job) == 100 + 7
    assert b.context_problem(job, "jobs.jsonl") is not None  # 100 + 7 > 105
    wide = RunConfig(params={"max_tokens": 7}, context_window=107)
    assert RequestBudget.for_run(wide).context_problem(job, "j") is None
    assert b.cacheable(1024) and not b.cacheable(1023)
    assert RequestBudget.for_run(RunConfig(min_cacheable_tokens=10)).cacheable(10)


class _FirstByteBackend:
    """Holds every request until released; calls ``on_first_byte`` as soon as it is sent."""

    def __init__(self, caps: Capabilities) -> None:
        self.capabilities = caps
        self.gate = asyncio.Event()
        self.sent: list[str] = []

    async def send(
        self,
        job: Job,
        *,
        cache_key: str | None,
        on_first_byte: Callable[[], None] | None = None,
        prewarm: bool = False,
    ) -> Attempt:
        self.sent.append(job.custom_id)
        if on_first_byte is not None:
            on_first_byte()
        await self.gate.wait()
        return Attempt(status=200, body={}, raw=b"{}", usage=Usage(10, 0, 0, 1))


class _Sink:
    def done(self, custom_id: str | int) -> bool:
        return False

    def write(self, result: object, record: object) -> None:
        pass

    def flush(self) -> None:
        pass


class _NoLimits:
    async def acquire(self, est_tokens: int) -> float:
        return 0.0

    def release(self, est_tokens: int, attempt: Attempt) -> None:
        pass


@pytest.mark.parametrize("first_byte", [True, False])
async def test_followers_go_at_the_primers_first_byte_only_when_declared(first_byte: bool) -> None:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    jobs = [Job(f"j{i}", i + 1, msgs, 1, "g", "g", None, {}, 8001, 8000) for i in range(4)]
    backend = _FirstByteBackend(Capabilities(release_on_first_byte=first_byte))
    # Fixed limits: the whole group fans out at once (the learned ones would probe with two).
    config = RunConfig(concurrency=8, cache_adapt=False)
    engine = Engine(config, backend=backend, sink=_Sink(), limiter=_NoLimits())
    task = asyncio.create_task(engine.run(jobs))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(backend.sent) == (4 if first_byte else 1)
    backend.gate.set()
    assert (await task).exit_code == 0
    assert len(backend.sent) == 4
