"""The HTML report renders in a real browser: headless Chromium, driven over the DevTools protocol.

A small CDP client (aiohttp's websocket client) loads the report, collects every uncaught
exception, console error and log error, measures each chart's SVG, and screenshots each chart to
check in the pixels that the data series were drawn (the run colours are present), not only
the axes. Skipped only when Chromium is not installed; CI installs it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import random
import re
import signal
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from runner import report
from runner.models import Price

CHROMIUM = Path("/usr/bin/chromium")
CHARTS = ("latency", "ttft", "cdf", "throughput", "inflight", "groups", "cache", "cost")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # CI containers often have a tiny /dev/shm
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--remote-debugging-port=0",
]

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (CI installs it)"),
    pytest.mark.timeout(60),
]


class Page:
    """A DevTools session on one page target: commands, and the events seen so far."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []

    async def pump(self) -> None:
        try:
            await self._read()
        finally:
            # A closed socket must fail the callers, not leave them waiting.
            gone = RuntimeError("DevTools connection closed")
            for fut in [*self._pending.values(), *(w for _, w in self._waiters)]:
                if not fut.done():
                    fut.set_exception(gone)

    async def _read(self) -> None:
        async for msg in self._ws:
            data = orjson.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"])
                if "error" in data:
                    fut.set_exception(RuntimeError(str(data["error"])))
                else:
                    fut.set_result(data.get("result", {}))
            else:
                self.events.append(data)
                for method, waiter in self._waiters:
                    if method == data["method"] and not waiter.done():
                        waiter.set_result(data)

    async def send(self, method: str, **params: Any) -> Any:
        i = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        # DevTools only reads text frames; a binary frame is silently ignored.
        await self._ws.send_str(
            orjson.dumps({"id": i, "method": method, "params": params}).decode()
        )
        return await fut

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, fut))
        return fut

    async def load(self, url: str) -> None:
        loaded = self.expect("Page.loadEventFired")
        await self.send("Page.navigate", url=url)
        await loaded

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(str(p["exceptionDetails"]))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(str(p.get("args")))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(p["entry"]["text"])
        return out


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[Page]:
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        *FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # its own process group, so the renderers go with it
    )
    try:
        assert proc.stderr is not None
        port = None
        while port is None:
            line = await proc.stderr.readline()
            if not line:
                raise RuntimeError("chromium exited before opening the DevTools port")
            m = re.search(rb"DevTools listening on ws://[\d.]+:(\d+)/", line)
            port = int(m.group(1)) if m else None
        # Keep draining stderr so that Chromium never blocks on a full pipe.
        drain = asyncio.create_task(proc.stderr.read())
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with http.ws_connect(url, max_msg_size=0) as ws:
                page = Page(ws)
                pump = asyncio.create_task(page.pump())
                for domain in ("Page", "Runtime", "Log"):
                    await page.send(f"{domain}.enable")
                try:
                    yield page
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


def png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixels) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0
            channels = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b = prev[i]
            if ftype == 1:
                row[i] = (row[i] + a) & 255
            elif ftype == 2:
                row[i] = (row[i] + b) & 255
            elif ftype == 3:
                row[i] = (row[i] + ((a + b) >> 1)) & 255
            elif ftype == 4:
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                row[i] = (row[i] + pred) & 255
        out += row
        prev = row
    return width, height, channels, bytes(out)


def colour_counts(png: bytes) -> tuple[int, int, int]:
    """(pixels, blue-dominant pixels, orange-dominant pixels) of a screenshot."""
    w, h, ch, px = png_pixels(png)
    blue = orange = 0
    for i in range(0, len(px), ch):
        r, g, b = px[i], px[i + 1], px[i + 2]
        if b > r + 60 and b > g + 30:
            blue += 1
        elif r > b + 80 and r > g + 40:
            orange += 1
    return w * h, blue, orange


def synthetic_run(path: Path, *, seed: int, concurrency: int, ttft_mu: float, hit: float) -> Path:
    """A closed-loop run of 2,000 streaming requests, written in completion order."""
    rng = random.Random(seed)
    base = 1_700_000_000.0
    free = [base] * concurrency  # when each worker is next free
    recs: list[dict[str, Any]] = []
    for i in range(2000):
        start = min(free)
        ttft = rng.lognormvariate(ttft_mu, 0.3)
        latency = ttft + rng.lognormvariate(6.0, 0.4)
        end = start + latency / 1000
        free[free.index(start)] = end
        ok = rng.random() > 0.02
        recs.append(
            {"custom_id": f"r{i}", "cache_role": "follower", "outcome": "ok" if ok else "error",
             "error_code": None if ok else "timeout", "attempts": 1, "queued_at": base,
             "started_at": start, "ended_at": end, "ttft_ms": ttft, "latency_ms": latency,
             "total_ms": latency, "prompt_tokens": 1000,
             "cached_tokens": 900 if rng.random() < hit else 0, "completion_tokens": 50,
             "itl_ms": [(latency - ttft) / 49] * 49}
        )  # fmt: skip
    recs.sort(key=lambda r: r["ended_at"])
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    return path


def make_report(tmp_path: Path) -> Path:
    a = synthetic_run(tmp_path / "a.jsonl", seed=1, concurrency=16, ttft_mu=5.0, hit=0.3)
    b = synthetic_run(tmp_path / "b.jsonl", seed=2, concurrency=32, ttft_mu=4.5, hit=0.9)
    price = Price(input=2.0, output=8.0, cached_input=0.5)
    runs = [report.load_run(a, price), report.load_run(b, price)]
    out = tmp_path / "report.html"
    out.write_text(report.render_html(runs), encoding="utf-8")
    return out


BOXES_JS = """JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => {
  const r = f.querySelector('svg').getBoundingClientRect();
  return {id: f.id, x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height,
          marks: f.querySelectorAll('svg rect, svg polyline, svg circle').length};
}))"""


async def test_report_renders_in_chromium(tmp_path: Path) -> None:
    html_path = make_report(tmp_path)
    async with asyncio.timeout(45), chromium(tmp_path) as page:
        # The listeners work: a page that throws is caught.
        await page.load("data:text/html,<script>throw new Error('probe')</script>")
        assert any("probe" in e for e in page.errors())
        page.events.clear()

        await page.load(html_path.as_uri())
        res = await page.send("Runtime.evaluate", expression=BOXES_JS, returnByValue=True)
        boxes = {b["id"]: b for b in orjson.loads(res["result"]["value"])}
        assert sorted(boxes) == sorted(f"chart-{c}" for c in CHARTS)

        shot = await page.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
        for chart_id, b in boxes.items():
            assert b["w"] > 300 and b["h"] > 100, b
            assert b["marks"] >= 3, b  # the plot frame and at least one mark per run
            clip = {"x": b["x"], "y": b["y"], "width": b["w"], "height": b["h"], "scale": 0.5}
            shot = await page.send(
                "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
            )
            total, blue, orange = colour_counts(base64.b64decode(shot["data"]))
            if chart_id == "chart-cost":  # green and grey bars, no run colours
                continue
            # both runs' series are drawn: a line or bars in each run's colour
            assert blue > total * 0.002, (chart_id, blue, total)
            assert orange > total * 0.002, (chart_id, orange, total)
        assert page.errors() == []


def test_png_decoder_reads_every_filter() -> None:
    # A 3x5 RGB image whose rows use filters 0..4, compared with the raw pixels it encodes.
    pixels = [bytes((x * 40 + y, y * 50, 200 - x * 30)) for y in range(5) for x in range(3)]
    rows = [b"".join(pixels[y * 3 : y * 3 + 3]) for y in range(5)]
    encoded = b""
    prev = bytes(9)
    for ftype, row in enumerate(rows):
        enc = bytearray()
        for i, v in enumerate(row):
            a = row[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            paeth = a if pa <= pb and pa <= pc else b if pb <= pc else c
            pred = (0, a, b, (a + b) >> 1, paeth)[ftype]
            enc.append((v - pred) & 255)
        encoded += bytes((ftype,)) + enc
        prev = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 5, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(encoded))
        + chunk(b"IEND", b"")
    )
    assert png_pixels(png) == (3, 5, 3, b"".join(rows))
