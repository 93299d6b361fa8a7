"""The ready schedules in examples/schedules/ say what they promise.

Each runner command line in them is parsed by runner's own argument parser (a renamed flag
breaks the test); the Kubernetes manifests are parsed as YAML and checked for the fields that
matter; the systemd units pass ``systemd-analyze verify`` where it is installed; the Airflow
task's function runs against the built-in simulated provider.
"""

from __future__ import annotations

import configparser
import importlib.util
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
import yaml

from runner.cli import build_parser, config_from_args

DIR = Path(__file__).resolve().parent.parent / "examples" / "schedules"
RUN_EXIT_CODES = {1, 2, 3, 75, 143}


def parse_runner(argv: list[str]) -> Any:
    """Parse a ``runner ...`` argument list as the CLI would, and build its config."""
    assert argv[0] == "run"
    ns = build_parser().parse_args(argv)
    config = config_from_args(ns) if ns.config is None else None
    return ns, config


def runner_args(command: str) -> list[str]:
    words = shlex.split(command.split("&&")[-1].split(">>")[0])
    i = next(i for i, w in enumerate(words) if w.endswith("/runner"))
    return words[i + 1 :]


def test_crontab_uses_runner_lock_and_textfile_collector() -> None:
    lines = [
        ln
        for ln in (DIR / "runner.cron").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and "=" not in ln.split()[0]
    ]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert fields[:5] == ["15", "2", "*", "*", "*"]
    assert "flock" not in lines[0]
    ns, _ = parse_runner(runner_args(fields[5]))
    assert ns.log_format == "json"
    assert str(ns.metrics_textfile).endswith(".prom")
    assert "textfile_collector" in str(ns.metrics_textfile)
    assert ns.max_pause_s == 900


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(DIR / name)
    return cp


def test_systemd_units_retry_only_the_transient_exit() -> None:
    svc, timer = _unit("runner-nightly.service"), _unit("runner-nightly.timer")
    s = svc["Service"]
    assert s["Type"] == "oneshot" and s["Restart"] == "on-failure"
    prevented = {int(x) for x in s["RestartPreventExitStatus"].split()}
    assert 75 not in prevented and {1, 2, 3} <= prevented  # only 75 (and crashes) restart
    argv = shlex.split(s["ExecStart"])
    ns, _ = parse_runner(argv[1:])
    assert ns.log_format == "json" and ns.metrics_textfile is not None
    assert timer["Timer"]["Unit"] == "runner-nightly.service"
    assert timer["Timer"]["Persistent"] == "true"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # Verify copies whose binary and user exist on this machine; everything else is as shipped.
    runner_bin = str(Path(sys.executable).with_name("runner"))
    for name in ("runner-nightly.service", "runner-nightly.timer"):
        text = (DIR / name).read_text()
        text = text.replace("/opt/runner/.venv/bin/runner", runner_bin)
        text = text.replace("User=runner", "User=root").replace("Group=runner", "Group=root")
        text = text.replace("EnvironmentFile=/etc/runner/env", "EnvironmentFile=-/etc/runner/env")
        (tmp_path / name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no",
         str(tmp_path / "runner-nightly.service"), str(tmp_path / "runner-nightly.timer")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # Without a running systemd (a container) it still checks syntax; it cannot check
    # WorkingDirectory or the network target, so only those complaints are tolerated.
    problems = [
        ln
        for ln in r.stderr.splitlines()
        if ln.strip()
        and "/srv/batch" not in ln
        and "network-online.target" not in ln
        and "System has not been booted with systemd" not in ln
        and "Failed to connect to bus" not in ln
    ]
    assert not problems, r.stderr
    # The same check does catch a mistake: a misspelt key in an otherwise identical unit.
    broken = tmp_path / "broken.service"
    broken.write_text((tmp_path / "runner-nightly.service").read_text().replace("Type=", "Typo="))
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Unknown key 'Typo'" in r.stderr


def _exit_rules(spec: dict[str, Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes:
            assert codes["containerName"] == "runner" and codes["operator"] == "In"
            for v in codes["values"]:
                out[int(v)] = rule["action"]
    return out


def test_cronjob_forbids_overlap_and_maps_exit_codes() -> None:
    doc = yaml.safe_load((DIR / "cronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "CronJob")
    spec = doc["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    rules = _exit_rules(job)
    assert set(rules) == RUN_EXIT_CODES
    assert rules[75] == "Count" and rules[143] == "Count"
    assert all(rules[c] == "FailJob" for c in (1, 2, 3))
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    (c,) = pod["containers"]
    assert c["name"] == "runner" and c["command"] == ["runner"]
    ns, _ = parse_runner(c["args"])
    assert ns.pushgateway.startswith("http://") and ns.log_format == "json"
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["OPENAI_API_KEY"]["valueFrom"]  # the key is never inline


def test_indexed_job_runs_one_shard_per_index() -> None:
    doc = yaml.safe_load((DIR / "indexed-job.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("batch/v1", "Job")
    spec = doc["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 2
    rules = _exit_rules(spec)
    assert rules[75] == "Count" and all(rules[c] == "FailIndex" for c in (1, 2, 3))
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["SHARD"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    argv = [a.replace("$(SHARD)", "2") for a in c["args"]]
    ns, _ = parse_runner(argv)
    assert ns.shard == f"2/{spec['completions']}"  # N is the number of indexes
    assert ns.metrics_label == [("shard", "2")]


def test_indexed_job_shards_merge_as_its_comment_says(tmp_path: Path) -> None:
    # Every index runs its shard (here one after another, against the simulated provider),
    # then the merge command in the manifest's comment puts them together: each job once.
    from runner.cli import main

    text = (DIR / "indexed-job.yaml").read_text()
    (c,) = yaml.safe_load(text)["spec"]["template"]["spec"]["containers"]
    n = yaml.safe_load(text)["spec"]["completions"]
    data, config = tmp_path / "data", tmp_path / "runner.toml"
    data.mkdir()
    config.write_text('provider = "mock"\nprogress = "off"\n[mock]\nlatency = "zero"\n')
    jobs = data / "jobs.jsonl"
    jobs.write_bytes(b"".join(
        orjson.dumps({"id": f"q{i}", "cache_id": f"g{i % 7}", "query": "?"}) + b"\n"
        for i in range(60)
    ))  # fmt: skip
    (data / "contexts.jsonl").write_bytes(b"".join(
        orjson.dumps({"cache_id": f"g{g}", "system": f"context {g}"}) + b"\n" for g in range(7)
    ))  # fmt: skip
    local = {"/data/": f"{data}/", "/config/runner.toml": str(config)}

    def here(arg: str) -> str:
        for shipped, path in local.items():
            arg = arg.replace(shipped, path)
        return arg

    flags = ["--contexts", str(data / "contexts.jsonl"), "-q"]
    for k in range(n):
        argv = [here(a.replace("$(SHARD)", str(k))) for a in c["args"]]
        argv = [a for a in argv if not a.startswith("http://")]
        i = argv.index("--pushgateway")
        del argv[i : i + 1]  # its URL was dropped above: no Pushgateway here
        assert main([*argv, *flags]) == 0
    (merge,) = [ln for ln in text.splitlines() if "runner merge" in ln]
    words = [here(w) for w in shlex.split(merge.split("#", 1)[1])]
    assert words[:2] == ["runner", "merge"]
    assert main(words[1:]) == 0
    ids = [orjson.loads(ln)["custom_id"] for ln in (data / "out" / "nightly.results.jsonl")
           .read_bytes().splitlines()]  # fmt: skip
    assert sorted(ids) == sorted(f"q{i}" for i in range(60))


def _airflow_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("airflow_dag_example", DIR / "airflow_dag.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_airflow_task_runs_against_the_mock(tmp_path: Path) -> None:
    mod = _airflow_module()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "query": f"q{i}?"}) + b"\n" for i in range(20))
    )
    summary = mod.run_batch(
        str(jobs), None, mock={"latency": "zero"}, output=str(tmp_path / "r.jsonl"),
        summary=str(tmp_path / "s.json"), latency=str(tmp_path / "l.jsonl"),
    )  # fmt: skip
    assert summary["jobs"]["ok"] == 20
    # The provider is unreachable: a retriable error, so Airflow retries the task later.
    free = tmp_path / "c.toml"
    free.write_text('provider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n')
    with pytest.raises(mod.TransientRunError):
        mod.run_batch(str(jobs), str(free), output=str(tmp_path / "r2.jsonl"))


def test_crontab_line_gives_runner_the_key_from_the_environment_file(tmp_path: Path) -> None:
    # cron runs the command with /bin/sh and a bare environment. The environment file is the
    # systemd unit's EnvironmentFile (KEY=value lines, no `export`): sourcing it alone sets a
    # shell variable that the exec'd runner never sees, and the run starts without its key.
    line = next(
        ln for ln in (DIR / "runner.cron").read_text().splitlines() if ln.startswith("15 2 ")
    )
    command = line.split(None, 5)[5]
    env_file, workdir, logdir = tmp_path / "env", tmp_path / "srv", tmp_path / "log"
    workdir.mkdir()
    logdir.mkdir()
    env_file.write_text("OPENAI_API_KEY=sk-from-env-file\n")
    fake = tmp_path / "runner"  # stands in for runner: records what it was given
    fake.write_text('#!/bin/sh\necho "cwd=$PWD key=${OPENAI_API_KEY:-unset} argv=$*"\n')
    fake.chmod(0o755)
    for shipped, here in (
        ("/etc/runner/env", env_file),
        ("/srv/batch", workdir),
        ("/opt/runner/.venv/bin/runner", fake),
        ("/var/log/runner", logdir),
    ):
        assert shipped in command
        command = command.replace(shipped, str(here))
    r = subprocess.run(["/bin/sh", "-c", command], env={}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    said = (logdir / "nightly.log").read_text()
    assert f"cwd={workdir} key=sk-from-env-file argv=run jobs.jsonl" in said, said
