"""``runner report``: summary tables, run-vs-run comparison and a self-contained HTML report.

The latency file is streamed one line at a time into a :class:`~runner.stats.SummaryBuilder` and a
:class:`~runner.stats.Timeline`, so memory stays bounded for files of millions of records. The
HTML report draws its charts as inline SVG generated here: no script, no external URL, so it opens
offline and can be mailed as one file.
"""

from __future__ import annotations

import argparse
import html
import io
import math
import os
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .config import load_config, model_arg
from .errors import ConfigError, InputError
from .models import Price
from .results import result_key
from .stats import IDLE_JOIN_S, BusyTime, Distribution, SummaryBuilder, Timeline

__all__ = [
    "COMPARE_METRICS",
    "Run",
    "add_arguments",
    "compare_rows",
    "failed_line",
    "load_run",
    "main",
    "render_summary",
]

MAX_WARNINGS = 20  # malformed lines reported one by one; the rest only counted
HIST_BINS = 60
CDF_POINTS = 101
# (label, path into the summary, higher is better) for --compare.
COMPARE_METRICS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("requests/s", ("requests_per_s",), True),
    ("ok requests/s", ("throughput", "requests_ok_per_s"), True),
    ("output tokens/s", ("throughput", "output_tokens_per_s"), True),
    ("latency p50 ms", ("latency_ms", "p50"), False),
    ("latency p99 ms", ("latency_ms", "p99"), False),
    ("ttft p50 ms", ("ttft_ms", "p50"), False),
    ("ttft p99 ms", ("ttft_ms", "p99"), False),
    ("tpot p50 ms", ("tpot_ms", "p50"), False),
    ("itl p50 ms", ("itl_ms", "p50"), False),
    ("cache hit ratio", ("cache_hit_ratio",), True),
    ("failed jobs", ("jobs", "failed"), False),
    ("retries", ("retries",), False),
    ("cost billed USD", ("cost", "billed"), False),
    ("cost uncached USD", ("cost", "uncached"), False),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("latency", type=Path, metavar="LATENCY.jsonl", help="latency records")
    parser.add_argument("--compare", type=Path, metavar="OTHER.jsonl", help="second run (B)")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write an HTML report")
    parser.add_argument("--json", action="store_true", help="print the summary JSON on stdout")
    parser.add_argument("-c", "--config", type=Path, help="TOML config to take prices from")
    parser.add_argument(
        "--model", type=model_arg, help="model whose config price applies (default: config's)"
    )
    parser.add_argument("--price-input", type=float, metavar="USD", help="per 1M input tokens")
    parser.add_argument(
        "--price-cached-input", type=float, metavar="USD", help="per 1M cached input tokens"
    )
    parser.add_argument(
        "--price-cache-write", type=float, metavar="USD", help="per 1M cache-write tokens"
    )
    parser.add_argument("--price-output", type=float, metavar="USD", help="per 1M output tokens")
    add_slo_arguments(parser)


def add_slo_arguments(parser: argparse._ActionsContainer) -> None:
    """The goodput objectives, shared by ``runner report`` and ``runner bench``."""
    parser.add_argument("--slo-ttft-ms", type=float, help="goodput bound on TTFT")
    parser.add_argument("--slo-tpot-ms", type=float, help="goodput bound on TPOT")
    parser.add_argument("--slo-latency-ms", type=float, help="goodput bound on latency")


def slo_from_args(ns: argparse.Namespace) -> dict[str, float]:
    """The objectives given on the command line, as ``SummaryBuilder(slo_ms=...)`` takes them."""
    given = (("ttft", ns.slo_ttft_ms), ("tpot", ns.slo_tpot_ms), ("latency", ns.slo_latency_ms))
    return {k: v for k, v in given if v is not None}


@dataclass(slots=True)
class Run:
    """One latency file, reduced: its summary, its distributions and its timeline."""

    path: Path
    summary: dict[str, Any]
    latency: Distribution
    ttft: Distribution
    series: dict[str, list[Any]]
    records: int
    malformed: int


Warn = Callable[[Path, int, str], None]


def _not_json(line: bytes, exc: orjson.JSONDecodeError) -> str:
    """Why a line is not JSON; orjson calls invalid UTF-8 "str is not valid UTF-8: surrogates
    not allowed", which no latency file's reader wrote."""
    try:
        line.decode()
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start + 1}"
    return str(exc.msg)


def read_records(path: Path, *, warn: Warn | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, record)`` for each object of a latency file; malformed lines are
    reported through ``warn`` (default: a warning on stderr) and skipped.

    :raises OSError: when the file cannot be opened or read.
    """
    warn = warn or _stderr
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                warn(path, lineno, f"not JSON ({_not_json(line, exc)})")
                continue
            # a bad line without an id of its own is keyed by its line (docs/FORMATS.md)
            if not isinstance(rec, dict) or result_key(rec) is None:
                warn(path, lineno, "not a latency record (object with custom_id)")
                continue
            bad = _bad_field(rec)
            if bad is not None:
                warn(path, lineno, bad)
                continue
            if rec.get("outcome") not in _OUTCOMES:
                # counted as neither ok nor failed: a record without one would pass as ok
                warn(path, lineno, 'outcome is not "ok" or "error"')
                continue
            yield lineno, rec


_OUTCOMES = ("ok", "error")


_NUMERIC = (
    "attempts",
    "queued_at",
    "started_at",
    "ended_at",
    "limiter_ms",
    "ttft_ms",
    "latency_ms",
    "total_ms",
    "prompt_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "completion_tokens",
)


def _bad_field(rec: Mapping[str, Any]) -> str | None:
    """Why a record's numbers are unusable (naming the field), or None.

    Checked before a record touches any counter, so a bad line is skipped whole. Every field is
    a count, a duration or a wall-clock time: a negative one (a hand edit) would turn into a
    negative token count, cost or hit ratio."""
    for name in _NUMERIC:
        v = rec.get(name)
        if v is not None:
            if not isinstance(v, int | float) or isinstance(v, bool):
                return f"{name} is not a number"
            if v < 0:
                return f"{name} is negative ({v})"
    itl = rec.get("itl_ms")
    if itl is not None:
        if not isinstance(itl, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in itl
        ):
            return "itl_ms is not a number"
        if any(v < 0 for v in itl):
            return "itl_ms is negative"
    return None


def _stderr(path: Path, lineno: int, why: str) -> None:
    print(f"warning: {path}:{lineno}: skipped malformed line: {why}", file=sys.stderr)


def load_run(path: Path, price: Price | None, *, slo_ms: Mapping[str, float] | None = None) -> Run:
    """Stream a latency file into a :class:`Run`.

    :raises OSError: when the file cannot be read.
    :raises InputError: when it has lines but not one latency record (another file).
    """
    builder = SummaryBuilder(price, slo_ms=slo_ms)
    timeline = Timeline()
    busy = BusyTime()
    malformed = 0
    held: list[tuple[Path, int, str]] = []  # said once a record shows this is a latency file

    def warn(p: Path, lineno: int, why: str) -> None:
        nonlocal malformed
        malformed += 1
        if malformed <= MAX_WARNINGS:
            if n:
                _stderr(p, lineno, why)
            else:
                held.append((p, lineno, why))

    n = 0
    for _, rec in read_records(path, warn=warn):
        if not n:
            for w in held:
                _stderr(*w)
        builder.add(rec)
        timeline.add(rec)
        busy.add(rec.get("queued_at") or 0.0, rec.get("ended_at") or 0.0)
        n += 1
    if not n and held:
        # `runner report R.results.jsonl` (or the summary, or the jobs file) gave a table of
        # zeros and exit 0 under twenty warnings: say which file it reads instead.
        _, lineno, why = held[0]
        raise InputError(
            f"{path}: not a latency file: none of its {malformed:,} lines is a latency record "
            f"(line {lineno}: {why}); runner report reads the latency records a run writes "
            f"({_latency_hint(path)})"
        )
    if malformed > MAX_WARNINGS:
        print(f"warning: {path}: {malformed} malformed lines skipped in all", file=sys.stderr)
    # The wall is the busy time (BusyTime): a resumed output's idle hours between its
    # invocations are not run time, so req/s is what the runs achieved while running.
    summary = builder.summary(wall_s=busy.result()[0] if n else None)
    summary["wall"] = busy.section()
    summary["source"] = {"file": str(path), "records": n, "malformed_lines": malformed}
    return Run(path, summary, builder.latency, builder.ttft, timeline.series(), n, malformed)


def _latency_hint(path: Path) -> str:
    """Where the latency file of a run is, named after the file given when it is a results or
    summary file that has one beside it."""
    name = path.name
    for suffix in (".results.jsonl", ".summary.json", ".jsonl", ".json"):
        if name.endswith(suffix):
            beside = path.with_name(name.removesuffix(suffix) + ".latency.jsonl")
            if beside != path and beside.is_file():
                return f"here: {beside}"
            break
    return "X.latency.jsonl beside the results file X.results.jsonl"


def _price(ns: argparse.Namespace) -> Price | None:
    given = (ns.price_input, ns.price_output)
    if any(v is not None for v in given):
        if None in given:
            raise ConfigError("--price-input and --price-output must be given together")
        try:
            return Price(
                input=ns.price_input,
                output=ns.price_output,
                cached_input=ns.price_cached_input,
                cache_write=ns.price_cache_write,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if ns.config is not None:
        return load_config(ns.config).price(ns.model)
    return None


def _get(summary: Mapping[str, Any], path: Sequence[str]) -> float | None:
    v: Any = summary
    for k in path:
        if not isinstance(v, Mapping):
            return None
        v = v.get(k)
    return float(v) if isinstance(v, int | float) else None


def compare_rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per key metric: ``{"metric", "a", "b", "ratio"}`` with ratio = B / A (None when
    either side is missing or A is zero)."""
    rows = []
    for label, path, _ in COMPARE_METRICS:
        va, vb = _get(a, path), _get(b, path)
        ratio = round(vb / va, 4) if va and vb is not None else None
        rows.append({"metric": label, "a": va, "b": vb, "ratio": ratio})
    return rows


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if v == int(v) and abs(v) < 1e15:
        return f"{int(v):,}"
    return f"{v:,.4g}" if abs(v) < 1 else f"{v:,.2f}"


def render_compare(a: Run, b: Run) -> str:
    """A side-by-side table of two runs with B/A ratios."""
    from rich.console import Console  # only this command needs a table renderer
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (("metric", "left"), ("A", "right"), ("B", "right"), ("B/A", "right")):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in compare_rows(a.summary, b.summary):
        r = row["ratio"]
        t.add_row(row["metric"], _num(row["a"]), _num(row["b"]), "-" if r is None else f"{r:.3f}")
    buf = io.StringIO()
    Console(file=buf, width=100, color_system=None).print(t)
    return f"A = {a.path}\nB = {b.path}\n{buf.getvalue()}"


def main(ns: argparse.Namespace) -> int:
    """Run ``runner report``; 0 on success, 2 when an input file or the config cannot be used."""
    clash = _input_named(ns.html, (ns.latency, ns.compare, ns.config))
    if clash is not None:
        print(
            f"runner report: error: --html {ns.html} is the input {clash}: refusing to overwrite "
            "an input; choose another path",
            file=sys.stderr,
        )
        return 2
    try:
        price = _price(ns)
    except ConfigError as exc:
        print(f"runner report: error: {exc}", file=sys.stderr)
        return 2
    slo = slo_from_args(ns)
    runs: list[Run] = []
    for path in (ns.latency, ns.compare):
        if path is None:
            continue
        try:
            runs.append(load_run(path, price, slo_ms=slo or None))
        except OSError as exc:
            print(
                f"runner report: error: {path}: cannot read latency file: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        except InputError as exc:
            print(f"runner report: error: {exc}", file=sys.stderr)
            return 2
    if ns.html is not None:
        try:
            ns.html.write_text(render_html(runs), encoding="utf-8")
        except OSError as exc:
            print(
                f"runner report: error: {ns.html}: cannot write report: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        # on stderr: standard output keeps only the tables (or --json's document)
        print(f"runner report: wrote the HTML report to {ns.html}", file=sys.stderr)
    if ns.json:
        if len(runs) == 1:
            doc: Any = runs[0].summary
        else:
            doc = {
                "a": runs[0].summary,
                "b": runs[1].summary,
                "compare": compare_rows(runs[0].summary, runs[1].summary),
            }
        sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    else:
        for label, run in zip("AB", runs, strict=False):
            title = f"{label}: {run.path}" if len(runs) > 1 else str(run.path)
            sys.stdout.write(render_summary(run.summary, title=title) + "\n")
        if len(runs) == 2:
            sys.stdout.write(render_compare(runs[0], runs[1]))
    return 0


def _input_named(out: Path | None, inputs: Sequence[Path | None]) -> Path | None:
    """The input that ``out`` would overwrite (the same file, also through a symlink), if any."""
    for path in inputs:
        if out is None or path is None:
            continue
        try:
            if os.path.samefile(out, path):
                return path
        except OSError:
            continue  # one of them does not exist: not the same file
    return None


# --- HTML -----------------------------------------------------------------------------------

COLORS = ("#2563eb", "#ea580c")
W, H = 560, 280
ML, MR, MT, MB = 64, 16, 28, 44  # plot margins: room for tick labels and the axis titles


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 times a power of ten apart)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    if abs(v) >= 10_000:
        return f"{v / 1000:g}k"
    return f"{v:g}" if abs(v) >= 1 or v == 0 else f"{v:.2g}"


@dataclass(slots=True)
class _Frame:
    """Maps data coordinates to the SVG plot area."""

    x0: float
    x1: float
    y0: float
    y1: float

    def x(self, v: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return ML + (v - self.x0) / span * (W - ML - MR)

    def y(self, v: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return H - MB - (v - self.y0) / span * (H - MT - MB)


def _axes(f: _Frame, x_label: str, y_label: str) -> list[str]:
    out = [f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" class="plot"/>']
    for t in _ticks(f.y0, f.y1):
        y = f.y(t)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt_tick(t)}</text>')
    for t in _ticks(f.x0, f.x1, 6):
        x = f.x(t)
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{H - MB}" y2="{H - MB + 4}" class="axis"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{H - MB + 16}" text-anchor="middle">{_fmt_tick(t)}</text>'
        )
    out.append(
        f'<text x="{(ML + W - MR) / 2}" y="{H - 6}" text-anchor="middle">{_e(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate(14,{(MT + H - MB) / 2}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_label)}</text>'
    )
    return out


def _legend(items: Sequence[tuple[str, str, str]]) -> list[str]:
    out = []
    x = ML + 8
    for label, color, dash in items:
        out.append(
            f'<line x1="{x}" x2="{x + 18}" y1="{MT - 12}" y2="{MT - 12}" stroke="{color}" '
            f'stroke-width="3" stroke-dasharray="{dash}"/>'
        )
        out.append(f'<text x="{x + 22}" y="{MT - 8}">{_e(label)}</text>')
        x += 30 + 7 * len(label)
    return out


def _svg(chart_id: str, title: str, body: list[str], note: str = "") -> str:
    inner = "\n".join(body)
    return (
        f'<figure class="chart" id="{chart_id}"><figcaption>{_e(title)}'
        f"{f' <small>{_e(note)}</small>' if note else ''}</figcaption>"
        f'<svg viewBox="0 0 {W} {H}" role="img" aria-label="{_e(title)}">{inner}</svg></figure>'
    )


def _empty(chart_id: str, title: str, why: str) -> str:
    body = [
        f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" class="plot"/>',
        f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" class="empty">{_e(why)}</text>',
    ]
    return _svg(chart_id, title, body)


def _line_chart(
    chart_id: str,
    title: str,
    lines: Sequence[tuple[str, str, str, Sequence[float], Sequence[float | None]]],
    x_label: str,
    y_label: str,
    *,
    y_max: float | None = None,
    note: str = "",
) -> str:
    """Lines given as ``(label, color, dasharray, xs, ys)``; a None y breaks the line."""
    xs = [x for *_, lx, _ in lines for x in lx]
    ys = [y for *_, ly in lines for y in ly if y is not None]
    if not xs or not ys:
        return _empty(chart_id, title, "no data")
    top = y_max if y_max is not None else max(ys) * 1.08 or 1.0
    f = _Frame(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, 0.0, top)
    body = _axes(f, x_label, y_label)
    for _label, color, dash, lx, ly in lines:
        segs: list[list[str]] = [[]]
        for x, y in zip(lx, ly, strict=True):
            if y is None:
                segs.append([])
            else:
                segs[-1].append(f"{f.x(x):.1f},{f.y(y):.1f}")
        for seg in segs:
            if len(seg) == 1:  # a lone point would not show as a polyline
                cx, cy = seg[0].split(",")
                body.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            elif seg:
                body.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                    f'stroke-width="2" stroke-dasharray="{dash}"/>'
                )
    body += _legend([(lab, c, d) for lab, c, d, *_ in lines])
    return _svg(chart_id, title, body, note)


def _hist_chart(
    chart_id: str, title: str, dists: Sequence[tuple[str, str, Distribution]], x_label: str
) -> str:
    """Histograms over shared bins; one run as filled bars, a second as an outlined step."""
    dists = [d for d in dists if d[2].count]
    if not dists:
        return _empty(chart_id, title, "no streaming records" if "TTFT" in title else "no data")
    lo = min(d.min for *_, d in dists)
    hi = max(d.quantile(0.999) for *_, d in dists)
    if hi <= lo:
        hi = max(d.max for *_, d in dists)
    if hi <= lo:
        hi = lo + 1.0
    width = (hi - lo) / HIST_BINS
    shares = []
    for *_, d in dists:
        counts = d.histogram(HIST_BINS, lo, hi)
        shares.append([c / d.count for c in counts])
    f = _Frame(lo, hi, 0.0, max(max(s) for s in shares) * 1.1 or 1.0)
    body = _axes(f, x_label, "share of requests")
    for i, ((_, color, _), share) in enumerate(zip(dists, shares, strict=True)):
        if i == 0:
            for k, s in enumerate(share):
                if s:
                    x0, x1 = f.x(lo + k * width), f.x(lo + (k + 1) * width)
                    y = f.y(s)
                    body.append(
                        f'<rect x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                        f'height="{H - MB - y:.1f}" fill="{color}" fill-opacity="0.75"/>'
                    )
        else:
            pts = [f"{f.x(lo):.1f},{f.y(0):.1f}"]
            for k, s in enumerate(share):
                pts.append(f"{f.x(lo + k * width):.1f},{f.y(s):.1f}")
                pts.append(f"{f.x(lo + (k + 1) * width):.1f},{f.y(s):.1f}")
            pts.append(f"{f.x(hi):.1f},{f.y(0):.1f}")
            body.append(
                f'<polyline points="{" ".join(pts)}" fill="none" stroke="{color}" '
                f'stroke-width="2"/>'
            )
    body += _legend([(lab, c, "") for lab, c, _ in dists])
    return _svg(chart_id, title, body, f"{HIST_BINS} bins; values above p99.9 in the last bin")


def _cost_chart(runs: Sequence[Run], labels: Sequence[str]) -> str:
    title = "Cost: billed vs uncached (USD)"
    costs = [(lab, r.summary.get("cost")) for lab, r in zip(labels, runs, strict=True)]
    if not any(c for _, c in costs):
        return _empty("chart-cost", title, "no prices: pass --price-input/--price-output or -c")
    top = max(max(c["billed"], c["uncached"]) for _, c in costs if c) * 1.15 or 1.0
    f = _Frame(0.0, 1.0, 0.0, top)
    body = _axes_y_only(f, "USD")
    slot = (W - ML - MR) / len(costs)
    for i, (lab, c) in enumerate(costs):
        x = ML + i * slot
        body.append(
            f'<text x="{x + slot / 2:.1f}" y="{H - MB + 16}" text-anchor="middle">{_e(lab)}</text>'
        )
        if not c:
            continue
        bw = slot / 4
        for j, (key, color) in enumerate((("billed", "#16a34a"), ("uncached", "#9ca3af"))):
            bx = x + slot / 2 - bw - 4 + j * (bw + 8)
            y = f.y(c[key])
            body.append(
                f'<rect x="{bx:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{H - MB - y:.1f}" '
                f'fill="{color}"/>'
            )
            body.append(
                f'<text x="{bx + bw / 2:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
                f"{c[key]:.4g}</text>"
            )
    body += _legend([("billed", "#16a34a", ""), ("uncached", "#9ca3af", "")])
    return _svg("chart-cost", title, body)


def _axes_y_only(f: _Frame, y_label: str) -> list[str]:
    out = [f'<rect x="{ML}" y="{MT}" width="{W - ML - MR}" height="{H - MT - MB}" class="plot"/>']
    for t in _ticks(f.y0, f.y1):
        y = f.y(t)
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt_tick(t)}</text>')
    out.append(
        f'<text transform="translate(14,{(MT + H - MB) / 2}) rotate(-90)" '
        f'text-anchor="middle">{_e(y_label)}</text>'
    )
    return out


def _cdf_chart(runs: Sequence[Run], labels: Sequence[str]) -> str:
    qs = [i / (CDF_POINTS - 1) for i in range(CDF_POINTS)]
    lines: list[tuple[str, str, str, Sequence[float], Sequence[float | None]]] = []
    for lab, run, color in zip(labels, runs, COLORS, strict=False):
        for name, dist, dash in (("latency", run.latency, ""), ("TTFT", run.ttft, "6 4")):
            if dist.count:
                xs = dist.quantiles(qs)
                lines.append((f"{lab} {name}", color, dash, xs, qs))
    return _line_chart(
        "chart-cdf", "Latency and TTFT, cumulative", lines, "ms", "share of requests", y_max=1.0
    )


def _series_chart(
    chart_id: str,
    title: str,
    runs: Sequence[Run],
    labels: Sequence[str],
    key: str,
    y_label: str,
    y_max: float | None = None,
) -> str:
    lines = [
        (lab, color, "", run.series["t_s"], run.series[key])
        for lab, run, color in zip(labels, runs, COLORS, strict=False)
    ]
    return _line_chart(chart_id, title, lines, "seconds since the run began", y_label, y_max=y_max)


def _summary_table(runs: Sequence[Run], labels: Sequence[str]) -> str:
    head = "".join(f"<th>{_e(lab)}</th>" for lab in labels)
    if len(runs) == 2:
        head += "<th>B/A</th>"
    rows: list[str] = []
    sums = [r.summary for r in runs]
    cmp = compare_rows(runs[0].summary, runs[1].summary) if len(runs) == 2 else None

    def row(label: str, values: Sequence[str], ratio: str | None = None) -> None:
        cells = "".join(f"<td>{_e(v)}</td>" for v in values)
        if ratio is not None:
            cells += f"<td>{_e(ratio)}</td>"
        rows.append(f"<tr><th>{_e(label)}</th>{cells}</tr>")

    blank = "" if cmp is not None else None
    row("file", [r.path.name for r in runs], blank)
    row("jobs ok / failed", [f"{s['jobs']['ok']} / {s['jobs']['failed']}" for s in sums], blank)
    errors = [", ".join(f"{k} {v}" for k, v in s["jobs"]["by_error"].items()) for s in sums]
    row("failures by error", [e or "-" for e in errors], blank)
    row("wall s", [_num(s["wall_s"]) for s in sums], blank)
    row("limiter wait s", [_num(s["limiter_wait_s"]) for s in sums], blank)
    for i, (label, path, _) in enumerate(COMPARE_METRICS):
        ratio = None
        if cmp is not None:
            rv = cmp[i]["ratio"]
            ratio = "-" if rv is None else f"{rv:.3f}"
        row(label, [_num(_get(r.summary, path)) for r in runs], ratio)
    return f'<table class="summary"><tr><th></th>{head}</tr>{"".join(rows)}</table>'


def _pct_table(runs: Sequence[Run], labels: Sequence[str]) -> str:
    cols = ("mean", "p50", "p90", "p95", "p99", "p999", "max")
    head = "".join(f"<th>{'p99.9' if c == 'p999' else c}</th>" for c in cols)
    rows = []
    for lab, run in zip(labels, runs, strict=True):
        for key in ("latency_ms", "ttft_ms", "tpot_ms", "itl_ms", "total_ms"):
            d = run.summary.get(key)
            cells = "".join(f"<td>{_num(d[c]) if d else '-'}</td>" for c in cols)
            name = key.removesuffix("_ms")
            rows.append(f"<tr><th>{_e(lab)} {name}</th>{cells}</tr>")
    return f'<table class="summary"><tr><th>ms</th>{head}</tr>{"".join(rows)}</table>'


_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#111827;
background:#f9fafb}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.meta{color:#6b7280;margin-bottom:12px}
table.summary{border-collapse:collapse;background:#fff;margin:8px 16px 8px 0;display:inline-table;
vertical-align:top}
table.summary th,table.summary td{border:1px solid #e5e7eb;padding:3px 10px;text-align:right}
table.summary th:first-child{text-align:left;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px}
figure.chart{margin:0;background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:8px}
figcaption{font-weight:600;margin:0 0 4px 4px}figcaption small{font-weight:400;color:#6b7280}
svg{width:100%;height:auto;display:block;font-size:11px;fill:#374151}
.plot{fill:#fff;stroke:#d1d5db}.grid{stroke:#eef0f3}.axis{stroke:#9ca3af}
.empty{fill:#9ca3af;font-size:14px}
"""


def render_html(runs: Sequence[Run]) -> str:
    """One self-contained HTML page: summary tables and inline SVG charts for one or two runs."""
    labels = ["A", "B"] if len(runs) == 2 else ["run"]
    hist_lat = [(lab, c, r.latency) for lab, c, r in zip(labels, COLORS, runs, strict=False)]
    hist_ttft = [(lab, c, r.ttft) for lab, c, r in zip(labels, COLORS, runs, strict=False)]
    charts = [
        _hist_chart("chart-latency", "Latency distribution", hist_lat, "latency ms"),
        _hist_chart("chart-ttft", "TTFT distribution", hist_ttft, "TTFT ms"),
        _cdf_chart(runs, labels),
        _series_chart(
            "chart-throughput", "Throughput", runs, labels, "completed_per_s", "completed req/s"
        ),
        _series_chart(
            "chart-inflight", "In-flight requests", runs, labels, "in_flight", "requests"
        ),
        _series_chart(
            "chart-groups", "Active cache groups", runs, labels, "active_groups", "groups"
        ),
        _series_chart(
            "chart-cache",
            "Cache hit ratio",
            runs,
            labels,
            "cache_hit_ratio",
            "cached / prompt tokens",
            y_max=1.0,
        ),
        _cost_chart(runs, labels),
    ]
    files = " vs ".join(f"{lab} = {r.path}" for lab, r in zip(labels, runs, strict=True))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>runner report: {_e(files)}</title><style>{_CSS}</style></head><body>"
        f'<h1>runner report</h1><div class="meta">{_e(files)}</div>'
        f"<h2>Summary</h2>{_summary_table(runs, labels)}{_pct_table(runs, labels)}"
        f'<h2>Charts</h2><div class="charts">{"".join(charts)}</div></body></html>\n'
    )


def _fmt_ms(d: Mapping[str, float] | None, key: str) -> str:
    if not d:
        return "-"
    v = d[key]
    # Every cell in milliseconds, as the table's "ms" header says (a cell in seconds sat
    # beside a mean in milliseconds); past 10 s the decimals go and thousands are grouped.
    return f"{v:,.0f}" if v >= 10_000 else f"{v:.1f}"


def _this_run(summary: Mapping[str, Any]) -> str:
    skipped = summary["jobs"]["skipped_resumed"]
    if not skipped:
        return ""
    run = summary.get("this_run")
    if run is None:
        return f", {skipped} resumed"
    return (
        f" in the output; this run {run['ok']} ok, {run['failed']} failed, {skipped} already done"
    )


def _idle(summary: Mapping[str, Any]) -> str:
    """``runner report`` of an output written by several invocations: the idle time between
    them, left out of the wall (runner.stats.BusyTime)."""
    wall = summary.get("wall")
    if not isinstance(wall, Mapping) or not wall.get("pauses"):
        return ""
    n = int(wall["pauses"])
    return (
        f" (busy time; {wall['idle_s']:,.2f} s idle in {n} pause{'' if n == 1 else 's'} "
        f"over {IDLE_JOIN_S:g} s not counted, span {wall['span_s']:,.2f} s)"
    )


def render_summary(summary: Mapping[str, Any], *, title: str = "run summary") -> str:
    """A compact table of a summary for a terminal (stderr at the end of a run).

    Plain text on purpose: every ``runner run`` prints it, and importing a table renderer for
    eight lines would cost more CPU than the lines are worth.
    """
    jobs = summary["jobs"]
    tok = summary["tokens"]
    errors = ", ".join(f"{k} {v}" for k, v in jobs["by_error"].items())
    head: list[tuple[str, str]] = [
        (
            "jobs",
            f"{jobs['ok']} ok, {jobs['failed']} failed"
            + (f" ({errors})" if errors else "")
            + _this_run(summary)
            # A run stopped early (guard, endpoint, signal): the jobs it never sent; with
            # --via batch, those not collected (most are in batches still running)
            + (
                f", {summary['not_sent']:,} "
                + ("not collected" if summary.get("via") == "batch" else "not sent")
                if summary.get("not_sent")
                else ""
            ),
        ),
        (
            "wall",
            f"{summary['wall_s']:.2f} s, {summary['requests_per_s']:.1f} req/s" + _idle(summary),
        ),
        (
            "tokens",
            f"prompt {tok['prompt']:,}, cached {tok['cached']:,}, "
            f"cache-write {tok['cache_write']:,}, completion {tok['completion']:,}",
        ),
    ]
    if summary.get("summary_kept"):  # a re-run that sent nothing (runner/noop.py)
        head.insert(1, ("summary", "nothing sent: the summary file is left as it was"))
    roles = summary.get("cache", {}).get("by_role", {})
    by_role = ", ".join(
        f"{role} {r['hit_ratio'] * 100:.1f}%" for role, r in roles.items() if role != "none"
    )
    head.append(
        (
            "cache hit",
            f"{summary['cache_hit_ratio'] * 100:.1f}%" + (f" ({by_role})" if by_role else ""),
        )
    )
    head.append(
        (
            "retries",
            f"{summary['retries']}, limiter wait {summary['limiter_wait_s']:.2f} s "
            "summed over requests",
        )
    )
    cost = summary.get("cost")
    if cost:
        head.append(
            (
                "cost",
                f"billed ${cost['billed']:.4f}, uncached ${cost['uncached']:.4f}, "
                f"saving {cost['saving'] * 100:.1f}%",
            )
        )
        if "storage" in cost:
            head.append(
                (
                    "caches",
                    f"create ${cost['cache_create']:.4f}, storage ${cost['storage']:.6f}, "
                    f"total ${cost['billed_total']:.4f}, "
                    f"saving net {cost['saving_net'] * 100:.1f}%",
                )
            )
    alive = (summary.get("explicit_caches") or {}).get("left_alive")
    if alive:  # storage is billed until their TTL: say so, and how to remove them
        head.append(
            (
                "caches",
                f"{alive} could not be deleted and live until their TTL "
                "(`runner caches OUTPUT -c CONFIG --delete` removes them)",
            )
        )
    ctl = summary.get("cache_control")
    if ctl and ctl["adaptive"]:  # fixed limits are what the user set: nothing to report
        ratio = ctl["follower_hit_ratio"]
        shape = ctl.get("cache_shape") or "unknown"
        # Only a known shape was learned; an unknown one keeps the fixed limits (README), and
        # without any follower answer the probe's starting limits were never used at all.
        how = f"learned, {shape} cache" if shape != "unknown" else "no verdict, fixed limits"
        if shape == "unknown" and not ctl["follower_hits"] + ctl["follower_misses"]:
            text = "nothing learned (no follower answer to learn from)"
        else:
            text = (
                f"{ctl['active_groups']} groups x {ctl['group_concurrency']} in flight each"
                f" ({how}), shrinks {ctl['group_shrinks']} "
                f"groups / {ctl['cap_shrinks']} cap, follower hits "
                + ("-" if ratio is None else f"{ratio * 100:.1f}%")
            )
        head.append(("cache ctl", text))
    width = max(len(k) for k, _ in head)
    indent = " " * (width + 2)
    lines = [title]
    for k, v in head:  # wrapped at 100 columns, continuation lines under the value
        lines.append(
            textwrap.fill(v, 100, initial_indent=f"{k:<{width}}  ", subsequent_indent=indent)
        )
    cols = ("mean", "p50", "p90", "p95", "p99", "p999", "max")
    rows = [["ms", *("p99.9" if c == "p999" else c for c in cols)]]
    for name, key in (
        ("latency", "latency_ms"),
        ("ttft", "ttft_ms"),
        ("tpot", "tpot_ms"),
        ("itl", "itl_ms"),
    ):
        d = summary.get(key)
        if d or key in ("latency_ms", "ttft_ms"):
            rows.append([name, *(_fmt_ms(d, c) for c in cols)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def failed_line(summary: dict[str, Any]) -> str:
    """Exit 1 in one line, for ``-q``: '3 of 50 jobs failed (http_4xx 2, invalid_input 1)'."""
    jobs = summary["jobs"]
    codes = ", ".join(f"{code} {n}" for code, n in sorted(jobs["by_error"].items()))
    said = f"{jobs['failed']:,} of {jobs['total']:,} jobs failed"
    return said + (f" ({codes})" if codes else "")
