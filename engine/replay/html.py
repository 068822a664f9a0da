"""`policyctl replay --format html`: the JSON report as one self-contained HTML page.

It reads the JSON form (`report.as_json`), so a report that exists only as JSON renders
the same way; keys it does not know are ignored and optional ones may be missing. The
page needs nothing beside itself: inline CSS, charts drawn here as inline SVG, no script,
no font or image to fetch (its Content-Security-Policy forbids them). Every value taken
from the report is escaped, in text and in attributes. Each number a reader (or a test)
may check carries `data-field` (with `data-key` for one entry of a mapping) and
`data-value`, the exact JSON value; the element's text is the human form.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from engine.units import format_money

BEFORE, AFTER = "before", "after"
MAX_MODELS = 12  # the model-share chart's rows; the rest are summed into one
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

STYLE = """
:root { --fg: #1d2330; --muted: #5d6675; --line: #d9dde4; --bg: #fff; --panel: #f6f7f9;
  --before: #9aa3b2; --after: #2f6fdb; --up: #b3261e; --down: #1b7f3b; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6e8ec; --muted: #a3abb8; --line: #3a404b; --bg: #16191f; --panel: #1f232b;
    --before: #7d8696; --after: #6ea1ff; --up: #ff8a80; --down: #7fd49a; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.35rem; margin: .2rem 0 .6rem; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; border-bottom: 1px solid var(--line);
  padding-bottom: .2rem; }
p { margin: .35rem 0; }
.muted { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr));
  gap: 10px; margin: .8rem 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 12px; }
.card .n { font-size: 1.5rem; font-weight: 600; display: block; }
.card .l { color: var(--muted); font-size: .85rem; }
.notes { margin: .4rem 0; padding-left: 1.2rem; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; margin: .3rem 0; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: .85rem; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code, .id { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: .88em; overflow-wrap: anywhere; }
.up { color: var(--up); } .down { color: var(--down); }
.charts { display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr)); }
figure { margin: 0; background: var(--panel); border: 1px solid var(--line);
  border-radius: 8px; padding: 10px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg { display: block; width: 100%; height: auto; }
svg text { fill: var(--muted); font-size: 13px; }
svg .axis { stroke: var(--line); }
svg .s-before { stroke: var(--before); fill: var(--before); }
svg .s-after { stroke: var(--after); fill: var(--after); }
svg .line { fill: none; stroke-width: 2.5; }
svg .label { fill: var(--fg); font-size: 14px; }
/* a phone shrinks the charts: their text grows in the chart's units to stay readable */
@media (max-width: 600px) { svg text { font-size: 18px; } svg .label { font-size: 19px; }
  svg .mid { display: none; } main { padding: 10px; } table { font-size: .9rem; }
  th, td { padding: 4px 5px; } }
.legend { font-size: .85rem; color: var(--muted); margin-top: 4px; }
.key { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  margin: 0 4px 0 10px; vertical-align: -1px; }
.key.before { background: var(--before); } .key.after { background: var(--after); }
details summary { cursor: pointer; color: var(--muted); margin: .4rem 0; }
"""


@dataclass(frozen=True, slots=True)
class Series:
    """One line of an hourly chart: a value (or None, a gap) per hour."""

    side: str  # BEFORE or AFTER
    values: list[float | None]


def render(report: dict[str, Any]) -> str:
    """The JSON report (`engine.replay.report.as_json`) as one HTML page."""
    changed = _int(report.get("changed"))
    replayed = _int(report.get("replayed"))
    title = f"policyctl replay: {changed:,} of {replayed:,} decisions change"
    body = [
        f"<h1>{escape(title)}</h1>",
        _summary(report),
        _totals(report),
        _charts(report),
        _changes(report),
        _hours_table(report),
    ]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{STYLE}</style>",
            "</head>",
            "<body>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )


# -- the pieces ---------------------------------------------------------------------------


def _summary(r: dict[str, Any]) -> str:
    requests, replayed, changed = (_int(r.get(k)) for k in ("requests", "replayed", "changed"))
    share = r.get("changed_share")
    cards = [
        _card("requests", requests, f"{requests:,}", "requests in the log"),
        _card("replayed", replayed, f"{replayed:,}", "decided again"),
        _card("changed", changed, f"{changed:,}", "decisions changed"),
        _card("changed_share", share, _percent(share), "of the replayed"),
    ]
    notes = []
    if _int(r.get("not_replayable")):
        notes.append(
            f"{_num('not_replayable', r['not_replayable'])} not replayable: the log kept no"
            " features of them (<code>--log-requests off</code>, or logged before features"
            " were kept)"
        )
    if _int(r.get("unlogged")):
        fields = r.get("unlogged_fields") or {}
        notes.append(
            f"{_num('unlogged', r['unlogged'])} not replayable: they read a field the log"
            " never kept ("
            + ", ".join(f"<code>{escape(str(k))}</code> {_int(n):,}" for k, n in fields.items())
            + ")"
        )
    if _int(r.get("invalid")):
        notes.append(
            f"{_num('invalid', r['invalid'])} lines that are not a valid request (left out)"
        )
    if _int(r.get("hashed_keys")):
        notes.append(
            f"{_num('hashed_keys', r['hashed_keys'])} with hashed user or IP keys: conditions"
            " and keyed limits on a literal user or IP could not be decided for them"
        )
    baseline = r.get("baseline")
    against = (
        f'<p>Compared with <span class="id" data-field="baseline">{escape(str(baseline))}</span>.'
        "</p>"
        if baseline is not None
        else ""
    )
    listed = (
        '<ul class="notes">' + "".join(f"<li>{n}</li>" for n in notes) + "</ul>" if notes else ""
    )
    return f'<section class="cards">{"".join(cards)}</section>{against}{listed}'


def _card(field: str, value: Any, shown: str, label: str) -> str:
    return (
        f'<div class="card"><span class="n" {_data(field, value)}>{escape(shown)}</span>'
        f'<span class="l">{escape(label)}</span></div>'
    )


def _totals(r: dict[str, Any]) -> str:
    before, after = _side(r, BEFORE), _side(r, AFTER)
    rows: list[tuple[str, str, Callable[[Any], str]]] = [
        ("served", "served", _count),
        ("denied", "denied", _count),
        ("cost", "cost", _money),
        ("mean_latency_ms", "mean latency", _ms),
        ("from_priors", "served, projected from estimates", _count),
    ]
    lines = []
    for key, label, fmt in rows:
        a, b = before.get(key), after.get(key)
        delta = b - a if isinstance(a, int | float) and isinstance(b, int | float) else None
        lines.append(
            f"<tr><th>{escape(label)}</th>"
            f'<td class="num" {_data(f"before.{key}", a)}>{escape(fmt(a))}</td>'
            f'<td class="num" {_data(f"after.{key}", b)}>{escape(fmt(b))}</td>'
            f"{_delta(f'change.{key}', delta, fmt)}</tr>"
        )
    return (
        "<h2>Projected totals</h2>"
        '<p class="muted">Each served decision at its model\'s measured mean cost and latency'
        " over the log's outcomes; a model never measured is projected from the decision's"
        " own estimate.</p>"
        '<div class="scroll"><table><thead><tr><th></th><th class="num">before</th>'
        '<th class="num">after</th><th class="num">change</th></tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table></div>"
    )


def _delta(field: str, delta: float | None, fmt: Callable[[Any], str]) -> str:
    if delta is None:
        return f'<td class="num" {_data(field, None)}>–</td>'
    sign = "+" if delta > 0 else "−" if delta < 0 else "±"
    cls = "up" if delta > 0 else "down" if delta < 0 else ""
    return f'<td class="num {cls}" {_data(field, delta)}>{escape(sign + fmt(abs(delta)))}</td>'


def _charts(r: dict[str, Any]) -> str:
    hours = [h for h in r.get("hours") or [] if isinstance(h, dict)]
    stamps = [_hour(h.get("hour")) for h in hours]

    def series(key: str) -> list[Series]:
        return [
            Series(side, [_float(_side(h, side).get(key)) for h in hours])
            for side in (BEFORE, AFTER)
        ]

    legend = (
        '<div class="legend"><span class="key before"></span>before'
        '<span class="key after"></span>after</div>'
    )
    figures = [
        _figure("Cost per hour", _line_chart(stamps, series("cost"), _money), legend),
        _figure(
            "Mean latency per hour",
            _line_chart(stamps, series("mean_latency_ms"), _ms),
            legend,
        ),
        _figure("Served decisions per model", _model_share(r), legend),
    ]
    return f'<h2>Before and after</h2><div class="charts">{"".join(figures)}</div>'


def _figure(caption: str, chart: str, legend: str) -> str:
    return f"<figure><figcaption>{escape(caption)}</figcaption>{chart}{legend}</figure>"


def _line_chart(
    stamps: Sequence[dt.datetime | None], lines: Sequence[Series], fmt: Callable[[Any], str]
) -> str:
    """Both sides' hourly values as lines, x by the hour (a missing hour breaks the line)."""
    if not stamps:
        return '<p class="muted">No hour with replayed traffic.</p>'
    w, h, left, right, top, bottom = 480, 250, 96, 12, 12, 34
    known = [v for s in lines for v in s.values if v is not None and math.isfinite(v)]
    peak = _nice(max(known, default=0.0))
    times = _positions(stamps)
    span = max(times[-1] - times[0], 1.0)

    def x(i: int) -> float:
        if len(times) == 1:
            return left + (w - left - right) / 2
        return left + (times[i] - times[0]) / span * (w - left - right)

    def y(v: float) -> float:
        return top + (1 - v / peak) * (h - top - bottom)

    parts = [
        f'<svg viewBox="0 0 {w} {h}" role="img" preserveAspectRatio="xMidYMid meet">',
    ]
    for frac in (0, 0.5, 1):
        ty = y(peak * frac)
        parts.append(
            f'<line class="axis" x1="{left}" x2="{w - right}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(peak * frac))}</text>"
        )
    last = len(stamps) - 1
    for i in sorted({0, last // 2, last}):
        # the first and last hour at the ends; the middle one (hidden on a phone) centred
        anchor = "middle" if 0 < i < last or last == 0 else "start" if i == 0 else "end"
        mid = ' class="mid"' if 0 < i < last else ""
        parts.append(
            f'<text{mid} x="{x(i):.1f}" y="{h - 10}" text-anchor="{anchor}">'
            f"{escape(_hour_label(stamps[i]))}</text>"
        )
    marks = len(stamps) <= 72  # a dot (with its tooltip) on every hour, unless too many
    dots: list[str] = []
    for s in lines:
        segments: list[list[int]] = [[]]  # hours joined by a line
        for i, v in enumerate(s.values):
            if v is None or (i > 0 and times[i] - times[i - 1] > 3600):
                segments.append([])
            if v is not None:
                segments[-1].append(i)
        for seg in segments:
            at = [(i, x(i), y(s.values[i] or 0.0)) for i in seg]
            if len(seg) > 1:
                points = " ".join(f"{px:.1f},{py:.1f}" for _, px, py in at)
                parts.append(f'<polyline class="line s-{s.side}" points="{points}"/>')
            for i, px, py in at if marks or len(seg) == 1 else ():
                tip = f"{_hour_label(stamps[i])} UTC, {s.side}: {fmt(s.values[i])}"
                dots.append(
                    f'<circle class="s-{s.side}" cx="{px:.1f}" cy="{py:.1f}" r="3.5">'
                    f"<title>{escape(tip)}</title></circle>"
                )
    parts += dots  # over the lines
    parts.append("</svg>")
    return "".join(parts)


def _model_share(r: dict[str, Any]) -> str:
    """Served decisions per provider/model, a bar for each side, one model under another."""
    models = _side(r, "models")
    counts = {side: _mapping(models.get(side)) for side in (BEFORE, AFTER)}
    names = sorted(
        set(counts[BEFORE]) | set(counts[AFTER]),
        key=lambda m: (-max(counts[BEFORE].get(m, 0), counts[AFTER].get(m, 0)), m),
    )
    if not names:
        return '<p class="muted">No served decision on either side.</p>'
    rows: list[tuple[str, dict[str, int], bool]] = [
        (m, {s: counts[s].get(m, 0) for s in counts}, True) for m in names[:MAX_MODELS]
    ]
    if len(names) > MAX_MODELS:
        rest = names[MAX_MODELS:]
        summed = {s: sum(counts[s].get(m, 0) for m in rest) for s in counts}
        rows.append((f"{len(rest)} other models", summed, False))
    totals = {s: sum(counts[s].values()) for s in counts}
    w, left, bar, pitch = 480, 4, 16, 64
    width = w - left - 130
    peak = max(max(c.values()) for _, c, _ in rows) or 1
    h = pitch * len(rows) + 4
    parts = [f'<svg viewBox="0 0 {w} {h}" role="img" preserveAspectRatio="xMidYMid meet">']
    for i, (name, c, real) in enumerate(rows):
        top = i * pitch + 4
        parts.append(f'<text class="label" x="{left}" y="{top + 15}">{escape(name)}</text>')
        for j, side in enumerate((BEFORE, AFTER)):
            n = c[side]
            by = top + 22 + j * (bar + 3)
            length = max(n / peak * width, 1.0 if n else 0.0)
            share = _percent(n / totals[side] if totals[side] else None)
            tip = f"{name}, {side}: {n:,} served ({share})"
            field = f'data-field="models.{side}" data-key="{escape(name)}" data-value="{n}"'
            parts.append(
                f'<rect class="s-{side}" x="{left}" y="{by}" width="{length:.1f}" height="{bar}"'
                f' rx="2"><title>{escape(tip)}</title></rect>'
                f'<text x="{left + length + 6:.1f}" y="{by + bar - 2}"'
                f" {field if real else ''}>{n:,} · {escape(share)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _changes(r: dict[str, Any]) -> str:
    out = ["<h2>What changes</h2>"]
    routes = _mapping(r.get("by_route"))
    if routes:
        rows = "".join(
            f'<tr><td><code>{escape(route)}</code></td><td class="num"'
            f' data-field="by_route" data-key="{escape(route)}" data-value="{n}">{n:,}</td></tr>'
            for route, n in routes.items()
        )
        out.append(
            "<h3>By route (after)</h3>"
            '<div class="scroll"><table><thead><tr><th>route</th><th class="num">changed</th>'
            f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
    pairs = [p for p in r.get("by_model") or [] if isinstance(p, dict)]
    if pairs:
        rows = "".join(_pair_row(p) for p in pairs)
        out.append(
            "<h3>By model, before → after</h3>"
            '<div class="scroll"><table><thead><tr><th>before</th><th>after</th>'
            '<th class="num">count</th><th>example request ids</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>"
        )
    for key, title in (("denials_added", "Denials added"), ("denials_removed", "Denials removed")):
        counts = _mapping(r.get(key))
        if counts:
            rows = "".join(
                f'<tr><td><code>{escape(scope)}</code></td><td class="num" data-field="{key}"'
                f' data-key="{escape(scope)}" data-value="{n}">{n:,}</td></tr>'
                for scope, n in counts.items()
            )
            out.append(
                f"<h3>{title}</h3>"
                '<div class="scroll"><table><thead><tr><th>limit scope or reason</th>'
                f'<th class="num">requests</th></tr></thead><tbody>{rows}</tbody></table></div>'
            )
    newly = _int(r.get("newly_no_eligible_model"))
    if newly:
        out.append(
            f"<p>{_num('newly_no_eligible_model', newly)} requests newly have no eligible"
            " model.</p>"
        )
    if len(out) == 1:
        out.append("<p>No decision changes.</p>")
    return "".join(out)


def _pair_row(p: dict[str, Any]) -> str:
    before, after, n = str(p.get(BEFORE)), str(p.get(AFTER)), _int(p.get("count"))
    key = escape(f"{before} → {after}")
    ids = ", ".join(f'<span class="id">{escape(str(i))}</span>' for i in p.get("examples") or [])
    return (
        f"<tr><td><code>{escape(before)}</code></td><td><code>{escape(after)}</code></td>"
        f'<td class="num" data-field="by_model" data-key="{key}" data-value="{n}">{n:,}</td>'
        f"<td>{ids}</td></tr>"
    )


def _hours_table(r: dict[str, Any]) -> str:
    hours = [h for h in r.get("hours") or [] if isinstance(h, dict)]
    if not hours:
        return ""
    rows = []
    for h in hours:
        hour = str(h.get("hour"))
        key = f'data-key="{escape(hour)}"'
        cells = []
        for side in (BEFORE, AFTER):
            t = _side(h, side)
            for name, fmt in (("served", _count), ("cost", _money), ("mean_latency_ms", _ms)):
                v = t.get(name)
                cells.append(
                    f'<td class="num" data-field="hours.{side}.{name}" {key}'
                    f' data-value="{escape(_json(v))}">{escape(fmt(v))}</td>'
                )
        label = _hour_label(_hour(hour)) if _hour(hour) else hour
        rows.append(
            f'<tr data-field="hour" {key}><td class="num">{escape(label)}</td>{"".join(cells)}</tr>'
        )
    head = "".join(
        f'<th class="num">{escape(f"{side} {n}")}</th>'
        for side in (BEFORE, AFTER)
        for n in ("served", "cost", "latency")
    )
    return (
        f"<h2>Per hour</h2><details><summary>{len(hours):,} hour{'' if len(hours) == 1 else 's'}"
        " (UTC)</summary>"
        '<div class="scroll"><table><thead><tr><th class="num">hour</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></details>"
    )


# -- values -------------------------------------------------------------------------------


def _data(field: str, value: Any) -> str:
    return f'data-field="{escape(field)}" data-value="{escape(_json(value))}"'


def _num(field: str, value: Any) -> str:
    return f"<span {_data(field, value)}>{escape(_count(value))}</span>"


def _json(value: Any) -> str:
    """The exact JSON text of a number (None: `null`)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    return json.dumps(value if isinstance(value, int | float) else None)


def _side(r: Any, side: str) -> dict[str, Any]:
    """`r[side]` when both are mappings (a side's totals, the models), else empty."""
    got = r.get(side) if isinstance(r, dict) else None
    return got if isinstance(got, dict) else {}


def _mapping(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): _int(v) for k, v in value.items()}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "–"


def _money(value: Any) -> str:
    v = _float(value)
    return "–" if v is None else format_money(v)


def _ms(value: Any) -> str:
    v = _float(value)
    return "–" if v is None else f"{v:,.0f} ms"


def _percent(value: Any) -> str:
    v = _float(value)
    return "–" if v is None else f"{v:.1%}"


def _hour(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _hour_label(moment: dt.datetime | None) -> str:
    return "?" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def _positions(stamps: Sequence[dt.datetime | None]) -> list[float]:
    """Seconds from the first hour (or an hour per step when a stamp is unreadable)."""
    if any(s is None for s in stamps):
        return [3600.0 * i for i in range(len(stamps))]
    first = stamps[0]
    assert first is not None
    return [(s - first).total_seconds() for s in stamps if s is not None]


def _nice(peak: float) -> float:
    """A round axis top at or above `peak` (1, 2 or 5 times a power of ten)."""
    if peak <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(peak))
    for step in (1, 2, 5, 10):
        if step * power >= peak:
            return step * power
    return 10 * power
