"""Start-up cost: CPU a `runner` process spends before it does any work.

Measures, as whole child processes (CPU = user + system from ``os.wait4`` rusage):

- ``runner --help`` to exit;
- ``runner run`` of a one-job file against a tiny loopback server in this process, read at the
  moment the server sees the first chat request (``/proc/PID/stat`` of the child, clock-tick
  resolution), and to exit;
- for reference, a bare ``python -c pass``, ``python -c "import aiohttp, orjson, uvloop"`` (what
  any aiohttp client pays, the CA store read twice included) and the same with aiohttp imported
  through ``runner._aiohttp`` (CA store deferred to the first TLS handshake): runner's floor.

Target: ``--help`` and the one-job run's CPU before its first request at most 0.15 s. The median
of ``--repeat`` runs is the figure; every run is printed.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time
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
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._reply(200, _REPLY)


def _first_request_cpu(srv: _Server) -> float | None:
    # Set by the handler thread, so not the None assigned before the child ran.
    return srv.cpu_at_first_request


def one_job_run(srv: _Server, url: str, jobs: Path) -> tuple[float, float]:
    """(CPU before the first request, CPU to exit) of a one-job `runner run`."""
    srv.cpu_at_first_request = None
    out = OUT / "startup"
    cmd = [
        PY, "-m", "runner", "run", str(jobs), "--provider", "openai", "--base-url", url,
        "--model", "m", "--no-resume", "--cache", "none", "-o", f"{out}.results.jsonl",
        "--latency", f"{out}.latency.jsonl", "--summary", f"{out}.summary.json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    precompile()
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
            time.sleep(0.05)
    finally:
        srv.shutdown()
    print(f"{'CPU seconds':<42}{'median':>8}  every run")
    for name, vals in rows.items():
        print(f"{name:<42}{statistics.median(vals):>8.3f}  " + " ".join(f"{v:.3f}" for v in vals))
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
    (OUT / "startup.json").write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
