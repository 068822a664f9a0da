"""`policyctl simulate --plot`: every row of the report distinguishable in the figure
(`engine.simulate.report.figure`), read from the matplotlib Figure and its SVG, not pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# matplotlib (the `plot` extra) is in the test extra; `figure` draws on a Figure of its own
# (no pyplot), which saves PNG through Agg and SVG through the SVG backend
from engine.simulate import load_scenario, simulate
from engine.simulate.report import DODGE_PT, Report, figure, styles
from engine.simulate.world import START

ROOT = Path(__file__).resolve().parent.parent
OUTAGE = ROOT / "examples/simulations/outage.yaml"
DESIGN = ROOT / "examples/simulations/design.yaml"


@pytest.fixture(scope="module")
def outage() -> Report:
    return simulate(load_scenario(str(OUTAGE)))


@pytest.fixture(scope="module")
def outage_figure(outage: Report) -> Any:
    return figure(outage)


def _series(ax: Any, count: int) -> list[Any]:
    """The panel's first `count` lines: one per row, in the rows' order."""
    lines = ax.get_lines()[:count]
    assert len(lines) == count
    return lines


def test_every_row_has_its_own_line_and_look_in_every_panel(
    outage: Report, outage_figure: Any
) -> None:
    labels = [s.label for s in styles(outage.runs)]
    assert len(labels) == len(outage.runs) == 9
    assert "always sonnet (baseline)" in labels and "failover" in labels
    axes = outage_figure.get_axes()
    assert len(axes) == 3  # latency, cost, failures
    for ax in axes:
        lines = _series(ax, len(labels))
        assert [line.get_label() for line in lines] == labels
        looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
        assert len(looks) == len(labels)  # unique (colour, line style, marker) per row
    [legend] = outage_figure.legends
    assert [t.get_text() for t in legend.get_texts()] == labels


def _display(ax: Any, line: Any) -> list[tuple[float, float]]:
    xy = line.get_xydata()
    return [tuple(p) for p in line.get_transform().transform(xy)]


def test_rows_whose_lines_coincide_are_drawn_apart_and_named(
    outage: Report, outage_figure: Any
) -> None:
    """`always sonnet` and `failover` route every request to Sonnet: the same data. Drawn
    as they are they hide each other (the issue's complaint); here one is moved by
    DODGE_PT points on the page, the data left as it is, and the panel says so."""
    labels = [s.label for s in styles(outage.runs)]
    ax = outage_figure.get_axes()[0]
    lines = _series(ax, len(labels))
    sonnet = lines[labels.index("always sonnet (baseline)")]
    failover = lines[labels.index("failover")]
    assert list(sonnet.get_ydata()) == list(failover.get_ydata())  # the same data
    a, b = _display(ax, sonnet), _display(ax, failover)
    shift = DODGE_PT * outage_figure.dpi / 72
    assert all(bx == pytest.approx(ax_) for (ax_, _), (bx, _) in zip(a, b, strict=True))
    assert all(by - ay == pytest.approx(shift) for (_, ay), (_, by) in zip(a, b, strict=True))
    # markers do not sit on one another: each row starts its markers at its own block
    assert sonnet.get_markevery() != failover.get_markevery()
    notes = [t.get_text() for t in ax.texts if "coincide" in t.get_text()]
    assert len(notes) == 1
    assert "always sonnet (baseline) = failover" in notes[0]


def test_the_outage_has_a_failure_panel_with_the_outage_in_it(
    outage: Report, outage_figure: Any
) -> None:
    failures = outage_figure.get_axes()[2]
    assert failures.get_ylabel().startswith("failed calls")
    labels = [s.label for s in styles(outage.runs)]
    lines = _series(failures, len(labels))
    assert all(0.0 <= y <= 1.0 for line in lines for y in line.get_ydata())
    [flash] = [p for p in outage.scenario.providers.values() if p.outage is not None]
    at = [a.at - START for a in outage.arrivals]
    lo, hi = at[flash.outage.from_request], at[flash.outage.to_request - 1]
    latency = lines[labels.index("latency")]  # routes to Flash until its failures come back
    during = [y for x, y in zip(latency.get_xdata(), latency.get_ydata(), strict=True)
              if lo <= x <= hi]  # fmt: skip
    before = [y for x, y in zip(latency.get_xdata(), latency.get_ydata(), strict=True) if x < lo]
    assert max(during) > 0.1  # the outage's failures, at its start
    assert max(during) > 2 * max(before)
    # the figure's failure rates are the run's own: failed / served over the whole run
    run = outage.runs[labels.index("latency")]
    served = sum(1 for c in run.chosen if c >= 0)
    failed = sum(1 for c, ok in zip(run.chosen, run.ok, strict=True) if c >= 0 and not ok)
    assert failed == run.summary()["failures"] > 0
    assert 0 < failed / served < max(during)


def test_without_an_outage_there_are_two_panels() -> None:
    fig = figure(simulate(load_scenario(str(DESIGN), requests=600)))
    axes = fig.get_axes()
    assert len(axes) == 2
    assert axes[1].get_yscale() == "log"


def test_the_svg_names_every_row(tmp_path: Path, outage: Report) -> None:
    """Through the command: `--plot out.svg` writes an SVG whose legend names every row."""
    out = tmp_path / "outage.svg"
    done = subprocess.run(
        [sys.executable, "-m", "engine", "simulate", str(OUTAGE), "--plot", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    svg = out.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml")
    for look in styles(outage.runs):
        assert f"<!-- {look.label} -->" in svg  # matplotlib names each text it draws
    assert "<!-- failed calls, % of served (of 50) -->" in svg
