"""``runner caches OUTPUT [--delete]``: list (and remove) explicit caches a run left behind.

A run deletes its caches itself, also when it is stopped by a signal or a guard, and a resumed
run cleans up after a crashed one. This command is for the rest: a crash followed by no
resume. It finds the run's caches by the tag in their ``displayName`` (derived from OUTPUT's
path) and by the names journalled in OUTPUT's meta file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import PROVIDERS, RunConfig, load_config
from .errors import ConfigError

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="the results file of the run (-o/--output)")
    parser.add_argument("-c", "--config", type=Path, help="TOML config file of the run")
    parser.add_argument("--provider", choices=PROVIDERS, help="the run's provider (config's)")
    parser.add_argument("--base-url", help="API base URL (default: the config's)")
    parser.add_argument("--api-key-env", help="environment variable holding the key")
    parser.add_argument("--delete", action="store_true", help="delete the caches found")


def main(ns: argparse.Namespace) -> int:
    from .pathargs import results_file

    results_file(ns.output)
    config = load_config(ns.config).with_overrides(
        provider=ns.provider, base_url=ns.base_url, api_key_env=ns.api_key_env
    )
    from .explicit_cache import run_tag
    from .runtime import event_loop_run

    # A --workers or --shard run's caches carry its shards' tags (each shard is a run of its
    # own output): OUTPUT's shards beside it are looked up too.
    outputs = [ns.output, *_shard_outputs(ns.output)]
    code: int = event_loop_run(_caches(outputs, [run_tag(o) for o in outputs], config, ns.delete))
    return code


def _shard_outputs(output: Path) -> list[Path]:
    """The shards' results files of ``output`` (``R.shard-K-of-N.results.jsonl``) beside it."""
    import glob

    from .shards import ShardSpec, shard_path

    marker = ShardSpec(0, 1).tag
    name = shard_path(output, ShardSpec(0, 1)).name
    head, _, tail = name.partition(marker)
    pattern = glob.escape(head) + "shard-*-of-*" + glob.escape(tail)
    return [Path(p) for p in sorted(glob.glob(str(output.parent / pattern)))]


async def _caches(outputs: list[Path], tags: list[str], config: RunConfig, delete: bool) -> int:
    from .explicit_cache import DISPLAY_PREFIX, CacheAPIError, CacheStore
    from .providers import open_backend
    from .sinks import MetaCacheJournal

    if not config.base_url:
        raise ConfigError("runner caches needs the provider's base_url (config or --base-url)")
    output = outputs[0]
    journals = [MetaCacheJournal(o) for o in outputs]
    owner: dict[str, MetaCacheJournal] = {}  # a journalled name -> the journal that holds it
    for j in journals:
        for name in j.names()[0]:
            owner[name] = j
    journalled = list(owner)
    prefixes = tuple(f"{DISPLAY_PREFIX}{tag}:" for tag in tags)
    by_prefix = dict(zip(prefixes, journals, strict=True))
    async with open_backend(config, base_url=config.base_url, api_key=config.api_key()) as be:
        if not isinstance(be, CacheStore):
            raise ConfigError(f"provider {config.provider!r} has no explicit caches")
        try:
            found = [
                c
                for c in await be.list_caches()
                if c.display_name.startswith(prefixes) or c.name in owner
            ]
        except CacheAPIError as exc:
            print(f"runner caches: listing failed: {exc}", file=sys.stderr)
            return 1
        for c in found:
            print(f"{c.name}\t{c.display_name}\t{c.tokens} tokens\texpires {c.expire_time}")
        print(f"{len(found)} cache(s) of {output} alive", file=sys.stderr)
        if not delete:
            return 0
        failed = 0
        for c in found:
            try:
                await be.delete_cache(c.name)
            except CacheAPIError as exc:
                failed += 1
                print(f"runner caches: {exc}", file=sys.stderr)
            else:
                journal = owner.get(c.name) or next(
                    (j for p, j in by_prefix.items() if c.display_name.startswith(p)), journals[0]
                )
                journal.record([], [c.name])
        # Journalled names the listing no longer shows have expired: nothing is billed for them.
        alive = {c.name for c in found}
        for name in journalled:
            if name not in alive:
                owner[name].record([], [name])
        print(f"deleted {len(found) - failed}, failed {failed}", file=sys.stderr)
        return 1 if failed else 0
