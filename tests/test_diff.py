"""`policyctl diff`: statement changes between two policy sets, and the example requests
that show them, each checked by deciding it again with `policyctl eval`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _design import CATALOG_LINE, DESIGN_CATALOG

from engine.language.formatter import format_text
from engine.language.loader import compile_sources
from engine.policydiff import PolicySet, diff
from engine.policydiff.report import as_json, text

ROOT = Path(__file__).resolve().parent.parent
BEFORE = ROOT / "examples" / "diff" / "before"
AFTER = ROOT / "examples" / "diff" / "after"


def _set(policy: str, name: str = "p.policy") -> PolicySet:
    loaded = compile_sources([(name, policy)])
    return PolicySet(loaded.files, loaded.program)


def _diff(old: str, new: str) -> list:
    return diff(_set(CATALOG_LINE + old, "old.policy"), _set(CATALOG_LINE + new, "new.policy"))


def _policyctl(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, env=env, input=stdin,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _decided(policy: Path, request: dict) -> str:
    """What `policyctl eval --dry-run` decides, written as `diff` writes an outcome."""
    done = _policyctl(
        "eval", "--dry-run", "--state", "memory://", "--policy", str(policy), "-",
        stdin=json.dumps({**request, "id": "diff-example"}),
    )  # fmt: skip
    d = json.loads(done.stdout)
    if not d["allowed"]:
        route = f"route {d['route']}: " if d["route"] else ""
        return f"{route}denied: {d['reason']}"
    return f"route {d['route']} → {d['provider']}/{d['model']}"


def test_the_shipped_example_and_every_example_request_decides_as_shown() -> None:
    done = _policyctl("diff", "--format", "json", str(BEFORE), str(AFTER))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    kinds = [(c["what"], c["kind"], c["name"]) for c in report["changes"]]
    assert kinds == [
        ("deny", "added", '"suspended"'),
        ("route", "changed", "eu"),
        ("route", "removed", "batch"),
        ("limit", "changed", "user (requests)"),
        ("limit", "added", "global (requests)"),
        ("limit", "removed", "ip (requests)"),
    ]
    assert report["changed"] == 6
    eu = report["changes"][1]
    assert eu["details"] == [
        'when: request.region == "eu" → request.region in ["eu", "uk"]',
        "moved: now tried before `vision`",
    ]
    assert report["changes"][3]["details"] == ["100 per 1m burst 10 → 50 per 1m burst 10"]
    shown = [c for c in report["changes"] if c["example"] is not None]
    assert [c["name"] for c in shown] == ['"suspended"', "eu", "batch"]
    for change in shown:  # the example is what `eval` decides under each set
        example = change["example"]
        assert _decided(BEFORE, example["request"]) == example["before"]
        assert _decided(AFTER, example["request"]) == example["after"]
        assert example["before"] != example["after"]
    assert shown[0]["example"]["request"] == {"user": "mallory"}
    assert shown[1]["example"]["request"] == {"region": "uk"}  # inside the new `when` only


def test_a_set_against_itself_and_against_its_formatted_text_has_no_changes() -> None:
    messy = """
    # a comment
    route   eu when request.region ==   "eu"   {  strategy cost
        prefer claude  # inline
    }
    limit user 100   per 1m
    """
    old = _set(CATALOG_LINE + messy, "old.policy")
    new = _set(format_text(CATALOG_LINE + messy, "new.policy"), "new.policy")
    assert diff(old, new) == []
    assert text(diff(old, old)) == "no changes"
    assert as_json([]) == {"changed": 0, "changes": []}


def test_a_moved_route_and_the_request_that_now_goes_elsewhere() -> None:
    routes = {
        "vision": "route vision when request.requires_vision { strategy latency }\n",
        "eu": 'route eu when request.region == "eu" { strategy cost\n prefer claude }\n',
        "tools": "route tools when request.requires_tools { strategy cost }\n",
    }
    old = routes["vision"] + routes["eu"] + routes["tools"]
    new = routes["eu"] + routes["vision"] + routes["tools"]
    changes = _diff(old, new)
    assert [(c.what, c.kind, c.name) for c in changes] == [("route", "moved", "eu")]
    (moved,) = changes
    assert moved.details == ("moved: now tried before `vision`",)
    assert moved.example is not None
    request = moved.example.request
    assert request.get("region") == "eu" and request.get("requires_vision") is True
    assert moved.example.old.startswith("route vision → ")
    assert moved.example.new.startswith("route eu → claude/")


def test_route_items_limits_and_rules() -> None:
    old = (
        "route r when request.stream { strategy cost\n prefer openai }\n"
        "limit user 100 per 1m\nlimit user 5000 per 1d\n"
        'limit user "vip" 1000 per 1m\n'
        'require model.regions contains "eu" when request.region == "eu"\n'
    )
    new = (
        'deny "no streams for bob" when request.user == "bob" and request.stream\n'
        "route r when request.stream { strategy cost\n prefer claude }\n"
        "limit user 100 per 1m\nlimit user 4000 per 1d\n"
        "limit user tokens 20000 per 1m\n"
    )
    changes = _diff(old, new)
    got = {(c.what, c.kind, c.name): c for c in changes}
    assert set(got) == {
        ("deny", "added", '"no streams for bob"'),
        ("require", "removed", 'model.regions contains "eu" when request.region == "eu"'),
        ("route", "changed", "r"),
        ("limit", "changed", "user (requests)"),
        ("limit", "added", "user (tokens)"),
        ("limit", "removed", 'user "vip" (requests)'),
    }
    assert got["route", "changed", "r"].details == ("- prefer openai", "+ prefer claude")
    assert got["limit", "changed", "user (requests)"].details == ("5000 per 1d → 4000 per 1d",)
    deny = got["deny", "added", '"no streams for bob"'].example
    assert deny is not None and deny.request == {"user": "bob", "stream": True}
    assert deny.new.endswith(": no streams for bob")
    # the preference shows on a streaming request: another provider, the same route
    route = got["route", "changed", "r"].example
    assert route is not None and route.request.get("stream") is True
    assert route.old.startswith("route r → openai/")
    assert route.new.startswith("route r → claude/")
    # limits are compared as text: no example is claimed
    assert got["limit", "added", "user (tokens)"].example is None


def test_defaults_and_catalog_changes_show_on_an_unchanged_route(tmp_path: Path) -> None:
    # the design catalog with one price cut: gpt-3.5-turbo becomes the cheapest
    cheaper = tmp_path / "models.yaml"
    design = DESIGN_CATALOG.read_text()
    at = design.index("- id: gpt-3.5-turbo")
    cheaper.write_text(
        design[:at]
        + design[at:].replace(
            "pricing: {input: 0.50, output: 1.50}", "pricing: {input: 0.01, output: 0.01}", 1
        )
    )
    assert cheaper.read_text() != DESIGN_CATALOG.read_text()
    policy = "defaults { strategy cost }\n"
    old = _set(CATALOG_LINE + policy, "old.policy")
    new = _set(f'catalog "{cheaper.as_posix()}"\n' + policy, "new.policy")
    (change,) = diff(old, new)
    assert (change.what, change.kind) == ("catalog", "changed")
    assert change.name == "0 added, 0 removed, 1 changed"
    assert change.details[0].startswith("~ openai/gpt-3.5-turbo")
    assert change.example is not None
    assert change.example.new == "route default → openai/gpt-3.5-turbo"
    assert change.example.old != change.example.new

    (defaults,) = _diff("defaults { strategy cost }\n", "defaults { strategy failover }\n")
    assert defaults.details == ("- strategy cost", "+ strategy failover")
    assert defaults.example is not None
    assert defaults.example.old == "route default → gemini/gemini-1.5-flash-latest"
    assert defaults.example.new == "route default → claude/claude-3-5-sonnet-20241022"
    # the design catalog's cheapest model is its fastest too: no request shows this one
    (latency,) = _diff("defaults { strategy cost }\n", "defaults { strategy latency }\n")
    assert latency.details == ("- strategy cost", "+ strategy latency")
    assert latency.example is None
    # a setting that only measurements would show: said, with no example claimed
    (samples,) = _diff("defaults { min_samples 20 }\n", "defaults { min_samples 30 }\n")
    assert samples.details == ("- min_samples 20", "+ min_samples 30") and samples.example is None


def test_a_broken_set_exits_2_with_its_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.policy"
    broken.write_text("route r {\n    strategy fastest\n}\n")
    done = _policyctl("diff", str(BEFORE), str(broken))
    assert done.returncode == 2
    assert f"{broken}:2:14: error[" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_no_examples_flag(fmt: str) -> None:
    done = _policyctl("diff", "--no-examples", "--format", fmt, str(BEFORE), str(AFTER))
    assert done.returncode == 0
    if fmt == "json":
        assert all(c["example"] is None for c in json.loads(done.stdout)["changes"])
    else:
        assert "for example" not in done.stdout
        assert done.stdout.strip().endswith(
            "6 changes (deny: 1 added; route: 1 changed, 1 removed; "
            "limit: 1 changed, 1 added, 1 removed)"
        )


def test_a_set_against_its_formatted_text_ignores_comments_parentheses_and_quotes(
    tmp_path: Path,
) -> None:
    """Comments inside an item or a condition, parentheses the meaning does not need, quotes
    a name does not need and `1 failures` are how a policy is written, not what it says:
    `fmt` changes them, `diff` sees no change (it compared the source text)."""
    messy = CATALOG_LINE + (
        "defaults {\n"
        "    fallback claude,  # first\n"
        "        gemini\n"
        "    cooldown after 1 failures for 30s\n"
        "}\n"
        'deny "no"  when (request.user == "mallory")\n'
        "require (model.context_window >= 8k) when ((request.stream))\n"
        "route b when request.metadata.x not  # between the words\n"
        '    in ["a", "b"] {\n'
        '    prefer "gemini"/"gemini-1.5-flash"  weight 2\n'
        "    require (model.pricing.input <= $3)\n"
        "}\n"
        "route d when (((request.stream))) {\n"
        "    split by request.user { 50%: route e  # half\n"
        "        50%: route f }\n"
        "}\n"
        "route e {}\n"
        "route f {}\n"
        "limit user 100 per 1m when (request.stream)  # a limit\n"
    )
    old = tmp_path / "old.policy"
    old.write_text(messy)
    new = tmp_path / "new.policy"
    new.write_text(format_text(old.read_text(), "new.policy"))
    assert new.read_text() != old.read_text()
    done = _policyctl("diff", str(old), str(new))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "no changes\n"


def test_in_flight_shadow_and_waiting_limits_are_compared(tmp_path: Path) -> None:
    """A `concurrent` limit has no window (diff crashed on it); `shadow`, `wait up to` and
    `lease` are terms of a limit like its amount (enforcing a shadow limit was no change)."""
    old = tmp_path / "old.policy"
    old.write_text(
        'limit model "openai/gpt-4o" concurrent 8 lease 5m\n'
        "limit user concurrent 2\n"
        "shadow limit user 50 per 1m\n"
        "limit ip 5 per 1m wait up to 5s\n"
    )
    new = tmp_path / "new.policy"
    new.write_text(
        'limit model "openai/gpt-4o" concurrent 8 lease 10m\n'
        "limit user 50 per 1m\n"
        "limit ip 5 per 1m\n"
    )
    done = _policyctl("diff", "--format", "json", str(old), str(new))
    assert done.returncode == 0, done.stderr
    got = {(c["kind"], c["name"]): c["details"] for c in json.loads(done.stdout)["changes"]}
    assert got == {
        ("changed", 'model "openai/gpt-4o" (concurrent)'): ["8 lease 5m → 8 lease 10m"],
        ("removed", "user (concurrent)"): ["2"],
        ("changed", "user (requests)"): ["shadow 50 per 1m → 50 per 1m"],
        ("changed", "ip (requests)"): ["5 per 1m wait up to 5s → 5 per 1m"],
    }
    assert _policyctl("diff", str(old), str(old)).stdout == "no changes\n"


def test_alerts_are_compared_by_name(tmp_path: Path) -> None:
    """An alert is a statement like the others: a changed threshold, a new alert and a
    removed one are changes (diff said 'no changes'); its layout is not."""
    old = tmp_path / "old.policy"
    old.write_text(
        'alert "spend" when spend > $50 per 1h\nalert "errors" when error_rate > 5% over 10m\n'
    )
    new = tmp_path / "new.policy"
    new.write_text(
        'alert "spend"  when spend > $500 per 1h  # finance\nalert "slow" when p95 > 3s\n'
    )
    done = _policyctl("diff", str(old), str(new))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f'~ alert "spend"  ({old}:1:1 → {new}:1:1)\n'
        "    when spend > $50 per 1h → when spend > $500 per 1h\n"
        f'+ alert "slow"  ({new}:2:1)\n'
        "    when p95 > 3s\n"
        f'- alert "errors"  ({old}:2:1)\n'
        "    when error_rate > 5% over 10m\n"
        "3 changes (alert: 1 changed, 1 added, 1 removed)\n"
    )
    formatted = tmp_path / "formatted.policy"
    formatted.write_text(format_text(new.read_text()))
    assert _policyctl("diff", str(new), str(formatted)).stdout == "no changes\n"
