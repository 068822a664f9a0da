"""Classifier plugins: `request.features.NAME`, a user's Python function over a request.

A plugin is a function registered under the entry point group `policyctl.features` (one
entry per feature, `NAME = "module:function"`) and marked by `@feature(type=…)` (the public
import is `engine.features`), which declares its value's type, its time budget and the
value it falls back to. docs/features.md is the user's guide.

- Discovery: the entry points are listed when a checked policy first reads
  `request.features.*` (`installed()`), and again on every policy reload (`rediscover()`:
  new names added, loaded plugins kept with their stats); a plugin is imported when a
  policy first reads it (`Registry.get`). A plugin that fails to import, or is not a
  `@feature`, is kept as a `Broken` entry: a policy that reads it is refused at load (the
  checker's E0294 names the entry point and the exception), a policy that does not still
  loads.
- Per request: the compiled condition calls `Plugin.read`, which runs the function at most
  once per request (the value is kept in the request's `Conversation` with the prompt
  features) and only when a condition (or `--explain`) reads it.
- Failure: a plugin that raises, returns a value of another type, or overruns its
  `timeout_ms` gives its fallback value and counts an error (`PluginStats.errors`, reason
  `error`, `type` or `timeout`); a decision never fails for it.
- Timeout, enforced: each plugin's calls run on its own worker thread (`_Worker`, started
  on the plugin's first call, one per plugin, never one per call); the deciding thread
  waits at most `timeout_ms` for the value, then goes on with the fallback. While a call the
  deciding thread stopped waiting for still runs, the plugin's later calls give the
  fallback at once (reason `timeout`, detail `busy`) instead of queueing behind it; once it
  returns, the plugin is called again. A value that came back but too late (by the
  plugin's clock) is replaced by the fallback too, so a slow plugin never steers routing.
  The handoff costs tens of µs (bench/plugins_bench.py): a plugin that cannot hang (pure
  Python, no I/O) may declare `inline=True` and run on the deciding thread, its timeout
  then measured as above but not enforced.

Standard library only: the router calls this per request.
"""

from __future__ import annotations

import importlib
import re
import threading
from _thread import allocate_lock
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from queue import SimpleQueue
from time import perf_counter_ns
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from engine.errors import PolicyctlError
from engine.wire.features import EMPTY, SYSTEM, Conversation, FeatureValue, Turn, conversation_of

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

GROUP = "policyctl.features"  # the entry point group plugins register under
ATTRIBUTE = "__policyctl_feature__"  # where `@feature` puts a function's `FeatureSpec`
DEFAULT_TIMEOUT_MS = 50.0
TYPES: tuple[type, ...] = (bool, int, float, str)
DEFAULT_FALLBACK: dict[type, FeatureValue] = {bool: False, int: 0, float: 0.0, str: ""}
NAME = re.compile(r"[a-z_][a-z0-9_]*")
# the reasons an error is counted under (`policyctl_feature_errors_total{reason}`)
ERROR, WRONG_TYPE, TIMEOUT = "error", "type", "timeout"
REASONS = (ERROR, WRONG_TYPE, TIMEOUT)
BUSY = "busy"  # a `timeout`'s detail: the call before it overran and still runs
# seconds: the histogram of plugin calls (`policyctl_feature_seconds`)
BUCKETS_S = (0.00001, 0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0)

Value = bool | int | float | str
F = TypeVar("F", bound=Callable[..., Any])


class FeatureDeclarationError(PolicyctlError, TypeError):
    """`@feature(…)` with a type, timeout or fallback it cannot take (raised when the
    plugin's module is imported: the checker reports it as E0294)."""


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """What `@feature` declares about a plugin function."""

    type: type  # bool, int, float or str
    timeout_ms: float
    fallback: Value
    doc: str  # one line: what the value means (the function's docstring's first line)
    inline: bool = False  # run on the deciding thread: the timeout measured, not enforced


def feature(
    *,
    type: type,  # the decorator's public keyword (shadows the builtin here)
    timeout_ms: float = DEFAULT_TIMEOUT_MS,
    fallback: Value | None = None,
    doc: str | None = None,
    inline: bool = False,
) -> Callable[[F], F]:
    """Mark `function(request: RequestView) -> value` as a classifier plugin.

    `type` is bool, int, float or str (what `request.features.NAME` is in a condition);
    `timeout_ms` the call's budget; `fallback` the value when the call raises, returns
    another type or overruns its budget (default: False, 0, 0.0 or "").
    `inline=True`: the call runs on the deciding thread (no handoff to the plugin's worker,
    which costs tens of µs), for a function that cannot hang (pure Python over the
    request, no I/O): its timeout is then measured, not enforced.
    """
    if type not in TYPES:
        raise FeatureDeclarationError(
            f"@feature(type={getattr(type, '__name__', type)!r}): the type is one of"
            " bool, int, float, str"
        )
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float) or timeout_ms <= 0:
        raise FeatureDeclarationError(
            f"@feature(timeout_ms={timeout_ms!r}): a positive number of milliseconds"
        )
    value = DEFAULT_FALLBACK[type] if fallback is None else fallback
    checked = conform(type, value)
    if checked is None:
        raise FeatureDeclarationError(
            f"@feature(type={type.__name__}, fallback={fallback!r}): the fallback is a"
            f" {type.__name__}"
        )

    def mark(function: F) -> F:
        line = doc
        if line is None:
            lines = (function.__doc__ or "").strip().splitlines()
            line = lines[0].strip() if lines else ""
        spec = FeatureSpec(type, float(timeout_ms), checked, line, inline is True)
        setattr(function, ATTRIBUTE, spec)
        return function

    return mark


def conform(kind: type, value: Any) -> Value | None:
    """`value` as a `kind` (an int is a float's too), or None when it is not one."""
    if kind is bool:
        return value if value is True or value is False else None
    if isinstance(value, bool):
        return None
    if kind is float and isinstance(value, int | float):
        return float(value)
    if kind is int and isinstance(value, int):
        return int(value)
    if kind is str and isinstance(value, str):
        return str(value)
    return None


# ------------------------------------------------------------------ what a plugin reads

_INTERNAL = frozenset({"conversation", "wire"})


class RequestView:
    """What a plugin function gets: a read-only view of one request.

    - `fields`: the request's normalised fields, the names a policy reads as `request.NAME`
      (`model`, `user`, `input_tokens`, `max_tokens`, `tags`, `format`, …) with their
      values in the language's units; `metadata` is itself a read-only mapping, lists are
      tuples.
    - `format`: the wire format the body came in (`native`, `openai-chat`, …).
    - `turns`: the conversation, each message as `(role, texts, tool_result)`: role one of
      `system`, `user`, `assistant`, `tool`; texts a tuple of the message's text parts
      (the strings of the body, not copies); tool_result whether it carries a tool's result.
    - `last_text` / `system_text`: the last non-system message's texts, the system prompts'
      texts, each joined by newlines (made on first use).
    - `text(name)`: a prompt feature (`request.text.NAME`), derived once for the request.

    The body itself is not given: a plugin cannot change what is routed.
    """

    __slots__ = ("_conv", "_env", "_fields")

    def __init__(self, env: Mapping[str, Any], conv: Conversation) -> None:
        self._env = env
        self._conv = conv
        self._fields: Mapping[str, Any] | None = None

    @property
    def fields(self) -> Mapping[str, Any]:
        if self._fields is None:
            shown: dict[str, Any] = {}
            for key, value in self._env.items():
                if key in _INTERNAL:
                    continue
                if isinstance(value, Mapping):
                    value = MappingProxyType(dict(value))
                elif isinstance(value, list):
                    value = tuple(value)
                shown[key] = value
            self._fields = MappingProxyType(shown)
        return self._fields

    @property
    def format(self) -> str:
        found = self._env.get("format")
        return found if isinstance(found, str) else self._conv.format

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self._conv.turns()

    @property
    def last_text(self) -> str:
        for role, texts, _ in reversed(self._conv.turns()):
            if role != SYSTEM:
                return "\n".join(texts)
        return ""

    @property
    def system_text(self) -> str:
        return "\n".join(
            t for role, texts, _ in self._conv.turns() if role == SYSTEM for t in texts
        )

    def text(self, name: str) -> FeatureValue:
        return self._conv.feature(name)

    def __repr__(self) -> str:  # never the text
        return f"RequestView({self.format}, {len(self.turns)} turn(s))"


# ------------------------------------------------------------------ one plugin


@dataclass(frozen=True, slots=True)
class Outcome:
    """One call of a plugin: the value a condition reads, what the call took, and why the
    fallback was used (None: the function's own value)."""

    value: Value
    ns: int
    error: str | None = None
    detail: str = ""  # the exception or the wrong value's type, for --explain

    @property
    def us(self) -> float:
        return round(self.ns / 1000, 1)


@dataclass(slots=True)
class PluginStats:
    """A plugin's calls since the process started (for /metrics)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    @property
    def calls(self) -> int:
        return sum(self.buckets)

    def add(self, outcome: Outcome) -> None:
        s = outcome.ns / 1e9
        i = 0
        while i < len(BUCKETS_S) and s > BUCKETS_S[i]:
            i += 1
        self.buckets[i] += 1
        self.seconds += s
        if outcome.error is not None:
            self.errors[outcome.error] += 1


class Plugin:
    """A loaded plugin: its function and declaration, run at most once per request."""

    __slots__ = ("_key", "_worker", "clock", "entry", "function", "name", "spec", "stats")

    def __init__(
        self,
        name: str,
        entry: str,
        function: Callable[[RequestView], Any],
        spec: FeatureSpec,
        clock: Callable[[], int] = perf_counter_ns,
    ) -> None:
        self.name = name
        self.entry = entry  # "module:function", as registered
        self.function = function
        self.spec = spec
        self.clock = clock
        self.stats = PluginStats()
        self._key = (GROUP, name)  # its place among a conversation's memoised values
        self._worker: _Worker | None = None  # its calls' thread, started on the first call

    def outcome(self, env: Mapping[str, Any]) -> Outcome:
        """This request's call (made on the first read, kept for the rest of the decision;
        an environment without a conversation, made for a test, calls it every time)."""
        conv = conversation_of(env)
        if conv is EMPTY:
            return self.run(RequestView(env, conv))
        found = conv.values.get(self._key)
        if found is None:
            view = conv.values.get(RequestView)
            if view is None:
                view = conv.values[RequestView] = RequestView(env, conv)
            found = conv.values[self._key] = self.run(view)
        return found  # type: ignore[no-any-return]

    def read(self, env: Mapping[str, Any], model: Any = None) -> Value:
        """The value a condition reads (a compiled path's getter)."""
        return self.outcome(env).value

    def run(self, view: RequestView) -> Outcome:
        """One call, on the plugin's worker, waited for at most `timeout_ms` (or inline)."""
        spec = self.spec
        if spec.inline:
            return self._inline(view)
        clock = self.clock
        start = clock()
        worker = self._worker
        if worker is None:
            worker = self._start()
        call = worker.submit(view)
        if call is None:  # a call the deciders stopped waiting for still runs: no queueing
            outcome = Outcome(spec.fallback, clock() - start, TIMEOUT, BUSY)
        elif not worker.wait(call, spec.timeout_ms / 1000.0):
            outcome = Outcome(
                spec.fallback, clock() - start, TIMEOUT, f"over {spec.timeout_ms:g}ms"
            )
        elif call.failed is not None:
            outcome = Outcome(spec.fallback, clock() - start, ERROR, call.failed)
        else:
            outcome = _judged(spec, call.value, clock() - start)
        self.stats.add(outcome)
        return outcome

    def _inline(self, view: RequestView) -> Outcome:
        """One call on the deciding thread (`inline=True`): a value that came too late is
        replaced by the fallback, but the call is not stopped."""
        spec = self.spec
        clock = self.clock
        start = clock()
        try:
            raw = self.function(view)
        except Exception as exc:  # a plugin's failure is counted, never raised
            outcome = Outcome(spec.fallback, clock() - start, ERROR, type(exc).__name__)
        else:
            outcome = _judged(spec, raw, clock() - start)
        self.stats.add(outcome)
        return outcome

    def _start(self) -> _Worker:
        with _STARTING:
            worker = self._worker
            if worker is None:
                worker = self._worker = _Worker(self.name, self.function)
        return worker

    @property
    def worker_thread(self) -> threading.Thread | None:
        """The plugin's worker thread (None until its first call)."""
        worker = self._worker
        return None if worker is None else worker.thread

    def __repr__(self) -> str:
        return f"Plugin({self.name} = {self.entry}, {self.spec.type.__name__})"


# ------------------------------------------------------------------ the worker thread

_STARTING = threading.Lock()  # two first calls start one worker


class _Call:
    """One call handed to a worker: the view in, the value (or the exception's name) out;
    `done` is released by the worker when the call returns."""

    __slots__ = ("abandoned", "done", "failed", "finished", "value", "view")

    def __init__(self, view: RequestView) -> None:
        self.view = view
        self.done = allocate_lock()
        self.done.acquire()
        self.value: Any = None
        self.failed: str | None = None
        self.finished = False
        self.abandoned = False  # the decider stopped waiting for it


class _Worker:
    """A plugin's own daemon thread: its calls run there one at a time, so that the deciding
    thread can stop waiting for one (`wait`'s timeout). `late` counts the calls given up on
    that still run or wait to; while it is not 0, `submit` refuses new calls."""

    def __init__(self, name: str, function: Callable[[RequestView], Any]) -> None:
        self.function = function
        self.late = 0
        self._lock = threading.Lock()  # `late` and each call's finished/abandoned
        self._calls: SimpleQueue[_Call] = SimpleQueue()
        self.thread = threading.Thread(
            target=self._serve, name=f"policyctl-feature-{name}", daemon=True
        )
        self.thread.start()

    def submit(self, view: RequestView) -> _Call | None:
        """The call handed over, or None when a call given up on still runs."""
        if self.late:
            return None
        call = _Call(view)
        self._calls.put(call)
        return call

    def wait(self, call: _Call, timeout_s: float) -> bool:
        """Whether the call returned within `timeout_s` (if not, it is given up on)."""
        if call.done.acquire(timeout=timeout_s):
            return True
        with self._lock:
            if call.finished:  # it returned as the wait ended: too late all the same
                return False
            call.abandoned = True
            self.late += 1
        return False

    def _serve(self) -> None:
        function = self.function
        while True:
            call = self._calls.get()
            if not call.abandoned:  # (one given up on while it queued is not run)
                try:
                    call.value = function(call.view)
                except Exception as exc:  # a plugin's failure is counted, never raised
                    call.failed = type(exc).__name__
            with self._lock:
                call.finished = True
                if call.abandoned:
                    self.late -= 1
            call.done.release()


@dataclass(frozen=True, slots=True)
class Broken:
    """A registered entry point that cannot be used: why, as the checker reports it."""

    name: str
    entry: str
    error: str  # `ModuleNotFoundError: No module named 'x'`, or what is wrong with it


# ------------------------------------------------------------------ the registry


class Registry:
    """The plugins registered under `policyctl.features`: given as entry points (from
    `discover()`, or a test's list), each loaded when first asked for."""

    def __init__(
        self, points: Iterable[EntryPoint] = (), clock: Callable[[], int] = perf_counter_ns
    ) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._points, self._loaded = _indexed(points)

    def refresh(self, points: Iterable[EntryPoint]) -> list[str]:
        """Take the entry points listed again (a policy reload): a new name is added, a
        loaded plugin is kept (its function, its stats, its worker) even if its package is
        gone or now names another function (a restart imports that), and an entry that
        could not be used is tried again. Returns the names added."""
        points_now, broken_now = _indexed(points)
        with self._lock:
            merged = dict(points_now)
            loaded: dict[str, Plugin | Broken] = {}
            for name, found in self._loaded.items():
                if isinstance(found, Plugin):  # kept as it is
                    loaded[name] = found
                    merged[name] = self._points[name]
            loaded.update((n, b) for n, b in broken_now.items() if n not in loaded)
            added = sorted(set(merged) - set(self._points))
            self._points, self._loaded = merged, loaded  # swapped whole: readers see one
        return added

    def names(self) -> list[str]:
        return sorted(self._points)

    def get(self, name: str) -> Plugin | Broken | None:
        """The plugin `name` (imported on the first ask), or None when none is registered."""
        found = self._loaded.get(name)
        if found is not None:
            return found
        point = self._points.get(name)
        if point is None:
            return None
        with self._lock:
            found = self._loaded.get(name)
            if found is None:
                found = self._loaded[name] = self._load(point)
        return found

    def _load(self, point: EntryPoint) -> Plugin | Broken:
        if not NAME.fullmatch(point.name):
            return Broken(
                point.name,
                point.value,
                "a feature's name is lower-case letters, digits and `_`",
            )
        try:
            function = point.load()
        except Exception as exc:  # reported by the checker, with the entry point
            return Broken(point.name, point.value, f"{type(exc).__name__}: {exc}")
        spec = getattr(function, ATTRIBUTE, None)
        if not isinstance(spec, FeatureSpec) or not callable(function):
            return Broken(
                point.name,
                point.value,
                "not a classifier: decorate it with `@feature(type=…)` from `engine.features`",
            )
        return Plugin(point.name, point.value, function, spec, self.clock)

    def __iter__(self) -> Iterator[Plugin | Broken]:
        for name in self.names():
            found = self.get(name)
            if found is not None:
                yield found


def _judged(spec: FeatureSpec, raw: object, ns: int) -> Outcome:
    """The outcome of a call that returned `raw` after `ns`: its value, or the fallback
    when the value is not of the declared type or came later than the timeout."""
    value = conform(spec.type, raw)
    if value is None:
        return Outcome(spec.fallback, ns, WRONG_TYPE, type(raw).__name__)
    if ns > spec.timeout_ms * 1e6:
        return Outcome(spec.fallback, ns, TIMEOUT, f"over {spec.timeout_ms:g}ms")
    return Outcome(value, ns)


def _indexed(points: Iterable[EntryPoint]) -> tuple[dict[str, EntryPoint], dict[str, Broken]]:
    """The entry points by name, and the names registered twice differently (`Broken`)."""
    by_name: dict[str, EntryPoint] = {}
    broken: dict[str, Broken] = {}
    for point in points:
        first = by_name.get(point.name)
        if first is not None and first.value != point.value:
            broken[point.name] = Broken(
                point.name,
                point.value,
                f"registered twice: `{first.value}` and `{point.value}`",
            )
        by_name.setdefault(point.name, point)
    return by_name, broken


def discover(group: str = GROUP) -> list[EntryPoint]:
    """The entry points installed distributions register under `group`."""
    from importlib.metadata import entry_points  # only when asked: a slow import

    return list(entry_points(group=group))


@cache
def installed() -> Registry:
    """The installed plugins, discovered on first use (and again by `rediscover`)."""
    return Registry(discover())


def rediscover() -> list[str]:
    """List the installed entry points again (`PolicyEngine.reload`, which the service's
    hot reload calls), so that a package installed since is seen without a restart;
    the plugins already loaded are kept with their stats. Returns the names added (none
    when nothing was discovered yet: the first use discovers)."""
    if not installed.cache_info().currsize:
        return []
    importlib.invalidate_caches()  # a module written since into a directory on sys.path
    return installed().refresh(discover())


_ACTIVE: ContextVar[Registry | None] = ContextVar("feature_registry", default=None)


def active() -> Registry:
    """The registry policies are checked and compiled against: `using()`'s, else the
    installed plugins."""
    found = _ACTIVE.get()
    return found if found is not None else installed()


@contextmanager
def using(registry: Registry) -> Iterator[Registry]:
    """Check and compile policies against `registry` inside the block (tests, embedders)."""
    token = _ACTIVE.set(registry)
    try:
        yield registry
    finally:
        _ACTIVE.reset(token)
