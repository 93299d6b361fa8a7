"""Command line: argument parsing, config loading, wiring, exit codes, ``uvloop.run``.

Exit codes (docs/FORMATS.md, "Exit codes"): 0 all jobs succeeded; 1 some failed permanently;
2 usage, config or input error before any request; 3 stopped by a guard; 75 stopped by a transient
condition, re-run later (EX_TEMPFAIL); 130/143/129 interrupted (SIGINT/SIGTERM/SIGHUP) after a
clean drain; 141 standard output's reader went away.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from .config import (
    BATCH_PROVIDERS,
    DEFAULT_KEY_ENV,
    FIELD_NAMES,
    PROVIDERS,
    CacheStrategy,
    Order,
    Progress,
    RunConfig,
    did_you_mean,
    file_arg,
    load_config,
    model_arg,
    needs_base_url,
)
from .errors import AuthError, ConfigError, RunnerError
from .runtime import event_loop_run

if TYPE_CHECKING:
    from .pipeline import RunOutcome

__all__ = ["build_parser", "main"]


def _tune_gc(concurrency: int) -> None:
    """The collector for a run of ``concurrency`` request slots (:mod:`runner.gcpolicy`), on
    once start-up is over (:func:`main` turns it off while modules load).

    With CPython's default threshold of 700 the collector ran about 1,200 times in a
    20,000-job run and took a fifth of its CPU, mostly re-walking the parsed jobs held ahead.
    """
    from .gcpolicy import gen0_threshold, tune

    tune(gen0_threshold(concurrency))


def _add_common_options(p: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``validate`` share: what is read, and how it is priced."""
    d = RunConfig()
    p.add_argument("jobs", type=Path, help="JSONL file of jobs (docs/FORMATS.md)")
    p.add_argument(
        "-c", "--config", type=Path, help="TOML config file; flags win over it (default: none)"
    )
    p.add_argument(
        "--contexts",
        type=Path,
        help="contexts JSONL for compact jobs with a cache_id (default: none)",
    )
    p.add_argument(
        "--model",
        type=model_arg,
        help=f"model for jobs that name none; prices are looked up by it (default: {d.model})",
    )
    p.add_argument(
        "--via",
        choices=["direct", "batch"],
        help="batch: through the provider's batch API at its discount, docs/BATCH.md "
        f"(default: {d.via})",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    _add_common_options(p)
    p.add_argument(
        "--provider",
        choices=PROVIDERS,
        help=f"wire protocol; mock is the built-in simulated provider (default: {d.provider})",
    )
    p.add_argument(
        "-o",
        "--output",
        type=str,
        help="results JSONL, or a directory for all three files (default: JOBS.results.jsonl)",
    )
    p.add_argument(
        "--latency", type=file_arg, help="latency JSONL (default: R.latency.jsonl beside results R)"
    )
    p.add_argument(
        "--summary",
        type=file_arg,
        help="summary JSON, - for standard output (default: R.summary.json beside results R)",
    )
    p.add_argument(
        "--base-url",
        help="API base URL ending in /v1 (Gemini: /v1beta), e.g. https://api.openai.com/v1 "
        "(default: the built-in simulated provider)",
    )
    p.add_argument(
        "--api-key-env",
        help="environment variable holding the key "
        "(default: OPENAI_API_KEY / ANTHROPIC_API_KEY / GEMINI_API_KEY by provider, when set)",
    )
    p.add_argument(
        "--concurrency", type=int, help=f"requests in flight at most (default: {d.concurrency})"
    )
    p.add_argument("--rpm", type=float, help="requests per minute limit (default: learned)")
    p.add_argument("--tpm", type=float, help="tokens per minute limit (default: learned)")
    p.add_argument(
        "--max-attempts",
        type=int,
        help=f"attempts per job, retries included (default: {d.max_attempts})",
    )
    p.add_argument("--timeout", type=float, help=f"seconds per attempt (default: {d.timeout:g})")
    p.add_argument(
        "--cache",
        choices=get_args(CacheStrategy),
        help=f"warm: prime each cache group once, then fan out; none: no scheduling "
        f"(default: {d.cache})",
    )
    p.add_argument(
        "--max-active-groups",
        type=int,
        help=f"ceiling on cache groups open at once; the limit is learned "
        f"(default: {d.max_active_groups})",
    )
    p.add_argument(
        "--group-concurrency",
        type=int,
        help="ceiling on one cache group's requests in flight (default: the concurrency)",
    )
    p.add_argument(
        "--cache-adapt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn both cache limits from the server's cached tokens; --no-cache-adapt fixes "
        f"them at their ceilings (default: {'on' if d.cache_adapt else 'off'})",
    )
    p.add_argument(
        "--order",
        choices=get_args(Order),
        help=f"order of the results file (default: {d.order})",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="skip jobs the output already has; --no-resume starts afresh (default: resume)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        default=None,
        help="on resume, also send again jobs that failed transiently (default: off)",
    )
    p.add_argument(
        "--max-cost",
        type=float,
        help="stop before spending more than this, in USD (default: no limit)",
    )
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="stream replies, which measures TTFT and ITL (default: off)",
    )
    p.add_argument(
        "--progress",
        choices=get_args(Progress),
        help="auto: a bar on a terminal, timestamped log lines otherwise (default: auto)",
    )
    from . import observe  # imports the engine: only when run's options are built

    observe.add_arguments(p)  # logs, metrics, --max-pause
    p.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="validate and estimate only, send nothing (default: off)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        help=f"--via batch: first poll interval in seconds, growing while nothing changes "
        f"(default: {d.poll_interval:g})",
    )
    p.add_argument(
        "--cancel-on-stop",
        action="store_true",
        default=None,
        help="--via batch: SIGINT/SIGTERM cancels the batches (default: detach; a re-run "
        "reattaches)",
    )
    p.add_argument(
        "--resubmit-lost-batches",
        action="store_true",
        default=None,
        help="--via batch: send again the jobs of a journaled batch the provider answers 404 for "
        "(default: stop with exit 3 naming it; docs/BATCH.md)",
    )

    _add_scaling_options(p)


def _add_validate_options(p: argparse.ArgumentParser) -> None:
    _add_common_options(p)


def _add_scaling_options(p: argparse.ArgumentParser) -> None:
    # runner/shards.py, runner/redis_limits.py, runner/workers.py; README "Scaling out"
    g = p.add_argument_group("scaling out")
    g.add_argument(
        "--shard",
        help="run shard K of N (0-based K/N), or 'auto' from the environment (default: all jobs)",
    )
    g.add_argument(
        "--shard-count", type=int, help="N for JOB_COMPLETION_INDEX (Kubernetes; default: none)"
    )
    g.add_argument(
        "--workers",
        type=int,
        help="shard processes of this run on this host; a warning past its CPUs, refused past "
        "4 per CPU (default: 1)",
    )
    g.add_argument(
        "--nice",
        type=int,
        metavar="N",
        help="CPU priority of this run's processes, 0 (as started) to 19 (default: 5 when the "
        "server is on this machine, so that it is never queued behind its client; else 0)",
    )
    g.add_argument(
        "--redis-url",
        help="share the key's rate limits through this Redis, redis://[user@]host:port/db; "
        "the password from $RUNNER_REDIS_PASSWORD, out of ps (default: none)",
    )
    g.add_argument("--limit-scope", help="a name that separates budgets on one key (default: none)")
    g.add_argument(
        "--redis-policy",
        choices=["fail_closed", "fail_open"],
        help="when Redis is unreachable: pause and retry, or local share (default: fail_closed)",
    )
    g.add_argument(
        "--lease-s", type=float, help="seconds of the shared rate taken at a time (default: 0.25)"
    )
    g.add_argument("--limit-file", type=Path, help=argparse.SUPPRESS)  # set by --workers
    # set by --workers: the parent says the run's end, over all the workers (not a field)
    g.add_argument("--as-worker", action="store_true", help=argparse.SUPPRESS)


def config_from_args(ns: argparse.Namespace) -> RunConfig:
    base = load_config(ns.config)
    # The argparse definitions are the one list: every option named after a RunConfig field
    # overrides it (``jobs``, ``config`` and ``command`` are not fields).
    from . import observe

    overrides = {k: v for k, v in vars(ns).items() if k in FIELD_NAMES} | observe.overrides(ns)
    if overrides.get("log_format") is None:
        ns.log_format = base.log_format  # a bad flag below is an error in the file's format
    provider = overrides.get("provider")
    if provider is not None and needs_base_url(provider) and overrides.get("base_url") is None:
        if base.base_url is None:
            raise ConfigError(f"--provider {overrides['provider']} needs --base-url")
    return base.with_overrides(**overrides)


def _cmd_run(ns: argparse.Namespace) -> int:
    try:
        return _run_command(ns)
    except RunnerError as exc:
        # Ended by an error, not a summary (exit 2 before anything is touched, a pre-flight's
        # 3 or 75): the metrics textfile still says so, when its path is known and valid.
        if getattr(ns, "metrics_textfile", None) is not None or ns.config is not None:
            from .refusal import export_refusal

            export_refusal(ns, exc.exit_code)
        raise


def _run_command(ns: argparse.Namespace) -> int:
    from .api import run

    config = config_from_args(ns)
    _tune_gc(config.concurrency)  # the last of start-up's imports is done
    ns.log_format = config.log_format  # errors from here on use the configured format
    _check_jobs_file(ns.jobs)
    _check_utf8_paths(ns.jobs, config)
    if config.dry_run:
        return _validate(ns.jobs, config)
    from .cpu import yield_to_local_server

    yield_to_local_server(config)  # before --workers fork: they inherit it
    simulated = (
        not needs_base_url(config.provider) and not config.base_url and not _provider_named(ns)
    )
    if config.workers > 1:
        return _cmd_run_workers(ns, config, simulated)
    on_start = None
    if simulated:
        # Said once the run has passed its checks: before, an error that stops it (a missing
        # contexts file, a locked output) came second, after a warning about the provider.
        def on_start() -> None:
            _note(config, _no_provider_note(config))

    elif not needs_base_url(config.provider) and config.base_url and not _provider_named(ns):
        # --base-url alone talked to llama-server as to a `runner mock` process, sending
        # model "mock-1" and recording provider "mock" in the summary, without a word.
        def on_start() -> None:
            _note(config, _unnamed_provider_note(config))

    try:
        outcome: RunOutcome = event_loop_run(
            run(ns.jobs, config, handle_signals=True, config_path=ns.config, on_start=on_start)
        )
    except AuthError as exc:
        if config.api_key() is not None:
            raise
        # A 401 from a run that sent no key: the server's text says nothing about where
        # runner looks for one.
        name = DEFAULT_KEY_ENV.get(config.provider)
        where = f"{name} is not set; export it, or " if name else ""
        raise AuthError(
            f"{exc} (no API key was sent: {where}name the variable that holds it with "
            "--api-key-env)"
        ) from exc
    summary_error = outcome.summary.get("summary_error")
    if config.log_format == "json":  # the run_end event carried the summary
        for note in _input_notes(ns.jobs, outcome, config, ns.as_worker):
            _note(config, note)
        if summary_error:
            _note(config, f"the summary could not be written: {summary_error}", error=True)
        return outcome.exit_code
    if not config.quiet:
        from .report import render_summary  # after the run: not on the way to its first request

        print(render_summary(outcome.summary), file=sys.stderr)
        for note in _input_notes(ns.jobs, outcome, config, ns.as_worker):
            print(f"runner: warning: {note}", file=sys.stderr)
    if summary_error:
        print(f"runner: error: the summary could not be written: {summary_error}", file=sys.stderr)
    _say_end(ns, config, outcome)
    return outcome.exit_code


def _say_end(ns: argparse.Namespace, config: RunConfig, outcome: RunOutcome) -> None:
    """The text-mode lines after the summary table: why the run stopped, what to do."""
    if config.quiet and outcome.exit_code == 1 and not ns.as_worker:
        # The table that says so is not printed under -q, and cron mails only what a job
        # prints: a run whose jobs failed was silent (its JSON run_end is an error event).
        from .report import failed_line

        print(f"runner: error: {failed_line(outcome.summary)}", file=sys.stderr)
    if outcome.summary.get("via") == "batch" and not config.quiet:
        from .batchapi.estimate import render_batch_summary

        print(render_batch_summary(outcome.summary), file=sys.stderr)
    guard = outcome.summary.get("guard")
    if guard:
        # exit 75: a breaker opened only by transient failures, which a later run may not meet
        later = "; only transient failures: run again later to resume" * (outcome.exit_code == 75)
        print(f"runner: stopped by a guard: {guard['message']}{later}", file=sys.stderr)
    elif outcome.stopped == "rate_limit_pause":
        print("runner: rate-limited past --max-pause; run again later to resume", file=sys.stderr)
    elif outcome.stopped == "signal" and not (config.quiet and ns.as_worker):
        # said under -q too: an exit a scheduler alerts on (the parent of workers says it once)
        print("runner: interrupted; run the same command again to resume", file=sys.stderr)
        if config.via == "batch":
            print(
                f"runner: `runner status {_results_path(ns.jobs, config)}` shows the batches",
                file=sys.stderr,  # standard output may be the summary (--summary -)
            )


def _cmd_run_workers(ns: argparse.Namespace, config: RunConfig, simulated: bool) -> int:
    from .preflight import check_prices
    from .workers import check_worker_count, run_workers, usable_cpus

    too_many = check_worker_count(config.workers, usable_cpus())  # exit 2 past 4 per CPU
    if too_many:
        _note(config, too_many)
    # One error naming the --max-cost given, before any worker starts (each worker refused its
    # share, "--max-cost 0.5" for 1, once per worker).
    check_prices(config, ns.jobs)
    if simulated and config.log_format == "text":
        _note(config, _no_provider_note(config))  # the workers are quiet in text mode
    argv = sys.argv[1:] if ns.argv is None else ns.argv
    code = run_workers(ns.jobs, config, argv, config_path=ns.config)
    if code == 0 and _merge_holds_no_jobs(ns.jobs, config):
        _note(config, f"{ns.jobs} holds no jobs")  # said by the run as a whole, not a worker
    return code


def _holds_no_jobs(outcome: RunOutcome) -> bool:
    """The run read its whole input and found nothing: not a run stopped before its first
    result (a wrong endpoint, a guard, a signal), whose unsent jobs are still in the file."""
    s = outcome.summary
    return s["jobs"]["total"] == 0 and not s.get("not_sent") and outcome.stopped is None


def _merge_holds_no_jobs(jobs: Path, config: RunConfig) -> bool:
    """The merged summary of a ``--workers`` run counts no job at all."""
    import dataclasses

    import orjson

    from .sinks import default_paths

    plain = dataclasses.replace(config, summary=None) if config.summary_to_stdout else config
    try:
        s = orjson.loads(default_paths(jobs, plain)[2].read_bytes())
    except (OSError, ValueError):
        return False
    counts = s.get("jobs") if isinstance(s, dict) else None
    return isinstance(counts, dict) and counts.get("total") == 0 and not s.get("not_sent")


def _input_notes(
    path: Path, outcome: RunOutcome, config: RunConfig, worker: bool = False
) -> list[str]:
    """Warnings about the jobs file after the table: it held nothing, or no line of it was a
    job (a JSON array, CSV, UTF-16...), where the table says only "N failed (invalid_input N)"
    and the reasons are inside the results file. Not said by a shard: its share of a file with
    jobs may well be empty (``--workers 4`` over 3 jobs told of the file "holds no jobs")."""
    if config.shard is not None or config.shard_count is not None:
        return _empty_shard_notes(path, outcome, worker)
    jobs = outcome.summary["jobs"]
    if _holds_no_jobs(outcome):
        return [f"{path} holds no jobs"]
    if jobs["total"] and jobs["by_error"].get("invalid_input") == jobs["total"]:
        return [
            f"no line of {path} is a valid job ({jobs['total']:,} invalid_input results): "
            f"runner validate {path} names the problem of each line (docs/FORMATS.md)"
        ]
    return []


def _empty_shard_notes(path: Path, outcome: RunOutcome, worker: bool) -> list[str]:
    """A shard of an Indexed Job or Slurm array (not a ``--workers`` worker, whose parent
    speaks for the run) that got no job: its table of zeros said nothing of why. Jobs go to
    shards by cache group, so a file of fewer groups than shards leaves some shards empty."""
    shard = outcome.summary.get("shard")
    if worker or not _holds_no_jobs(outcome) or not isinstance(shard, dict):
        return []
    return [
        f"shard {shard.get('index')} of {shard.get('count')} holds none of the jobs of {path}: "
        "jobs go to shards by cache group (a group is never split), so fewer groups than "
        "shards leave some empty; its empty output is still a part for runner merge"
    ]


def _no_provider_note(config: RunConfig) -> str:
    """Said on every run that named no provider (README, "Output"): its replies are synthetic.
    A real provider was probably meant when its key variable is set: say how to use it. Naming
    the mock (``--provider mock``) is the choice made, and silences it."""
    import os

    said = "no provider configured: using the built-in simulated provider; replies are synthetic"
    names = [config.api_key_env] if config.api_key_env else []
    names += [v for v in DEFAULT_KEY_ENV.values() if v not in names]
    for name in names:
        if os.environ.get(name):
            meant = next((p for p, v in DEFAULT_KEY_ENV.items() if v == name), None)
            how = (
                f"--provider {meant} --base-url URL, or a config such as configs/{meant}.toml"
                if meant
                else "--provider and --base-url"
            )
            return f"{said}; {name} is set, but nothing is sent with it: name a provider ({how})"
    return f"{said} (--provider mock says it is meant, and silences this)"


def _note(config: RunConfig, message: str, *, error: bool = False) -> None:
    """A warning (or error) outside the run's own events, in the configured format."""
    from .logs import note

    note(message, log_format=config.log_format, quiet=config.quiet, error=error)


def _results_path(jobs: Path, config: RunConfig) -> Path:
    from .sinks import default_paths

    return default_paths(jobs, config)[0]


def _validate(jobs: Path, config: RunConfig) -> int:
    from .jobs import contexts_for
    from .validate import render_validation, validate_file

    _check_jobs_file(jobs)
    report = validate_file(jobs, contexts=contexts_for(config), config=config)
    print(render_validation(report, jobs), end="")
    if config.via == "batch":
        from .batchapi.estimate import render_batch_estimate

        print(render_batch_estimate(report, config), end="")
    return 0 if not report.bad_lines else 1


def _unnamed_provider_note(config: RunConfig) -> str:
    """Said when a base URL is given but no provider: it is taken for a `runner mock`."""
    said = (
        f"--base-url without --provider: the server is taken for a `runner mock` process "
        f'(provider "mock" in the summary), sent model {config.model!r}'
    )
    return f"{said}; for a real server (llama-server, vLLM, OpenAI) say --provider openai"


def _provider_named(ns: argparse.Namespace) -> bool:
    """Whether the flags or the config file chose a provider (even the mock) explicitly."""
    if ns.provider is not None:
        return True
    if ns.config is None:
        return False
    from .config import read_toml

    return "provider" in read_toml(ns.config)  # already read and parsed once by load_config


def _check_jobs_file(jobs: Path) -> None:
    if str(jobs) == "-" and not jobs.exists():  # "-: no such file" told a piping user nothing
        raise ConfigError(
            "-: jobs cannot be read from standard input (a run records the jobs file's digest "
            "and resumes from it); write them to a file and name it"
        )
    if jobs.is_dir():
        raise ConfigError(f"{jobs}: is a directory, not a jobs file")
    if not jobs.exists():
        raise ConfigError(f"{jobs}: no such file")
    if not jobs.is_file():
        raise ConfigError(f"{jobs}: not a regular file")


def _check_utf8_paths(jobs: Path, config: RunConfig) -> None:
    """A file name that is not UTF-8 (a Latin-1 name from an old system or a zip) is exit 2
    naming it: the meta file, the summary and the JSON events record the paths as UTF-8, and it
    was a TypeError traceback (exit 1) after the outputs had been created."""
    for path in (jobs, config.contexts, config.output, config.latency, config.summary):
        if path is None:
            continue
        text = str(path)
        try:
            text.encode()
        except UnicodeEncodeError:
            raw = text.encode(errors="surrogateescape")
            shown = raw.decode(errors="replace")
            if _utf8(raw):
                # The name is UTF-8; Python read it in the locale's encoding (LC_ALL=C with
                # UTF-8 mode off, PYTHONUTF8=0): renaming the file would not help.
                raise ConfigError(
                    f"{shown}: the file name is UTF-8, but the locale's encoding is "
                    f"{sys.getfilesystemencoding()}: run with LC_ALL=C.UTF-8 (or PYTHONUTF8=1)"
                ) from None
            raise ConfigError(
                f"{shown}: the file name is not valid UTF-8; rename it (or link to it under a "
                "UTF-8 name)"
            ) from None


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


_INVALID_CHOICE = r"invalid choice: '([^']*)' \(choose from (.*)\)"  # compiled on an error only


class _Parser(argparse.ArgumentParser):
    """Adds a did-you-mean to argparse's "invalid choice" errors (exit 2 as before)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # "-" and a digit starts no option of runner's, so such a word is an option's value:
        # argparse took only "-1" or "-1.5" so, and `--shard -1/2` was "expected one
        # argument" where `--shard=-1/2` names the bad shard (the subcommands' parsers are
        # made by this class too).
        self._negative_number_matcher = re.compile(r"-\.?\d")

    def error(self, message: str) -> Any:
        m = re.search(_INVALID_CHOICE, message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            message += did_you_mean(m.group(1), choices)
        super().error(message)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: None = None
    ) -> argparse.Namespace:
        """An unknown flag is named by its command's parser with a did-you-mean: argparse
        reported ``runner run --concurency 4`` with the top-level usage and no hint."""
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser: argparse.ArgumentParser = self
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parser = action.choices.get(str(getattr(ns, "command", "")), self)
            message = f"unrecognized arguments: {' '.join(extras)}"
            flag = next((a.partition("=")[0] for a in extras if a.startswith("--")), None)
            if flag is not None:  # compared without the dashes, which every option shares
                import difflib

                names = {o.lstrip("-"): o for a in parser._actions for o in a.option_strings}
                close = difflib.get_close_matches(flag.lstrip("-"), list(names), n=1, cutoff=0.8)
                message += f"; did you mean {names[close[0]]!r}?" if close else ""
            parser.error(message)
        return ns


def _cmd_validate(ns: argparse.Namespace) -> int:
    return _validate(ns.jobs, config_from_args(ns))


def _cmd_status(ns: argparse.Namespace) -> int:
    from .batchapi.status import fetch_live, render_status
    from .pathargs import results_file

    results_file(ns.output)
    live = None
    if ns.live:
        config = load_config(ns.config).with_overrides(
            provider=ns.provider, base_url=ns.base_url, api_key_env=ns.api_key_env
        )
        live = event_loop_run(fetch_live(ns.output, config))
    print(render_status(ns.output, live), end="")
    from .runstatus import status_code

    return status_code(ns.output)  # 0 done, 1 not, 3 running (README, "Commands")


# Subcommands whose modules load only when that command runs: each brings heavy imports
# (the mock server, the load generator, the report renderer) that `run` never needs.
_LAZY_COMMANDS = (
    ("mock", "start the simulated provider", "runner.mock.cli"),
    ("bench", "generate load for a benchmark run", "runner.bench"),
    ("caches", "list (--delete: remove) explicit caches of a run", "runner.caches_cmd"),
    ("merge", "combine the outputs of a run's shards", "runner.merge"),
    ("report", "summaries, comparisons and HTML from latency records", "runner.report"),
)


def build_parser(command: str | None = None, *, alone: bool = False) -> argparse.ArgumentParser:
    """The whole parser; with ``command``, only that subcommand's options are filled in.

    ``alone``: the command line starts with ``run``, so no other subcommand is made (each costs
    start-up time; the others matter only to ``runner --help`` and to an unknown command).
    """
    from . import __version__

    parser = _Parser(prog="runner", description="High-throughput batch runner for LLM chat APIs")
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a batch of jobs")
    if command is None or command == "run":  # its options import the engine
        _add_run_options(p_run)
    p_run.set_defaults(func=_cmd_run)
    if alone and command == "run":
        # argparse's usage line (of an "unrecognized arguments" error) still names every one
        names = ("run", "validate", "status", *(name for name, _, _ in _LAZY_COMMANDS))
        sub.metavar = f"{{{','.join(names)}}}"
        return parser
    p_val = sub.add_parser("validate", help="check a jobs file and estimate tokens and cost")
    _add_validate_options(p_val)
    p_val.set_defaults(func=_cmd_validate)
    p_status = sub.add_parser(
        "status", help="an output's input, lock holder, last summary and batches (read-only)"
    )
    p_status.add_argument("output", type=Path, help="the results file of a run (or a merge)")
    p_status.add_argument(
        "--live", action="store_true", help="also ask the provider (GET only) for each batch"
    )
    p_status.add_argument("-c", "--config", type=Path, help="TOML config (provider, key)")
    p_status.add_argument(
        "--provider", choices=BATCH_PROVIDERS, help="with --live: the provider (default: config's)"
    )
    p_status.add_argument("--base-url", help="with --live: API base URL (default: config's)")
    p_status.add_argument("--api-key-env", help="with --live: environment variable holding the key")
    p_status.set_defaults(func=_cmd_status)

    for name, help_text, module_name in _LAZY_COMMANDS:
        p = sub.add_parser(name, help=help_text)
        if command is None or command == name:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(func=module.main)
    return parser


def _json_asked(args: Sequence[str]) -> bool:
    return "--log-format=json" in args or any(
        args[i] == "--log-format" and args[i + 1] == "json" for i in range(len(args) - 1)
    )


def _parse_json_errors(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    """``parse_args``, but a usage error is one ``error`` event, as every other stderr line of
    ``--log-format json`` is (argparse printed its usage text, which a log pipeline cannot read)."""
    import contextlib
    import io

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return parser.parse_args(args)
    except SystemExit as exc:
        if exc.code != 2:
            raise
        from .logs import error_line

        lines = said.getvalue().strip().splitlines() or ["invalid arguments"]
        error_line(lines[-1].partition(" error: ")[2] or lines[-1], 2)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    # Everything, imports included, runs inside the handler: a Ctrl-C at any moment of
    # start-up is a quiet exit 130, never a traceback.
    # Start-up builds tens of thousands of long-lived objects (modules, classes, functions) and
    # no garbage, so the cyclic collector only re-walks them: about 11 ms of a one-job run's CPU
    # before its first request (gc.callbacks). It is off until the command's modules are loaded.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        if argv is None:  # a process of its own (not main() called in-process): runner.stdio
            from .stdio import reopen_closed, tolerate_lost_stderr

            reopen_closed()
            tolerate_lost_stderr()
        args = sys.argv[1:] if argv is None else list(argv)
        command = next((a for a in args if not a.startswith("-")), None)
        # only the chosen subcommand's module is imported ("" when none is given: --help)
        parser = build_parser(command or "", alone=args[:1] == ["run"])
        ns = _parse_json_errors(parser, args) if _json_asked(args) else parser.parse_args(args)
        ns.argv = None if argv is None else list(argv)
        if gc_was_on and ns.func is not _cmd_run:
            gc.enable()  # a run loads the engine and aiohttp first, then calls _tune_gc
        code: int = ns.func(ns)
    except RunnerError as exc:
        if getattr(ns, "log_format", None) == "json":
            from .logs import error_line

            error_line(str(exc), exc.exit_code)
        else:
            print(f"runner: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # The reader of standard output went away (`runner report X | head`): stop quietly, as
        # `cat` does, with the status a SIGPIPE gives (128 + 13), never a traceback.
        from .stdio import drop_stdout

        drop_stdout()
        return 141
    except Exception as exc:
        if getattr(ns, "log_format", None) != "json":
            raise
        from .logs import error_line

        # A defect: still one JSON object on stderr, with the traceback inside it.
        error_line(f"unexpected error: {type(exc).__name__}: {exc}", 1, exc=exc)
        return 1
    except KeyboardInterrupt:
        print("runner: interrupted", file=sys.stderr)
        return 130
    finally:
        if gc_was_on:
            gc.enable()  # an error before the command's own start, or main() called in-process
    return code
