"""Start-up cost: CPU a `runner` process spends before it does any work.

Measures, as whole child processes (CPU = user + system from ``os.wait4`` rusage):

- ``runner --help`` to exit;
- ``runner run`` of a one-job file against a tiny loopback server in this process, read at the
  moment the server sees the first chat request (``/proc/PID/stat`` of the child, clock-tick
  resolution), and to exit;
- for reference, a bare ``python -c pass``, ``python -c "import aiohttp, orjson, uvloop"`` (what
  any aiohttp client pays, the CA store read twice included) and the same with aiohttp imported
  through ``runner._aiohttp`` (CA store deferred to the first TLS handshake): runner's floor.

Those run the development checkout (``python -m runner`` in the repository, the editable
install's finder loaded at interpreter start). Then the same is measured as a user gets it: a
regular ``pip install`` of this checkout into ``bench-out/startup-venv`` (made on the first run,
runner re-installed on each), run through its ``runner`` script from outside the repository;
``--no-install`` skips that part.

CPU seconds on a shared machine move by tens of milliseconds with its load. ``--callgrind``
adds a figure that does not: the instructions (valgrind's ``Ir``) of the one-job run up to the
moment the server sees its first request (the server asks callgrind to dump then), for the
checkout and the regular install. It needs valgrind, and each run takes some seconds.

Target: ``--help`` and the one-job run's CPU before its first request at most 0.15 s. The median
of ``--repeat`` runs is the figure; every run is printed.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 7] [--no-install] [--callgrind]
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, PY, ROOT, cpu_seconds, precompile, run_child

TARGET_S = 0.15
_REPLY = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)


class _Server(http.server.ThreadingHTTPServer):
    child_pid = 0
    cpu_at_first_request: float | None = None
    dump_at_first_request = False  # the child runs under callgrind: dump its counts now


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(200, b'{"data": []}')

    def do_POST(self) -> None:
        srv = self.server
        if srv.cpu_at_first_request is None and srv.child_pid:
            srv.cpu_at_first_request = cpu_seconds(srv.child_pid)
            if srv.dump_at_first_request:
                subprocess.run(["callgrind_control", "--dump=first", str(srv.child_pid)],
                               capture_output=True, check=False)  # fmt: skip
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._reply(200, _REPLY)


def _first_request_cpu(srv: _Server) -> float | None:
    # Set by the handler thread, so not the None assigned before the child ran.
    return srv.cpu_at_first_request


def one_job_run(
    srv: _Server,
    url: str,
    jobs: Path,
    runner: Sequence[str] = (PY, "-m", "runner"),
    cwd: Path = ROOT,
) -> tuple[float, float]:
    """(CPU before the first request, CPU to exit) of a one-job `runner run`."""
    srv.cpu_at_first_request = None
    out = OUT / "startup"
    cmd = [
        *runner, "run", str(jobs), "--provider", "openai", "--base-url", url,
        "--model", "m", "--no-resume", "--cache", "none", "-o", f"{out}.results.jsonl",
        "--latency", f"{out}.latency.jsonl", "--summary", f"{out}.summary.json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    srv.child_pid = proc.pid
    _, status, ru = os.wait4(proc.pid, 0)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    first = _first_request_cpu(srv)
    if proc.returncode != 0 or first is None:
        raise SystemExit(f"one-job run failed ({proc.returncode}): {err[-2000:]}")
    return first, ru.ru_utime + ru.ru_stime


def instructions_before_first_request(
    srv: _Server, url: str, jobs: Path, runner: Sequence[str], cwd: Path
) -> float | None:
    """Millions of instructions (callgrind ``Ir``) of a one-job run before its first request."""
    dumps = OUT / "callgrind"
    shutil.rmtree(dumps, ignore_errors=True)
    dumps.mkdir()
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/out.%p"]
    srv.dump_at_first_request = True
    try:
        one_job_run(srv, url, jobs, [*grind, *runner], cwd)
    finally:
        srv.dump_at_first_request = False
    for path in dumps.glob("out.*.1"):  # the dump taken at the first request
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1]) / 1e6
    return None


def installed_copy() -> Path | None:
    """The ``bin`` folder of a venv with this checkout installed as a user installs it (a
    regular ``pip install``, not editable); None, with a note, when it cannot be built."""
    venv = OUT / "startup-venv"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    # Built from a copy of what a wheel holds: pip builds in the source tree, and the checkout
    # must get no build/ (whose stale files a later wheel would ship) or egg-info from a bench.
    src = OUT / "startup-src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "runner", src / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    try:
        if not (venv / "bin" / "runner").exists():
            subprocess.run([PY, "-m", "venv", str(venv)], check=True, capture_output=True)
            subprocess.run([*pip, str(src)], check=True, capture_output=True)
        else:  # the dependencies are there: only runner, rebuilt from the checkout as it is now
            subprocess.run([*pip, "--no-deps", "--force-reinstall", str(src)], check=True,
                           capture_output=True)  # fmt: skip
    except subprocess.CalledProcessError as exc:
        print(f"note: no regular install measured ({exc.stderr.decode()[-500:]})")
        return None
    return venv / "bin"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--no-install", action="store_true", help="skip the regular-install runs")
    ap.add_argument("--callgrind", action="store_true", help="also count instructions (valgrind)")
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    precompile()
    user = None if args.no_install else installed_copy()
    away = OUT / "startup-cwd"  # not the checkout: its runner/ must not shadow the installed one
    away.mkdir(exist_ok=True)
    runner_m = [PY, "-m", "runner"]
    ir: dict[str, float | None] = {}
    jobs = OUT / "startup-jobs.jsonl"
    jobs.write_bytes(b'{"id": "q-0", "query": "what is 2 plus 2?"}\n')
    srv = _Server(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    rows: dict[str, list[float]] = {
        "python -c pass": [],
        "import aiohttp, orjson, uvloop": [],
        "import runner._aiohttp, orjson, uvloop": [],
        "runner --help": [],
        "runner run, 1 job: before first request": [],
        "runner run, 1 job: whole process": [],
    }
    if user is not None:
        for name in (
            "python -c pass",
            "import runner._aiohttp, orjson, uvloop",
            "runner --help",
            "runner run, 1 job: before first request",
            "runner run, 1 job: whole process",
        ):
            rows[f"installed: {name}"] = []
    try:
        for _ in range(args.repeat):
            rows["python -c pass"].append(run_child([PY, "-c", "pass"]).cpu_s)
            r = run_child([PY, "-c", "import aiohttp, orjson, uvloop"])
            rows["import aiohttp, orjson, uvloop"].append(r.cpu_s)
            r = run_child([PY, "-c", "import runner._aiohttp, orjson, uvloop"])
            rows["import runner._aiohttp, orjson, uvloop"].append(r.cpu_s)
            r = run_child([PY, "-m", "runner", "--help"])
            if r.returncode != 0:
                raise SystemExit(f"runner --help failed: {r.stderr[-2000:]}")
            rows["runner --help"].append(r.cpu_s)
            before, total = one_job_run(srv, url, jobs)
            rows["runner run, 1 job: before first request"].append(before)
            rows["runner run, 1 job: whole process"].append(total)
            if user is not None:
                upy = str(user / "python")
                r = run_child([upy, "-c", "pass"], cwd=away)
                rows["installed: python -c pass"].append(r.cpu_s)
                r = run_child([upy, "-c", "import runner._aiohttp, orjson, uvloop"], cwd=away)
                rows["installed: import runner._aiohttp, orjson, uvloop"].append(r.cpu_s)
                r = run_child([str(user / "runner"), "--help"], cwd=away)
                rows["installed: runner --help"].append(r.cpu_s)
                before, total = one_job_run(srv, url, jobs, [str(user / "runner")], away)
                rows["installed: runner run, 1 job: before first request"].append(before)
                rows["installed: runner run, 1 job: whole process"].append(total)
            time.sleep(0.05)
        if args.callgrind and shutil.which("valgrind") is None:
            print("note: --callgrind needs valgrind (and its callgrind_control); not counted")
        elif args.callgrind:
            ir = {"checkout": instructions_before_first_request(srv, url, jobs, runner_m, ROOT)}
            if user is not None:
                installed = [str(user / "runner")]
                ir["regular install"] = instructions_before_first_request(
                    srv, url, jobs, installed, away
                )
    finally:
        srv.shutdown()
    print(f"{'CPU seconds':<53}{'median':>8}  every run")
    for name, vals in rows.items():
        print(f"{name:<53}{statistics.median(vals):>8.3f}  " + " ".join(f"{v:.3f}" for v in vals))
    med = {k: statistics.median(v) for k, v in rows.items()}
    first = med["runner run, 1 job: before first request"]
    floor = med["import runner._aiohttp, orjson, uvloop"]
    print(f"--help: {med['runner --help']:.3f} s (target <= {TARGET_S} s) "
          f"{'met' if med['runner --help'] <= TARGET_S else 'MISSED'}")  # fmt: skip
    # Importing aiohttp, orjson and uvloop (CA store deferred) is a floor the run cannot go
    # under, so the run's own share is shown apart.
    print(f"1-job run before its first request: {first:.3f} s (target <= {TARGET_S} s) "
          f"{'met' if first <= TARGET_S else 'MISSED'}; the runner._aiohttp+orjson+uvloop import "
          f"floor is {floor:.3f} s, runner's own share {first - floor:+.3f} s")  # fmt: skip
    if user is not None:
        first = med["installed: runner run, 1 job: before first request"]
        floor = med["installed: import runner._aiohttp, orjson, uvloop"]
        print(f"regular install, 1-job run before its first request: {first:.3f} s (target <= "
              f"{TARGET_S} s) {'met' if first <= TARGET_S else 'MISSED'}; import floor {floor:.3f} "
              f"s, runner's own share {first - floor:+.3f} s")  # fmt: skip
    for name, mir in ir.items():
        got = "no count" if mir is None else f"{mir:,.1f} M instructions"
        print(f"1-job run before its first request, {name}: {got} (callgrind)")
    (OUT / "startup.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
