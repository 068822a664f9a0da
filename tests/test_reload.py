"""Hot reload at the library level: a real watchdog observer on a temporary policy directory.

Every case edits real files the way editors do (write in place, write a temp file and
rename it over, delete and re-create, a burst of saves) and then waits for the engine by
polling a condition up to a deadline — never a fixed sleep, never an assertion on time.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.api.policy_engine import PolicyEngine
from engine.language.loader import load_policy

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
DESIGN = REPO / "examples" / "policies"
DEADLINE_S = 10.0
USER_LIMIT_LINE = "limit user      100 per 1m burst 10"
REQUEST = {"id": "r1", "user": "alice", "prompt": "hi"}


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    """Poll `condition` every few milliseconds until it holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def with_user_limit(text: str, amount: int) -> str:
    """The default policy with `limit user AMOUNT …`: a distinct, observable version."""
    assert USER_LIMIT_LINE in text
    return text.replace(USER_LIMIT_LINE, f"limit user      {amount} per 1m burst 10")


def user_limit(engine: PolicyEngine) -> float:
    decision = engine.evaluate(REQUEST, dry_run=True)
    return next(r.limit for r in decision.rate_limits if r.scope == "user")


def version_of(directory: Path) -> str:
    """The version the engine should reach for the files as they are now."""
    return load_policy(directory).program.version


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:  # truncate + write, same inode
        f.write(text)


def rename_over(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp~")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    # the design's policy set: the figures below are its catalog's
    shutil.copy(DESIGN / "design.policy", directory / "default.policy")
    shutil.copy(DESIGN / "models.yaml", directory / "models.yaml")
    return directory


@pytest.fixture
def engine(policy_dir: Path) -> Iterator[PolicyEngine]:
    engine = PolicyEngine(policy_dir)
    engine.watch()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def original(policy_dir: Path) -> str:
    return (policy_dir / "default.policy").read_text(encoding="utf-8")


def test_watching_shows_in_status(engine: PolicyEngine) -> None:
    status = engine.policy_status()
    assert status["watching"] is True
    assert status["last_error"] is None
    assert status["version"] == engine.version


@pytest.mark.parametrize("save", [write_in_place, rename_over], ids=["in-place", "rename-over"])
def test_an_edit_is_picked_up(
    engine: PolicyEngine, policy_dir: Path, original: str, save: Callable[[Path, str], None]
) -> None:
    before = engine.version
    assert user_limit(engine) == 100
    save(policy_dir / "default.policy", with_user_limit(original, 150))
    expected = version_of(policy_dir)
    assert expected != before
    wait_for(lambda: engine.version == expected, f"version {expected}")
    assert user_limit(engine) == 150
    assert engine.policy_status()["version"] == expected
    # the counters are updated just after the swap: wait for them too
    wait_for(lambda: engine.reloads >= 1, "the reload to be counted")
    assert engine.last_reload_error is None


@pytest.mark.parametrize("save", [write_in_place, rename_over], ids=["in-place", "rename-over"])
def test_an_edit_of_a_symlinked_file_elsewhere_is_picked_up(
    tmp_path: Path, policy_dir: Path, original: str, save: Callable[[Path, str], None]
) -> None:
    """A policy file that is a symlink to a file in another directory (a shared policy kept
    elsewhere) changes there: the engine watches that directory too."""
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "default.policy"
    target.write_text(original, encoding="utf-8")
    (policy_dir / "default.policy").unlink()
    (policy_dir / "default.policy").symlink_to(target)
    with PolicyEngine(policy_dir) as engine:
        engine.watch()
        assert user_limit(engine) == 100
        save(target, with_user_limit(original, 150))
        expected = version_of(policy_dir)
        wait_for(lambda: engine.version == expected, f"version {expected}")
        assert user_limit(engine) == 150


def test_the_watched_directories_are_each_watched_once(
    policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy directory given relative and the catalog's found absolute are one
    directory: watched once (two watches would see every event twice)."""
    monkeypatch.chdir(policy_dir.parent)
    with PolicyEngine(Path("policies")) as engine:
        assert engine._policy_directories() == [Path("policies")]


def test_delete_then_recreate(engine: PolicyEngine, policy_dir: Path, original: str) -> None:
    path = policy_dir / "default.policy"
    before, errors = engine.version, engine.reload_errors
    path.unlink()
    # With the only policy file gone the reload fails; the last good policy keeps serving.
    wait_for(
        lambda: engine.reload_errors > errors and engine.last_reload_error is not None,
        "the reload after the delete to fail",
    )
    assert engine.version == before
    assert engine.evaluate(REQUEST, dry_run=True).policy_version == before

    path.write_text(with_user_limit(original, 175), encoding="utf-8")
    expected = version_of(policy_dir)
    wait_for(lambda: engine.version == expected, "the re-created file to load")
    assert user_limit(engine) == 175
    wait_for(lambda: engine.last_reload_error is None, "the error to clear")


def test_delete_and_recreate_within_the_debounce(
    engine: PolicyEngine, policy_dir: Path, original: str
) -> None:
    path = policy_dir / "default.policy"
    path.unlink()
    path.write_text(with_user_limit(original, 176), encoding="utf-8")
    expected = version_of(policy_dir)
    wait_for(lambda: engine.version == expected and engine.last_reload_error is None, expected)
    assert user_limit(engine) == 176


def test_a_burst_of_saves_is_debounced(
    engine: PolicyEngine, policy_dir: Path, original: str
) -> None:
    path = policy_dir / "default.policy"
    reloads = engine.reloads
    for i in range(20):
        write_in_place(path, with_user_limit(original, 200 + i))
    final = version_of(policy_dir)
    wait_for(lambda: engine.version == final, "the final save to win")
    wait_for(lambda: engine.last_reload_error is None, "no error left by a half-written save")
    assert user_limit(engine) == 219
    wait_for(lambda: engine.reloads > reloads, "the reload to be counted")
    assert engine.reloads - reloads < 20


def test_a_broken_edit_keeps_the_last_good_policy(
    engine: PolicyEngine,
    policy_dir: Path,
    original: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="policyctl")
    path = policy_dir / "default.policy"
    good, errors = engine.version, engine.reload_errors
    broken_line = "route broken when request.nope {"
    broken = original + f"\n{broken_line}\n    strategy cost\n}}\n"
    line = broken.splitlines().index(broken_line) + 1
    col = broken_line.index("request.nope") + 1
    write_in_place(path, broken)
    wait_for(
        lambda: engine.reload_errors > errors and engine.last_reload_error is not None,
        "the broken edit to be refused",
    )

    assert engine.version == good
    error = engine.last_reload_error
    assert error is not None
    location, message = error.split(": ", 1)
    file, at_line, at_col = location.rsplit(":", 2)
    assert Path(file).name == "default.policy"
    assert Path(file).resolve() == path.resolve()
    assert (int(at_line), int(at_col)) == (line, col)
    assert message.startswith("error[E0324]: unknown field `request.nope`")
    status = engine.policy_status()
    assert status["last_error"] == error
    assert status["version"] == good
    assert status["reload_errors"] == engine.reload_errors
    logged = f"{location}: error[E0324]: unknown field `request.nope`"
    wait_for(  # logged by the reload thread right after the counters are set
        lambda: any(
            r.levelno == logging.WARNING and logged in r.getMessage() for r in caplog.records
        ),
        "the refused reload to be logged with file:line:col",
    )
    # evaluations keep working on the last good policy
    decision = engine.evaluate(REQUEST, dry_run=True)
    assert decision.allowed and decision.policy_version == good

    # the fix: error cleared, new version serving
    write_in_place(path, with_user_limit(original, 321))
    fixed = version_of(policy_dir)
    wait_for(lambda: engine.version == fixed, "the fixed policy to load")
    wait_for(lambda: engine.last_reload_error is None, "the error to clear")
    assert engine.policy_status()["last_error"] is None
    assert user_limit(engine) == 321


def test_a_catalog_edit_reloads_and_changes_estimates(
    engine: PolicyEngine, policy_dir: Path
) -> None:
    catalog = policy_dir / "models.yaml"
    text = catalog.read_text(encoding="utf-8")
    old_price = "pricing: {input: 0.075, output: 0.30}"  # gemini-1.5-flash-latest
    assert text.count(old_price) == 1
    before = engine.evaluate(REQUEST, dry_run=True)
    assert before.model == "gemini-1.5-flash-latest"
    version = engine.version

    rename_over(catalog, text.replace(old_price, "pricing: {input: 0.15, output: 0.60}"))
    wait_for(lambda: engine.version != version, "the catalog edit to load")
    assert engine.version == version_of(policy_dir)
    after = engine.evaluate(REQUEST, dry_run=True)
    assert after.model == "gemini-1.5-flash-latest"
    assert after.estimated_cost == pytest.approx(2 * before.estimated_cost)


def test_a_broken_catalog_keeps_serving(engine: PolicyEngine, policy_dir: Path) -> None:
    catalog = policy_dir / "models.yaml"
    text = catalog.read_text(encoding="utf-8")
    version, errors = engine.version, engine.reload_errors
    write_in_place(catalog, text.replace("pricing: {input: 0.075, output: 0.30}", "pricing: 7"))
    wait_for(
        lambda: engine.reload_errors > errors and engine.last_reload_error is not None,
        "the broken catalog to be refused",
    )
    assert engine.version == version
    assert "models.yaml" in (engine.last_reload_error or "")
    assert engine.evaluate(REQUEST, dry_run=True).policy_version == version
    write_in_place(catalog, text)
    wait_for(lambda: engine.last_reload_error is None, "the restored catalog to load")
    assert engine.version == version


def watchdog_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if type(t).__module__.startswith("watchdog") and t.is_alive()
    }


def test_stop_ends_the_observer(policy_dir: Path) -> None:
    others = watchdog_threads()  # (threads other tests left behind are not ours)
    engine = PolicyEngine(policy_dir)
    try:
        engine.watch()
        assert watchdog_threads() - others, "watch() starts an observer"
        engine.watch()  # a second call is a no-op
        engine.stop()
        assert watchdog_threads() - others == set()
        assert engine.policy_status()["watching"] is False
        engine.stop()  # a second stop is harmless
        # and watching can start again
        engine.watch()
        assert watchdog_threads() - others
    finally:
        engine.close()
    assert watchdog_threads() - others == set()


def test_evaluations_under_concurrent_edits(
    engine: PolicyEngine, policy_dir: Path, original: str
) -> None:
    """8 threads evaluate in a loop while the policy is edited 10 times: no exception, and
    every decision carries a version that was live, with that version's limit (one snapshot
    per evaluation: the version and the rules it reports come from the same program)."""
    path = policy_dir / "default.policy"
    limit_of = {engine.version: 100.0}
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[tuple[str, float]] = []

    def worker(n: int) -> None:
        local: list[tuple[str, float]] = []
        i = 0
        try:
            while not stop.is_set():
                i += 1
                request = {"id": f"w{n}-{i}", "user": f"user-{n}", "prompt": "hi"}
                decision = engine.evaluate(request, dry_run=True)
                limit = next(r.limit for r in decision.rate_limits if r.scope == "user")
                local.append((decision.policy_version, limit))
        except BaseException as err:  # reported below
            errors.append(err)
        finally:
            seen.extend(local)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    try:
        for edit in range(10):
            amount = 500 + edit
            save = rename_over if edit % 2 else write_in_place
            save(path, with_user_limit(original, amount))
            expected = version_of(policy_dir)
            limit_of[expected] = float(amount)
            wait_for(lambda v=expected: engine.version == v, f"edit {edit}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=DEADLINE_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(seen) > 0
    versions = {v for v, _ in seen}
    assert versions <= set(limit_of), versions - set(limit_of)
    mismatched = [(v, lim) for v, lim in seen if limit_of[v] != lim]
    assert mismatched == []
    assert engine.last_reload_error is None


def test_a_regenerated_json_catalog_reloads(tmp_path: Path) -> None:
    """The packaged policy set reads `models.json`: replacing it is a reload too."""
    directory = tmp_path / "packaged"
    directory.mkdir()
    for name in ("default.policy", "models.json"):
        shutil.copy(POLICIES / name, directory / name)
    catalog = directory / "models.json"
    text = catalog.read_text(encoding="utf-8")
    request = {"id": "j1", "prompt": "hi", "max_cost": 0.001}  # the budget route
    with PolicyEngine(directory) as engine:
        engine.watch()
        before = engine.evaluate(request, dry_run=True)
        assert (before.provider, before.model) == ("gemini", "gemini-2.5-flash-lite")
        old = '"id": "gemini-2.5-flash-lite", "provider": "gemini"'
        assert text.count(old) == 1
        line = next(x for x in text.splitlines() if old in x)
        cheaper = line.replace('"input": 0.1, "output": 0.4', '"input": 0.05, "output": 0.2')
        assert cheaper != line
        version = engine.version
        rename_over(catalog, text.replace(line, cheaper))
        wait_for(lambda: engine.version != version, "the JSON catalog edit to load")
        after = engine.evaluate(request, dry_run=True)
        assert after.model == "gemini-2.5-flash-lite"
        assert after.estimated_cost == pytest.approx(before.estimated_cost / 2)


def test_a_changed_window_is_kept_until_restart_and_logged(
    policy_dir: Path, original: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The live window is sized when the engine starts: a reload that changes `window`
    swaps the policy in, keeps the running window and says so in a warning."""
    caplog.set_level(logging.WARNING, logger="policyctl")
    assert "window 24h" in original
    engine = PolicyEngine(policy_dir)
    try:
        before = engine.metrics.window_s  # type: ignore[attr-defined]
        rename_over(policy_dir / "default.policy", original.replace("window 24h", "window 1h"))
        assert engine.reload() is True
        assert engine.version == version_of(policy_dir)
        assert engine.metrics.window_s == before == 86_400.0  # type: ignore[attr-defined]
        assert any(
            "the metrics window changed to 3600000 ms" in r.getMessage() for r in caplog.records
        )
    finally:
        engine.close()


def test_watchdogs_stop_race_is_not_reported_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """watchdog logs an ERROR when it is stopped mid-read (a benign race of a normal stop):
    importing the watcher drops that one message; other watchdog errors still show."""
    import engine.api.watch  # noqa: F401  (installs the filter)

    caplog.set_level(logging.ERROR, logger="watchdog.observers.inotify")
    inotify_log = logging.getLogger("watchdog.observers.inotify")
    inotify_log.error("InotifyEmitter.queue_events() called when the thread is inactive")
    inotify_log.error("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
