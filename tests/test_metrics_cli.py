"""`policyctl metrics import|show|export` as real processes on a real DuckDB state file."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from _design import DESIGN_CATALOG

from engine.analytics.importer import import_outcomes
from engine.analytics.schema import ensure_schema
from engine.language.loader import load_policy

NOW = time.time()


def iso(seconds_ago: float) -> str:
    """An ISO 8601 UTC timestamp `seconds_ago` before the tests started."""
    at = dt.datetime.fromtimestamp(NOW - seconds_ago, dt.UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def quantile_cont(values: list[float], q: float) -> float:
    """DuckDB's quantile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


DESIGN_SET = load_policy(DESIGN_CATALOG.parent / "design.policy")


class CLI:
    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        # ./policies: the design's policy set, whose models these tests name
        design = tmp_path / "policies"
        design.mkdir(parents=True, exist_ok=True)
        shutil.copy(DESIGN_CATALOG, design / "models.yaml")
        shutil.copy(DESIGN_CATALOG.parent / "design.policy", design / "default.policy")
        self.state = str(tmp_path / "state.duckdb")
        env = {k: v for k, v in os.environ.items() if k != "POLICYCTL_STATE"}
        env["HOME"] = str(tmp_path / "home")
        env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
        # the commands' clock is the one the records were stamped by: a window ("the last
        # 30m") then means the same whether this test runs 1 or 40 minutes into the suite
        env["POLICYCTL_NOW"] = repr(NOW)
        self.env = env

    def run(
        self, *args: str, stdin: str | None = None, state: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "engine", *args]
        if state:
            argv += ["--state", self.state]
        proc = subprocess.run(
            argv,
            cwd=self.cwd,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(self.state)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good(i: int, **extra: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "provider": "claude",
        "model": "claude-3-haiku",  # an alias
        "latency_ms": 100 + i,
        "success": True,
        "timestamp": NOW - 60,
    }
    record.update(extra)
    return record


# ---------------------------------------------------------------- import


def test_jsonl_import_reports_every_bad_row_by_line_and_keeps_the_good(
    cli: CLI, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "outcomes.jsonl",
        [
            good(1),  # 1
            good(2, model="llama-3"),  # 2 unknown model
            good(3, latency_ms=-5),  # 3 negative latency
            "",  # 4 blank: skipped, still counted as a line
            {"provider": "openai", "model": "gpt-4o", "latency_ms": 120},  # 5 missing success
            good(6, timestamp="yesterday"),  # 6 bad timestamp
            good(7, success="yes"),  # 7 bad boolean
            good(8, success="false", timestamp=iso(30)),  # 8 good: string boolean, ISO time
            "{not json",  # 9
            good(10, success=0, latency_ms="250.5", input_tokens=1000, output_tokens=10),  # 10
            good(11, latency_ms="fast"),  # 11 non-numeric latency
            good(12, provider="gemini", model="gemini-1.5-flash", success=1),  # 12 good, alias
        ],
    )
    proc = cli.run("metrics", "import", str(path))
    assert proc.returncode == 2
    assert proc.stdout == "imported 4 outcomes, rejected 7\n"
    assert proc.stderr.splitlines() == [
        f"{path}:2: unknown model `claude/llama-3`",
        f"{path}:3: latency_ms must be a number >= 0, got `-5`",
        f"{path}:5: missing field `success`",
        f"{path}:6: timestamp must be ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds,"
        " got `yesterday`",
        f"{path}:7: success must be true or false, got `yes`",
        f"{path}:9: invalid JSON",
        f"{path}:11: latency_ms must be a number >= 0, got `fast`",
    ]
    rows = cli.query(
        "SELECT provider, model, latency_ms, success, input_tokens, output_tokens, cost"
        " FROM outcomes ORDER BY latency_ms"
    )
    assert rows == [
        ("claude", "claude-3-haiku-20240307", 101.0, True, None, None, None),
        ("claude", "claude-3-haiku-20240307", 108.0, False, None, None, None),
        ("gemini", "gemini-1.5-flash-latest", 112.0, True, None, None, None),
        # cost from the catalog's prices when tokens are given: 1000 x $0.25 + 10 x $1.25 / 1M
        ("claude", "claude-3-haiku-20240307", 250.5, False, 1000, 10, pytest.approx(0.0002625)),
    ]
    (recorded,) = cli.query("SELECT epoch(recorded_at) FROM outcomes WHERE latency_ms = 108")[0]
    assert recorded == pytest.approx(NOW - 30, abs=0.01)


def test_a_timestamp_in_the_future_or_before_1970_is_a_bad_row(cli: CLI, tmp_path: Path) -> None:
    """As `POST /v1/outcomes` refuses them (`CLOCK_SKEW_S`, 5 minutes of skew allowed):
    a future outcome would sit in every window until its time came, skewing the figures.
    They were imported as good rows."""
    skew_s = 300
    path = write_jsonl(
        tmp_path / "outcomes.jsonl",
        [
            good(1, timestamp=NOW + skew_s - 1),  # 1 good: within the skew
            good(2, timestamp=NOW + skew_s + 60),  # 2 future, epoch seconds
            good(3, timestamp=iso(-86400)),  # 3 future, ISO 8601 (a day ahead)
            good(4, timestamp="1969-12-31T23:59:59Z"),  # 4 before 1970
            good(5, timestamp=-1),  # 5 before 1970, epoch seconds
            good(6, timestamp=0),  # 6 good: 1970 itself
        ],
    )
    proc = cli.run("metrics", "import", str(path))
    assert proc.returncode == 2
    assert proc.stdout == "imported 2 outcomes, rejected 4\n"
    ahead = " (at most 5 minutes ahead of this machine's clock)"
    assert proc.stderr.splitlines() == [
        f"{path}:2: timestamp is in the future, got `{NOW + skew_s + 60!r}`{ahead}",
        f"{path}:3: timestamp is in the future, got `{iso(-86400)}`{ahead}",
        f"{path}:4: timestamp is before 1970, got `1969-12-31T23:59:59Z`",
        f"{path}:5: timestamp is before 1970, got `-1`",
    ]
    assert sorted(cli.query("SELECT latency_ms FROM outcomes")) == [(101.0,), (106.0,)]


def test_csv_import_counts_the_header_as_line_1(cli: CLI, tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text(
        "provider,model,latency_ms,success,timestamp,cost,user\n"  # 1
        f"claude,claude-3-haiku,120,true,{iso(60)},0.001,alice\n"  # 2
        f"claude,claude-3-haiku,130,1,{NOW - 60},,\n"  # 3
        "openai,gpt-5,100,false,,,\n"  # 4 unknown model
        "\n"  # 5 blank
        "gemini,gemini-1.5-flash,-1,true,,,\n"  # 6 negative latency
        'openai,gpt-4o,90,0,,,"bob ""the builder"", jr"\n'  # 7 good, quoted
        "openai,gpt-4o,,true,,,\n"  # 8 missing latency
        "openai,gpt-4o,80,true,31/12/2024,,\n"  # 9 bad timestamp
        "openai,gpt-4o,80,maybe,,,\n"  # 10 bad boolean
        "openai,gpt-4o,80\n"  # 11 short row
        "openai,gpt-4o,70,false,,,\n",  # 12 good
        encoding="utf-8",
    )
    proc = cli.run("metrics", "import", str(path))
    assert proc.returncode == 2
    assert proc.stdout == "imported 4 outcomes, rejected 6\n"
    assert proc.stderr.splitlines() == [
        f"{path}:4: unknown model `openai/gpt-5` (did you mean `openai/gpt-4`?)",
        f"{path}:6: latency_ms must be a number >= 0, got `-1`",
        f"{path}:8: missing field `latency_ms`",
        f"{path}:9: timestamp must be ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds,"
        " got `31/12/2024`",
        f"{path}:10: success must be true or false, got `maybe`",
        f"{path}:11: expected 7 values (as in the header), found 3",
    ]
    rows = cli.query("SELECT model, latency_ms, success, cost, user_id FROM outcomes ORDER BY 2")
    assert rows == [
        ("gpt-4o", 70.0, False, None, None),
        ("gpt-4o", 90.0, False, None, 'bob "the builder", jr'),
        ("claude-3-haiku-20240307", 120.0, True, 0.001, "alice"),
        ("claude-3-haiku-20240307", 130.0, True, None, None),
    ]


def test_a_clean_import_exits_0_and_reports_json(cli: CLI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", [good(i) for i in range(3)])
    proc = cli.run("metrics", "import", str(path), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    report = json.loads(proc.stdout)
    assert report["imported"] == 3
    assert report["rejected"] == 0
    assert report["format"] == "jsonl"
    assert cli.query("SELECT count(*) FROM outcomes") == [(3,)]


def test_stdin_is_sniffed_and_lines_are_numbered(cli: CLI) -> None:
    text = "provider,model,latency_ms,success\nclaude,claude-3-haiku,10,true\nx,y,1,true\n"
    proc = cli.run("metrics", "import", "-", stdin=text)
    assert proc.returncode == 2
    assert proc.stdout == "imported 1 outcomes, rejected 1\n"
    assert proc.stderr == "<stdin>:3: unknown provider `x`\n"


def test_rejects_are_capped_at_50_lines(cli: CLI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [good(i, latency_ms=-1) for i in range(60)])
    proc = cli.run("metrics", "import", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 51
    assert lines[0] == f"{path}:1: latency_ms must be a number >= 0, got `-1`"
    assert lines[49].startswith(f"{path}:50: ")
    assert lines[50] == "… and 10 more"
    assert proc.stdout == "imported 0 outcomes, rejected 60\n"


def test_the_same_bad_line_twice_is_reported_at_both_lines(cli: CLI, tmp_path: Path) -> None:
    bad = json.dumps(good(0, success="nope"))
    path = write_jsonl(tmp_path / "twice.jsonl", [bad, good(1), good(2), bad])
    proc = cli.run("metrics", "import", str(path))
    assert [line.split(": ")[0] for line in proc.stderr.splitlines()] == [
        f"{path}:1",
        f"{path}:4",
    ]


def test_an_unreadable_file_imports_nothing(cli: CLI, tmp_path: Path) -> None:
    good_then_binary = tmp_path / "mixed.csv"
    good_then_binary.write_bytes(
        b"provider,model,latency_ms,success\nclaude,claude-3-haiku,10,true\n\xff\xfe\x00bad\n"
    )
    proc = cli.run("metrics", "import", str(good_then_binary))
    assert proc.returncode == 2
    assert proc.stderr == f"policyctl: error: cannot import `{good_then_binary}`: not UTF-8 text\n"
    no_header = tmp_path / "no-header.csv"
    no_header.write_text("claude,claude-3-haiku,10,true\n", encoding="utf-8")
    proc = cli.run("metrics", "import", str(no_header))
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        f"policyctl: error: {no_header}:1: the header lacks the required columns `provider`,"
        " `model`, `latency_ms`, `success`"
    )
    assert cli.query("SELECT count(*) FROM outcomes") == [(0,)]


def test_bad_rows_in_the_middle_of_a_large_file_keep_their_line_numbers(
    tmp_path: Path,
) -> None:
    """Big enough (~40 MB) for DuckDB to read it in several buffers and threads."""
    n = 500_000
    bad_lines = {2, 77_777, 199_999, 200_000, 333_333, n + 1}  # CSV: the header is line 1
    chunks = ["provider,model,latency_ms,success,timestamp,request_id,user\n"]
    for line in range(2, n + 2):
        latency = "-1" if line in bad_lines else str(line % 5000)
        chunks.append(f"gemini,gemini-1.5-flash,{latency},true,{NOW - 60},req-{line},u{line}\n")
    path = tmp_path / "large.csv"
    path.write_text("".join(chunks), encoding="utf-8")
    con = duckdb.connect(str(tmp_path / "large.duckdb"))
    ensure_schema(con)
    catalog = load_policy(DESIGN_CATALOG.parent / "design.policy").program.catalog
    report = import_outcomes(con, str(path), catalog, now_s=NOW)
    assert report.rejected == len(bad_lines)
    assert [line for line, _ in report.reasons] == sorted(bad_lines)
    assert report.imported == n - len(bad_lines)
    # the rows left out are exactly the bad lines' (each row's request id names its line)
    ids = {r for (r,) in con.execute("SELECT request_id FROM outcomes").fetchall()}
    assert len(ids) == report.imported
    assert {f"req-{line}" for line in range(2, n + 2)} - ids == {f"req-{b}" for b in bad_lines}
    con.close()


def test_many_distinct_bad_lines_are_all_reported_at_their_lines(tmp_path: Path) -> None:
    """More distinct bad lines than the numbered scan lists by hash (it joins them then)."""
    n = 6_000
    bad_lines = set(range(3, n + 2, 4))  # 1,500 bad lines, each different (its request id)
    chunks = ["provider,model,latency_ms,success,request_id\n"]
    for line in range(2, n + 2):
        model = "gpt-5" if line in bad_lines else "gpt-4o"
        chunks.append(f"openai,{model},{line},true,req-{line}\n")
    path = tmp_path / "many-bad.csv"
    path.write_text("".join(chunks), encoding="utf-8")
    con = duckdb.connect()
    ensure_schema(con)
    report = import_outcomes(
        con,
        str(path),
        load_policy(DESIGN_CATALOG.parent / "design.policy").program.catalog,
        now_s=NOW,
    )
    assert report.rejected == len(bad_lines) == 1_500
    assert [line for line, _ in report.reasons] == sorted(bad_lines)
    assert {reason for _, reason in report.reasons} == {
        "unknown model `openai/gpt-5` (did you mean `openai/gpt-4`?)"
    }
    assert report.imported == n - len(bad_lines)
    ids = {r for (r,) in con.execute("SELECT request_id FROM outcomes").fetchall()}
    assert {f"req-{line}" for line in range(2, n + 2)} - ids == {f"req-{b}" for b in bad_lines}
    con.close()


def test_an_import_leaves_the_connection_as_it_found_it(tmp_path: Path) -> None:
    """Settings put back, no helper function or temp table left; a second import works."""
    catalog = load_policy(DESIGN_CATALOG.parent / "design.policy").program.catalog
    con = duckdb.connect()
    ensure_schema(con)
    con.execute("SET preserve_insertion_order = true")
    tables_before = con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
    first = write_jsonl(tmp_path / "one.jsonl", [good(1), good(2, latency_ms=-1)])
    second = write_jsonl(tmp_path / "two.jsonl", [good(3, success="no"), good(4)])
    report = import_outcomes(con, str(first), catalog, now_s=NOW)
    assert report.reasons == [(2, "latency_ms must be a number >= 0, got `-1`")]
    report = import_outcomes(con, str(second), catalog, now_s=NOW)
    assert (report.imported, report.rejected) == (1, 1)
    assert report.reasons == [(1, "success must be true or false, got `no`")]
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (True,)
    assert con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall() == (
        tables_before
    )
    with pytest.raises(duckdb.Error):
        con.execute("SELECT _oi_reject('x')")
    assert con.execute("SELECT count(*) FROM outcomes").fetchone() == (2,)
    con.close()


# ---------------------------------------------------------------- show


def _mixed_outcomes(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    records: list[dict[str, Any]] = []
    by_model: dict[str, list[Any]] = {}
    models = [
        ("claude", "claude-3-haiku", "claude-3-haiku-20240307", 300),
        ("gemini", "gemini-1.5-flash-latest", "gemini-1.5-flash-latest", 137),
        ("openai", "gpt-4o", "gpt-4o", 50),
    ]
    for provider, given, canonical, count in models:
        for _ in range(count):
            latency = round(rng.lognormvariate(6.5, 0.6), 3)
            success = rng.random() < 0.9
            cost = round(rng.uniform(0.0001, 0.01), 6)
            records.append(
                {
                    "provider": provider,
                    "model": given,
                    "latency_ms": latency,
                    "success": success,
                    "cost": cost,
                    "timestamp": NOW - rng.uniform(10, 3000),
                }
            )
            by_model.setdefault(f"{provider}/{canonical}", []).append((latency, success, cost))
    rng.shuffle(records)
    return records, by_model


def test_show_reports_exact_percentiles_success_and_cost(cli: CLI, tmp_path: Path) -> None:
    records, by_model = _mixed_outcomes(random.Random(7))
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    assert cli.run("metrics", "import", str(path)).returncode == 0
    proc = cli.run("metrics", "show", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["window"] == "24h"
    assert [f"{m['provider']}/{m['model']}" for m in shown["models"]] == sorted(by_model)
    for m in shown["models"]:
        values = by_model[f"{m['provider']}/{m['model']}"]
        latencies = [v[0] for v in values]
        assert m["samples"] == len(values)
        assert m["p50_ms"] == pytest.approx(quantile_cont(latencies, 0.50), rel=1e-12)
        assert m["p95_ms"] == pytest.approx(quantile_cont(latencies, 0.95), rel=1e-12)
        assert m["p99_ms"] == pytest.approx(quantile_cont(latencies, 0.99), rel=1e-12)
        assert m["success_rate"] == pytest.approx(sum(v[1] for v in values) / len(values))
        assert m["avg_cost"] == pytest.approx(sum(v[2] for v in values) / len(values))

    table = cli.run("metrics", "show")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "PROVIDER", "MODEL", "SAMPLES", "P50", "P95", "P99", "SUCCESS", "AVG", "COST",
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["claude", "claude-3-haiku-20240307", "300"]


def test_show_filters_by_provider(cli: CLI, tmp_path: Path) -> None:
    records, _ = _mixed_outcomes(random.Random(11))
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    assert cli.run("metrics", "import", str(path)).returncode == 0
    proc = cli.run("metrics", "show", "--provider", "gemini", "--format", "json")
    models = json.loads(proc.stdout)["models"]
    assert [(m["provider"], m["model"], m["samples"]) for m in models] == [
        ("gemini", "gemini-1.5-flash-latest", 137)
    ]
    none = cli.run("metrics", "show", "--provider", "mistral")
    assert none.returncode == 0
    assert none.stdout.startswith("no outcomes for provider `mistral` in the last 24h")


def test_show_window_excludes_older_outcomes(cli: CLI, tmp_path: Path) -> None:
    recent = [good(i, latency_ms=100 + i, timestamp=iso(600)) for i in range(4)]  # 10 min ago
    older = [good(i, latency_ms=5000 + i, timestamp=NOW - 7200) for i in range(3)]  # 2 h ago
    ancient = [good(i, latency_ms=9000, timestamp=NOW - 3 * 86400) for i in range(2)]  # 3 d
    path = write_jsonl(tmp_path / "ages.jsonl", recent + older + ancient)
    assert cli.run("metrics", "import", str(path)).returncode == 0

    def samples(*flags: str) -> int:
        proc = cli.run("metrics", "show", "--format", "json", *flags)
        assert proc.returncode == 0, proc.stderr
        return sum(m["samples"] for m in json.loads(proc.stdout)["models"])

    assert samples("--window", "1h") == 4
    assert samples("--window", "30m") == 4
    assert samples() == 7  # 24h
    assert samples("--window", "7d") == 9
    only_recent = json.loads(
        cli.run("metrics", "show", "--window", "1h", "--format", "json").stdout
    )
    assert only_recent["models"][0]["p99_ms"] == pytest.approx(
        quantile_cont([100, 101, 102, 103], 0.99)
    )


def test_show_on_a_state_file_that_does_not_exist_creates_nothing(cli: CLI) -> None:
    proc = cli.run("metrics", "show")
    assert proc.returncode == 0
    assert proc.stdout.startswith("no outcomes in the last 24h")
    assert f"no state file at `{cli.state}` yet" in proc.stderr
    assert not Path(cli.state).exists()


@pytest.mark.parametrize("command", [("metrics", "export"), ("log", "export")])
def test_an_export_from_a_state_file_that_does_not_exist_says_so(
    cli: CLI, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A mistyped --state must not pass for an empty log: the export still writes its (empty)
    file, and stderr names the state file that was not there."""
    missing = tmp_path / "typo" / "stat.duckdb"
    out = tmp_path / "out.csv"
    proc = cli.run(*command, "--state", str(missing), "--output", str(out), state=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("exported 0 ")
    assert f"no state file at `{missing}` yet" in proc.stderr
    assert out.exists() and not missing.exists()


def test_the_default_state_is_in_the_xdg_state_directory(cli: CLI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "one.jsonl", [good(1)])
    proc = cli.run("metrics", "import", str(path), state=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "xdg-state" / "policyctl" / "state.duckdb").is_file()
    shown = cli.run("metrics", "show", "--format", "json", state=False)
    assert json.loads(shown.stdout)["models"][0]["samples"] == 1


# ---------------------------------------------------------------- export


def test_export_parquet_and_csv_read_back_and_reimport(cli: CLI, tmp_path: Path) -> None:
    records, _ = _mixed_outcomes(random.Random(3))
    records += [good(i, timestamp=NOW - 3 * 86400) for i in range(5)]  # outside 24h
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    assert cli.run("metrics", "import", str(path)).returncode == 0
    total = len(records)

    parquet = tmp_path / "out.parquet"
    proc = cli.run("metrics", "export", "--output", str(parquet))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"exported {total} outcomes to {parquet} (parquet)\n"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{parquet}')").fetchall() == [(total,)]

    csv_file = tmp_path / "day.data"
    proc = cli.run(
        "metrics", "export", "--output", str(csv_file), "--format", "csv", "--window", "24h"
    )
    assert proc.returncode == 0, proc.stderr
    back = duckdb.sql(f"SELECT count(*), count(DISTINCT model) FROM read_csv('{csv_file}')")
    assert back.fetchall() == [(total - 5, 3)]

    only = tmp_path / "openai.csv"
    assert cli.run("metrics", "export", "-o", str(only), "--provider", "openai").returncode == 0
    assert duckdb.sql(f"SELECT DISTINCT provider FROM read_csv('{only}')").fetchall() == [
        ("openai",)
    ]

    # what `export` writes, `import` reads (recorded_at and user_id are accepted)
    other = CLI(tmp_path / "other")
    proc = other.run("metrics", "import", str(parquet.with_suffix(".csv")), state=True)
    assert proc.returncode == 2  # not written yet: a clear error
    assert cli.run("metrics", "export", "-o", str(parquet.with_suffix(".csv"))).returncode == 0
    proc = other.run("metrics", "import", str(parquet.with_suffix(".csv")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"imported {total} outcomes, rejected 0\n"
    mine = cli.query("SELECT * FROM outcomes ORDER BY recorded_at, latency_ms")
    theirs = other.query("SELECT * FROM outcomes ORDER BY recorded_at, latency_ms")
    assert theirs == mine


def test_export_writes_outcomes_oldest_first(cli: CLI, tmp_path: Path) -> None:
    records, _ = _mixed_outcomes(random.Random(5))  # shuffled: not in time order
    path = write_jsonl(tmp_path / "shuffled.jsonl", records)
    assert cli.run("metrics", "import", str(path)).returncode == 0
    out = tmp_path / "out.csv"
    assert cli.run("metrics", "export", "-o", str(out)).returncode == 0
    times = [t for (t,) in duckdb.sql(f"SELECT recorded_at FROM read_csv('{out}')").fetchall()]
    assert len(times) == len(records)
    assert times == sorted(times)


# ---------------------------------------------------------------- routing sees imports


def test_eval_routes_away_from_a_model_made_slow_by_imported_outcomes(
    cli: CLI, tmp_path: Path
) -> None:
    policy = tmp_path / "latency.policy"
    policy.write_text(
        f"catalog {json.dumps(str(DESIGN_CATALOG))}\n"
        "defaults {\n    strategy latency\n    min_samples 100\n}\n\nlimit global 1M per 1m\n",
        encoding="utf-8",
    )
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"id": "r1", "prompt": "hello"}), encoding="utf-8")

    def route() -> dict[str, Any]:
        proc = cli.run("eval", "--policy", str(policy), "--format", "json", str(request))
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    before = route()
    assert (before["provider"], before["model"]) == ("gemini", "gemini-1.5-flash-latest")
    slow = [
        {"provider": "gemini", "model": "gemini-1.5-flash-latest", "latency_ms": 9000,
         "success": True, "timestamp": NOW - 120}
        for _ in range(200)
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "slow.jsonl", slow)
    assert cli.run("metrics", "import", str(path)).returncode == 0
    after = route()
    assert (after["provider"], after["model"]) != ("gemini", "gemini-1.5-flash-latest")
    assert after["estimated_latency_ms"] < 9000


# ---------------------------------------------------------------- errors and help


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("metrics", "import", "missing.jsonl"), "cannot read `missing.jsonl`: no such file"),
        (("metrics", "show", "--window", "soon"),
         "invalid --window `soon`: use a duration such as 30m, 1h, 24h or 7d"),
        (("metrics", "show", "--window", "0h"),
         "invalid --window `0h`: a window is longer than zero"),
        (("metrics", "export", "--output", "out.xlsx"),
         "cannot tell the format of `out.xlsx` from its extension: use --format parquet or"
         " --format csv (or name it .parquet or .csv)"),
        (("metrics", "export", "--output", "no/such/dir/out.csv"),
         "cannot write `no/such/dir/out.csv`: no such directory `no/such/dir`"),
        # (it wrote a file named `-` and said `exported 0 outcomes to -`)
        (("metrics", "export", "--output", "-", "--format", "csv"),
         "`--output -`: the export is written to a file, not to standard output"),
        (("log", "export", "-o", "-", "--format", "csv"),
         "`--output -`: the export is written to a file, not to standard output"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_exit_2(cli: CLI, args: tuple[str, ...], message: str) -> None:
    proc = cli.run(*args)
    assert proc.returncode == 2
    assert proc.stderr == f"policyctl: error: {message}\n"


def test_a_memory_state_is_refused(cli: CLI) -> None:
    proc = cli.run("metrics", "show", "--state", "memory://", state=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("policyctl: error: the outcome log lives in a DuckDB state")


def test_unknown_export_format_is_an_argparse_error(cli: CLI) -> None:
    proc = cli.run("metrics", "export", "--output", "x.csv", "--format", "xlsx")
    assert proc.returncode == 2
    assert "invalid choice: 'xlsx'" in proc.stderr


@pytest.mark.parametrize("action", ["import", "show", "export"])
def test_every_action_has_help_with_an_example(cli: CLI, action: str) -> None:
    proc = cli.run("metrics", action, "--help", state=False)
    assert proc.returncode == 0
    assert "examples:" in proc.stdout
    assert f"policyctl metrics {action}" in proc.stdout
