"""Classifier plugins (`request.features.NAME`, engine/wire/plugins.py, docs/features.md).

In-process: the registry is given real `importlib.metadata.EntryPoint`s (the discovery
function's output) naming real modules written to a temporary directory, which the
registry imports as it would an installed package's. Failing, slow (an injected clock) and
wrong-type plugins give their fallback and a counted error, never a failed decision.
Plugins whose test is not about time have a 10 s budget (a loaded machine can hold a worker
thread past the 50 ms default); `slow` runs inline, judged by the injected clock alone;
`hang` times out on the real clock.

Through the real entry-point mechanism: a tiny distribution with
`[project.entry-points."policyctl.features"]` is built and `pip install`ed into a fresh
venv (one per session, slow), and `policyctl check` / `eval` run there in a subprocess. The
venv borrows policyctl's dependencies and this checkout by a `.pth` line (nothing is
downloaded); the plugin itself is installed by pip and found only through its entry
points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.loader import compile_sources
from engine.routing.evaluator import evaluate
from engine.routing.request import env_of
from engine.wire.plugins import (
    GROUP,
    Broken,
    FeatureDeclarationError,
    Plugin,
    Registry,
    feature,
    installed,
    using,
)

ROOT = Path(__file__).resolve().parent.parent

PLUGINS = '''
from engine.features import RequestView, feature

CALLS = []


@feature(type=bool, timeout_ms=10_000, fallback=False)
def legal(request: RequestView) -> bool:
    """The last message reads like a legal question."""
    CALLS.append("legal")
    return "contract" in request.last_text.lower()


@feature(type=str, timeout_ms=10_000, fallback="general")
def topic(request: RequestView) -> str:
    """A coarse topic from the last message."""
    text = request.last_text.lower()
    return "code" if request.text("code") else "law" if "contract" in text else "general"


@feature(type=float, timeout_ms=10_000, fallback=0.0)
def score(request: RequestView) -> float:
    """An int is a float's value too."""
    return len(request.turns)


@feature(type=int, timeout_ms=10_000, fallback=-1)
def failing(request: RequestView) -> int:
    raise RuntimeError("the model is not loaded")


@feature(type=int, timeout_ms=10_000, fallback=7)
def wrong(request: RequestView) -> int:
    return "seven"


@feature(type=bool, timeout_ms=5, fallback=False, inline=True)
def slow(request: RequestView) -> bool:
    return True


@feature(type=int, timeout_ms=10_000, fallback=0)
def peek(request: RequestView) -> int:
    """What a plugin sees: the fields are read-only."""
    fields = request.fields
    assert "conversation" not in fields and "wire" not in fields
    try:
        fields["model"] = "x"  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("fields are writable")
    try:
        fields["metadata"]["team"] = "x"  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("metadata is writable")
    assert isinstance(fields["tags"], tuple)
    return int(fields["max_tokens"] or 0) + len(request.system_text)


def undecorated(request: RequestView) -> bool:
    return True


import threading

GATE = threading.Event()  # `hang` waits for it (a test sets it: the plugin recovers)
STARTED = []


@feature(type=bool, timeout_ms=20, fallback=False)
def hang(request: RequestView) -> bool:
    """Hangs until the test lets it go."""
    STARTED.append(1)
    GATE.wait(60)
    return True


@feature(type=str, timeout_ms=10_000, fallback="")
def thread(request: RequestView) -> str:
    return threading.current_thread().name


@feature(type=str, fallback="", inline=True)
def thread_inline(request: RequestView) -> str:
    return threading.current_thread().name
'''

POLICY = """
route law when request.features.legal {
    prefer openai/gpt-4o
}

route rest {
    prefer openai/gpt-4o-mini
}
"""

LEGAL = {"messages": [{"role": "user", "content": "Please review this contract."}]}
PLAIN = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


class StepClock:
    """A clock that moves `step` ns per reading: a call takes `step` ns."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.now = 0

    def __call__(self) -> int:
        self.now += self.step
        return self.now


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh module of plugins, importable as an installed one would be."""
    name = f"plugins_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _points(module: str, *names: str) -> list[EntryPoint]:
    return [EntryPoint(n, f"{module}:{n}", GROUP) for n in names]


def _registry(module: str, *names: str, clock: Any = None) -> Registry:
    points = _points(module, *names)
    return Registry(points) if clock is None else Registry(points, clock=clock)


def _compile(registry: Registry, text: str) -> Any:
    with using(registry):
        return compile_sources([("p.policy", text)]).program


def _only(registry: Registry, name: str) -> Plugin:
    found = registry.get(name)
    assert isinstance(found, Plugin), found
    return found


# ------------------------------------------------------------------ typing


def test_a_plugin_routes_by_its_value_and_runs_once_per_request(module: str) -> None:
    registry = _registry(module, "legal")
    program = _compile(registry, POLICY)
    calls = sys.modules[module].CALLS
    env = env_of(LEGAL)
    assert evaluate(program, env).route == "law"
    evaluate(program, env, explain=True)  # the same request again: the value is kept
    assert calls == ["legal"]
    assert evaluate(program, env_of(PLAIN)).route == "rest"
    assert calls == ["legal", "legal"]
    assert _only(registry, "legal").stats.calls == 2


def test_a_policy_that_reads_no_plugin_runs_none(module: str) -> None:
    registry = _registry(module, "legal")
    program = _compile(registry, "route rest {\n    prefer openai/gpt-4o-mini\n}\n")
    assert program.plugins == ()
    evaluate(program, env_of(LEGAL), explain=True)
    assert sys.modules.get(module) is None  # not even imported


def test_a_plugin_not_reached_is_not_run(module: str) -> None:
    registry = _registry(module, "legal")
    text = 'route first when request.model == "gpt-4o" {\n}\n' + POLICY
    program = _compile(registry, text)
    evaluate(program, env_of({**LEGAL, "model": "gpt-4o"}))
    assert sys.modules[module].CALLS == []


@pytest.mark.parametrize(
    ("condition", "ok"),
    [
        ('request.features.topic == "law"', True),
        ("request.features.topic == true", False),
        ("request.features.score > 1.5", True),
        ('request.features.score == "high"', False),
        ("request.features.legal and request.text.code", True),
        ("request.features.legal > 2", False),
    ],
)
def test_the_checker_types_a_plugin_from_its_registration(
    module: str, condition: str, ok: bool
) -> None:
    registry = _registry(module, "legal", "topic", "score")
    text = f"route r when {condition} {{\n    prefer openai/gpt-4o\n}}\n"
    if ok:
        _compile(registry, text)
        return
    with pytest.raises(PolicyError) as err:
        _compile(registry, text)
    assert [d.code for d in err.value.diagnostics] == ["E0333"]


def test_an_unknown_plugin_names_the_registered_ones(module: str) -> None:
    registry = _registry(module, "legal", "topic")
    with pytest.raises(PolicyError) as err:
        _compile(registry, "route r when request.features.legl {\n}\n")
    (found,) = err.value.diagnostics
    assert (found.code, found.help) == ("E0293", "did you mean `request.features.legal`?")
    with pytest.raises(PolicyError) as err:
        _compile(registry, "route r when request.features.weather {\n}\n")
    (found,) = err.value.diagnostics
    assert found.help == "registered plugins: `legal`, `topic`"


def test_a_plugin_that_fails_to_import_is_an_error_only_where_it_is_read(module: str) -> None:
    points = [
        EntryPoint("legal", f"{module}:legal", GROUP),
        EntryPoint("gone", "no_such_module_anywhere:f", GROUP),
        EntryPoint("plain", f"{module}:undecorated", GROUP),
    ]
    registry = Registry(points)
    _compile(registry, POLICY)  # reads `legal` only: loads
    with pytest.raises(PolicyError) as err:
        _compile(registry, POLICY.replace("legal", "gone"))
    (found,) = err.value.diagnostics
    assert found.code == "E0294"
    assert "`gone = no_such_module_anywhere:f`" in found.message
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in found.message
    with pytest.raises(PolicyError) as err:
        _compile(registry, POLICY.replace("legal", "plain"))
    assert "decorate it with `@feature(type=…)`" in err.value.diagnostics[0].message
    assert isinstance(registry.get("gone"), Broken)


def test_an_unknown_field_names_the_registered_plugins(module: str) -> None:
    """E0324's help (pinned): `request.<plugin>` is read as `request.features.<plugin>`,
    and the field list ends with `features.<name>` and the registered plugins."""
    registry = _registry(module, "legal", "topic")
    text = 'route a when request.legal {\n}\nroute b when request.country == "de" {\n}\n'
    with pytest.raises(PolicyError) as err:
        _compile(registry, text)
    assert str(err.value) == (
        "p.policy:1:14: error[E0324]: unknown field `request.legal`\n"
        "  |\n"
        "1 | route a when request.legal {\n"
        "  |              ^^^^^^^^^^^^^\n"
        "  = help: did you mean `request.features.legal`?\n"
        "\n"
        "p.policy:3:14: error[E0324]: unknown field `request.country`\n"
        "  |\n"
        '3 | route b when request.country == "de" {\n'
        "  |              ^^^^^^^^^^^^^^^\n"
        "  = help: `request` fields: `id`, `user`, `ip`, `model`, `prompt`, `input_tokens`,"
        " `max_tokens`, `cached_tokens`, `images`, `requires_vision`, `requires_tools`,"
        " `requires_json`, `requires_json_schema`, `requires_pdf`, `requires_audio`,"
        " `requires_reasoning`, `stream`, `max_cost`, `max_latency`, `max_latency_ms`,"
        " `min_quality`, `region`, `priority`, `tags`, `format`, `metadata`, `text.<feature>`,"
        " `complexity`, `features.<name>`"
        " (a classifier plugin: `legal`, `topic`)\n"
        "\n"
        "2 errors occurred"
    )


def test_two_packages_registering_one_name_differently_is_broken(module: str) -> None:
    points = [
        EntryPoint("legal", f"{module}:legal", GROUP),
        EntryPoint("legal", f"{module}:topic", GROUP),
    ]
    found = Registry(points).get("legal")
    assert isinstance(found, Broken) and "registered twice" in found.error


@pytest.mark.parametrize(
    "declare",
    [
        lambda: feature(type=list),  # type: ignore[arg-type]
        lambda: feature(type=bool, fallback=1),
        lambda: feature(type=int, fallback=True),
        lambda: feature(type=str, timeout_ms=0),
        lambda: feature(type=str, timeout_ms=True),
    ],
)
def test_a_declaration_it_cannot_take_is_refused_at_import(declare: Any) -> None:
    with pytest.raises(FeatureDeclarationError):
        declare()


# ------------------------------------------------------------------ failure and fallback


@pytest.mark.parametrize(
    ("name", "fallback", "reason", "detail"),
    [
        ("failing", -1, "error", "RuntimeError"),
        ("wrong", 7, "type", "str"),
    ],
)
def test_a_failing_plugin_gives_its_fallback_and_a_counted_error(
    module: str, name: str, fallback: int, reason: str, detail: str
) -> None:
    registry = _registry(module, name)
    program = _compile(
        registry,
        f"route low when request.features.{name} < 0 {{\n    prefer openai/gpt-4o\n}}\n"
        "route rest {\n    prefer openai/gpt-4o-mini\n}\n",
    )
    decision = evaluate(program, env_of(LEGAL), explain=True)
    assert decision.allowed
    assert decision.route == ("low" if fallback < 0 else "rest")
    (step,) = [s for s in decision.to_dict()["trace"] if s["step"] == "features"]
    (called,) = step["plugins"]
    assert (called["name"], called["value"], called["error"], called["detail"]) == (
        name,
        fallback,
        reason,
        detail,
    )
    assert _only(registry, name).stats.errors == {
        "error": int(reason == "error"),
        "type": int(reason == "type"),
        "timeout": 0,
    }


def test_a_slow_plugin_gives_its_fallback_by_the_clock(module: str) -> None:
    # each reading of the clock moves 6 ms: the call takes 6 ms, over `slow`'s 5 ms
    registry = _registry(module, "slow", "legal", clock=StepClock(6_000_000))
    program = _compile(
        registry,
        "route fast when request.features.slow or request.features.legal {\n"
        "    prefer openai/gpt-4o\n}\nroute rest {\n    prefer openai/gpt-4o-mini\n}\n",
    )
    decision = evaluate(program, env_of(PLAIN), explain=True)
    assert decision.route == "rest"  # slow's True came too late: its fallback, False
    (step,) = [s for s in decision.to_dict()["trace"] if s["step"] == "features"]
    shown = {c["name"]: (c["value"], c["us"], c["error"]) for c in step["plugins"]}
    assert shown == {"legal": (False, 6000.0, None), "slow": (False, 6000.0, "timeout")}
    assert _only(registry, "slow").stats.errors["timeout"] == 1
    assert _only(registry, "legal").stats.errors["timeout"] == 0  # 6 ms is within its 10 s
    # the same call on a clock that moves 1 ms: in time, its own value
    quick = _registry(module, "slow", clock=StepClock(1_000_000))
    program = _compile(quick, "route fast when request.features.slow {\n}\n")
    assert evaluate(program, env_of(PLAIN)).route == "fast"


def _workers(name: str) -> int:
    return sum(t.name == f"policyctl-feature-{name}" for t in threading.enumerate())


def _called(decision: Any) -> dict[str, Any]:
    (step,) = [s for s in decision.to_dict()["trace"] if s["step"] == "features"]
    (called,) = step["plugins"]
    return called  # type: ignore[no-any-return]


def test_a_hanging_plugin_gives_its_fallback_and_holds_nothing(module: str, tmp_path: Path) -> None:
    """The timeout is enforced: the decision does not wait for a call that hangs, later
    calls do not queue behind it (nor start a thread), and it recovers once it returns."""
    from engine.service.telemetry import Telemetry

    registry = _registry(module, "hang")
    plugins = sys.modules.get(module) or __import__(module)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.policy").write_text(POLICY.replace("features.legal", "features.hang"))
    with using(registry), PolicyEngine(policy=policies, state="memory://") as engine:
        hang = _only(registry, "hang")
        assert hang.worker_thread is None and _workers("hang") == 0  # started lazily
        first = engine.evaluate(LEGAL, dry_run=True, explain=True)
        assert (first.allowed, first.route) == (True, "rest")  # the fallback, False
        called = _called(first)
        assert (called["value"], called["error"], called["detail"]) == (
            False,
            "timeout",
            "over 20ms",
        )
        assert plugins.STARTED == [1] and _workers("hang") == 1
        # while the call hangs: the fallback at once, the function not called again
        for _ in range(3):
            later = engine.evaluate(PLAIN, dry_run=True, explain=True)
            assert later.route == "rest"
            assert (_called(later)["error"], _called(later)["detail"]) == ("timeout", "busy")
        assert plugins.STARTED == [1] and _workers("hang") == 1
        assert hang.stats.errors == {"error": 0, "type": 0, "timeout": 4}
        text, _ = Telemetry(engine).exposition("text/plain")
        shown = text.decode()
        assert 'policyctl_feature_errors_total{feature="hang",reason="timeout"} 4.0' in shown
        assert 'policyctl_feature_seconds_count{feature="hang"} 4.0' in shown
        # it returns: the plugin is called again, and its value routes
        plugins.GATE.set()
        worker = hang.worker_thread
        assert worker is not None
        for _ in range(600):  # (a generous wait for the worker to see the gate open)
            if not hang._worker.late:  # type: ignore[union-attr]
                break
            threading.Event().wait(0.05)
        recovered = engine.evaluate(LEGAL, dry_run=True, explain=True)
        assert recovered.route == "law", _called(recovered)
        assert (_called(recovered)["value"], _called(recovered)["error"]) == (True, None)
        assert plugins.STARTED == [1, 1] and _workers("hang") == 1
        assert hang.worker_thread is worker and hang.stats.errors["timeout"] == 4


def test_a_plugin_runs_on_its_worker_unless_declared_inline(module: str) -> None:
    registry = _registry(module, "thread", "thread_inline")
    program = _compile(
        registry,
        'route r when request.features.thread == "x" or request.features.thread_inline == "y"'
        " {\n}\n",
    )
    decision = evaluate(program, env_of(PLAIN), explain=True)
    (step,) = [s for s in decision.to_dict()["trace"] if s["step"] == "features"]
    shown = {c["name"]: c["value"] for c in step["plugins"]}
    assert shown == {
        "thread": "policyctl-feature-thread",
        "thread_inline": threading.current_thread().name,
    }
    assert _only(registry, "thread_inline").worker_thread is None


def test_the_plugin_gets_a_read_only_view(module: str) -> None:
    registry = _registry(module, "peek")
    program = _compile(registry, "route r when request.features.peek == 1008 {\n}\n")
    body = {
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 1000,
        "metadata": {"team": "a"},
        "tags": ["t"],
    }
    decision = evaluate(program, env_of(body), explain=True)
    (step,) = [s for s in decision.to_dict()["trace"] if s["step"] == "features"]
    assert step["plugins"][0]["error"] is None, step
    assert (step["plugins"][0]["value"], decision.route) == (1008, "r")


def test_the_plugin_reads_the_same_conversation_in_every_format(module: str) -> None:
    registry = _registry(module, "legal", "score")
    program = _compile(
        registry, "route law when request.features.legal and request.features.score == 2 {\n}\n"
    )
    question = "Is this contract binding?"
    bodies = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": question}]},
        {
            "model": "claude-sonnet-4-6",
            "max_tokens": 100,
            "messages": [
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {"role": "user", "content": [{"type": "text", "text": question}]},
            ],
        },
        {"contents": [{"role": "model", "parts": [{"text": "hi"}]},
                      {"role": "user", "parts": [{"text": question}]}]},
    ]  # fmt: skip
    for body in bodies:
        assert evaluate(program, env_of(body)).route == "law", body


# ------------------------------------------------------------------ engine and /metrics


def test_the_engine_counts_plugin_calls_for_metrics(module: str, tmp_path: Path) -> None:
    registry = _registry(module, "legal", "failing")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.policy").write_text(
        POLICY.replace("request.features.legal", "request.features.legal and "
                       "request.features.failing < 0")
    )  # fmt: skip
    from engine.service.telemetry import Telemetry

    with using(registry), PolicyEngine(policy=policies, state="memory://") as engine:
        assert engine.evaluate(LEGAL, dry_run=True).route == "law"
        assert engine.evaluate(PLAIN, dry_run=True).route == "rest"
        text, _ = Telemetry(engine).exposition("text/plain")
    shown = text.decode()
    assert 'policyctl_feature_seconds_count{feature="legal"} 2.0' in shown
    assert 'policyctl_feature_seconds_count{feature="failing"} 1.0' in shown
    assert 'policyctl_feature_errors_total{feature="failing",reason="error"} 1.0' in shown
    assert 'policyctl_feature_errors_total{feature="legal",reason="error"} 0.0' in shown


# ------------------------------------------------------------------ rediscovery on reload

EARLY = """
from engine.features import RequestView, feature


@feature(type=bool, inline=True)
def early(request: RequestView) -> bool:
    return "contract" in request.last_text
"""

LATE = """
from engine.features import RequestView, feature


@feature(type=str, fallback="none", inline=True)
def late(request: RequestView) -> str:
    return "installed later"
"""


def _install(site: Path, dist: str, module: str, text: str, points: dict[str, str]) -> None:
    """A distribution as an installer leaves it: its module and its `.dist-info` (with the
    entry points) in a directory on sys.path, where importlib.metadata finds it."""
    (site / f"{module}.py").write_text(text)
    info = site / f"{dist}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in points.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path, and the process's installed plugins listed afresh before
    and after (the registry is per process)."""
    where = tmp_path / "site"
    where.mkdir()
    monkeypatch.syspath_prepend(str(where))
    installed.cache_clear()
    yield where
    installed.cache_clear()
    for name in ("early_plugin", "late_plugin"):
        sys.modules.pop(name, None)


def test_a_plugin_installed_after_start_is_found_on_reload(site: Path, tmp_path: Path) -> None:
    _install(site, "early_dist", "early_plugin", EARLY, {"early": "early_plugin:early"})
    policies = tmp_path / "policies"
    policies.mkdir()
    policy = policies / "p.policy"
    policy.write_text(POLICY.replace("features.legal", "features.early"))
    reads_late = (
        'route late when request.features.early and request.features.late == "installed later"'
        " {\n    prefer openai/gpt-4o\n}\n" + POLICY.replace("features.legal", "features.early")
    )
    with PolicyEngine(policy=policies, state="memory://") as engine:
        assert engine.evaluate(LEGAL, dry_run=True).route == "law"
        early = _only(installed(), "early")
        assert early.stats.calls == 1
        # a policy reading a plugin no package registers yet: refused, the last one serves
        policy.write_text(reads_late)
        assert engine.reload() is False
        assert "error[E0293]: no classifier plugin `late` is registered" in str(
            engine.last_reload_error
        )
        # the package is installed while the engine runs: the next reload finds it
        _install(site, "late_dist", "late_plugin", LATE, {"late": "late_plugin:late"})
        assert engine.reload() is True
        assert engine.evaluate(LEGAL, dry_run=True).route == "late"
        assert {"early", "late"} <= set(installed().names())
        assert _only(installed(), "early") is early  # kept: the same object, its stats
        assert early.stats.calls == 2
        assert _only(installed(), "late").stats.calls == 1


def test_a_hot_reload_finds_a_plugin_installed_while_serving(site: Path, tmp_path: Path) -> None:
    """The watcher's reload (what `policyctl serve` runs): a policy saved after its plugin's
    package was installed reloads, without a restart."""
    policies = tmp_path / "policies"
    policies.mkdir()
    policy = policies / "p.policy"
    policy.write_text("route rest {\n    prefer openai/gpt-4o-mini\n}\n")
    with PolicyEngine(policy=policies, state="memory://") as engine:
        installed()  # listed at start, as a served policy reading a plugin would have
        engine.watch(quiet_ms=20)
        _install(site, "late_dist", "late_plugin", LATE, {"late": "late_plugin:late"})
        renamed = policies / "p.policy.tmp"
        renamed.write_text(
            'route late when request.features.late == "installed later" {\n'
            "    prefer openai/gpt-4o\n}\n"
        )
        renamed.rename(policy)
        for _ in range(1200):  # (a generous wait for the watcher's reload)
            if engine.reloads or engine.reload_errors:
                break
            threading.Event().wait(0.05)
        assert engine.reload_errors == 0, engine.last_reload_error
        assert engine.reloads >= 1
        assert engine.evaluate(PLAIN, dry_run=True).route == "late"


def test_a_refresh_keeps_loaded_plugins_and_retries_broken_ones(module: str) -> None:
    registry = Registry([EntryPoint("legal", f"{module}:legal", GROUP),
                         EntryPoint("gone", f"{module}_missing:gone", GROUP)])  # fmt: skip
    legal = _only(registry, "legal")
    assert isinstance(registry.get("gone"), Broken)
    # `legal` now names another function, `gone` an importable one, `topic` is new
    added = registry.refresh([EntryPoint("legal", f"{module}:topic", GROUP),
                              EntryPoint("gone", f"{module}:score", GROUP),
                              EntryPoint("topic", f"{module}:topic", GROUP)])  # fmt: skip
    assert added == ["topic"]
    assert registry.get("legal") is legal  # loaded: kept until a restart
    assert isinstance(registry.get("gone"), Plugin)  # tried again: it imports now
    assert isinstance(registry.get("topic"), Plugin)
    assert registry.names() == ["gone", "legal", "topic"]


# ------------------------------------------------------------------ the real mechanism

DIST_PYPROJECT = """
[build-system]
requires = []
build-backend = "tiny_backend"
backend-path = ["."]

[project]
name = "policyctl-test-plugins"
version = "0.1.0"

[project.entry-points."policyctl.features"]
legal = "policyctl_test_plugins:legal"
failing = "policyctl_test_plugins:failing"
broken = "policyctl_test_plugins_missing:anything"
"""

# A PEP 517 backend in the distribution's tree, so that pip builds it without downloading
# one (the machine has no `wheel` for setuptools): the module, and a `.dist-info` whose
# `entry_points.txt` is the pyproject's `[project.entry-points]`, as every backend writes it.
TINY_BACKEND = """
import base64, hashlib, tomllib, zipfile
from pathlib import Path


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    dist = project["name"].replace("-", "_")
    info = f"{dist}-{project['version']}.dist-info"
    points = "".join(
        f"[{group}]\\n" + "".join(f"{k} = {v}\\n" for k, v in entries.items()) + "\\n"
        for group, entries in project["entry-points"].items()
    )
    files = {
        "policyctl_test_plugins.py": Path("policyctl_test_plugins.py").read_bytes(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\\nName: {project['name']}\\n"
            f"Version: {project['version']}\\n"
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\n"
        b"Tag: py3-none-any\\n",
        f"{info}/entry_points.txt": points.encode(),
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record += f"{name},sha256={digest.decode()},{len(data)}\\n"
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\\n").encode()
    name = f"{dist}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return name
"""


@pytest.fixture(scope="session")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the test distribution pip-installed (its entry points in its
    `.dist-info`); policyctl's dependencies and this checkout come in by a `.pth` line."""
    where = tmp_path_factory.mktemp("plugin_venv")
    dist = where / "dist"
    dist.mkdir()
    (dist / "pyproject.toml").write_text(DIST_PYPROJECT)
    (dist / "policyctl_test_plugins.py").write_text(PLUGINS)
    (dist / "tiny_backend.py").write_text(TINY_BACKEND)
    venv = where / "venv"
    made = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300
    )
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = sysconfig.get_paths()["purelib"]  # this interpreter's: policyctl's deps
    Path(purelib, "policyctl_checkout.pth").write_text(f"{ROOT}\n{borrowed}\n")
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", str(dist)],
        capture_output=True, text=True, timeout=600, env=_clean_env(where),
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    return venv


def _clean_env(where: Path) -> dict[str, str]:
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(where / "state")
    return env


def _policyctl(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "engine", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(cwd),
    )


def test_an_installed_plugin_is_found_through_its_entry_point(
    plugin_venv: Path, tmp_path: Path
) -> None:
    (tmp_path / "p.policy").write_text(
        POLICY.replace(
            "request.features.legal",
            "request.features.legal and request.features.failing < 0",
        )
    )
    (tmp_path / "legal.json").write_text(json.dumps(LEGAL))
    (tmp_path / "plain.json").write_text(json.dumps(PLAIN))
    checked = _policyctl(plugin_venv, tmp_path, "check", "p.policy")
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    ran = _policyctl(plugin_venv, tmp_path, "eval", "--policy", "p.policy", "--explain",
                     "legal.json")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    decision = json.loads(ran.stdout)
    assert decision["route"] == "law"
    (step,) = [s for s in decision["trace"] if s["step"] == "features"]
    called = {c["name"]: (c["value"], c["error"]) for c in step["plugins"]}
    assert called == {"failing": (-1, "error"), "legal": (True, None)}
    ran = _policyctl(plugin_venv, tmp_path, "eval", "--policy", "p.policy", "plain.json")
    assert json.loads(ran.stdout)["route"] == "rest"
    table = _policyctl(plugin_venv, tmp_path, "eval", "--policy", "p.policy", "--explain",
                       "--format", "table", "legal.json")  # fmt: skip
    assert "request.features.legal = yes (" in table.stdout, table.stdout
    assert "request.features.failing = -1 (" in table.stdout
    assert "fallback: error RuntimeError" in table.stdout


def test_an_installed_plugin_that_fails_to_import_is_named_at_load(
    plugin_venv: Path, tmp_path: Path
) -> None:
    (tmp_path / "p.policy").write_text(POLICY.replace("legal", "broken"))
    checked = _policyctl(plugin_venv, tmp_path, "check", "p.policy")
    assert checked.returncode != 0
    assert "error[E0294]" in checked.stderr + checked.stdout
    assert "`broken = policyctl_test_plugins_missing:anything`" in checked.stderr
    assert "ModuleNotFoundError" in checked.stderr
    (tmp_path / "p.policy").write_text(POLICY)  # reads `legal` only: loads
    checked = _policyctl(plugin_venv, tmp_path, "check", "p.policy")
    assert (checked.returncode, checked.stderr) == (0, "")
    (tmp_path / "p.policy").write_text(POLICY.replace("legal", "legl"))
    checked = _policyctl(plugin_venv, tmp_path, "check", "p.policy")
    assert "did you mean `request.features.legal`?" in checked.stderr
