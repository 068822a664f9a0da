"""The replay's batch path: one side's requests decided a chunk at a time, the same
decisions as `PolicyEngine.evaluate` one by one (`--no-batch`).

A chunk goes through three phases, each in the log's time order where order matters:

1. **read**: the logged outcomes are recorded at their times, and each request meets the
   metrics snapshot it would have met (taken at its time, exactly when the per-request
   path takes one, so the refreshes fall where they fell); its route is chosen;
2. **rank**: the requests whose route ranks on nothing that changes within the chunk
   are ranked together, per route: eligibility, cost and
   latency as a [requests × models] numpy matrix (each row's latencies its snapshot's),
   each row's order by one `lexsort`
   (the strategy's keys, then the catalog order, as `strategies.base.by` sorts); a
   `latency` route's rows by blocks of one shape and snapshot (`_by_blocks`); a
   `weighted` route's scores but their cost term once per block of one snapshot and one
   set of positions dropped (`_Blocks`);
3. **limits**: each request's ranked models go through the limiter at its time, in order
   (the buckets are order-dependent), and its lean decision is made.

A request the chunk cannot batch (see `batchable`) ends the chunk: the chunk's requests
are ranked and limited, then that request is decided by `PolicyEngine.evaluate_lean` at its
turn, on the outcomes recorded up to it. Outcomes reported without a request id change no
limit, so recording a chunk's outcomes before its limits are applied changes nothing;
snapshots are immutable once taken.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, NamedTuple

import msgspec

from engine.analytics.decision_log import LoggedOutcome
from engine.api.policy_engine import PolicyEngine
from engine.language.program import CompiledRoute, Program, RouteTable
from engine.language.schema import COMPLEXITY_FIELD, FEATURES_FIELD, TEXT_FIELD
from engine.routing.evaluator import (
    VECTOR_MIN_CANDIDATES,
    Lean,
    Measured,
    _eligible,
    _eligible_fast,
    _needs_mask,
    _no_eligible_model,
    _rate_limited,
    _route_for,
    draw,
    lean_of,
    measured_columns,
)
from engine.routing.request import _SURROGATE, _normal_ip, env_of, fast_env
from engine.routing.request_log import Unlogged, logged_conversation
from engine.strategies import STRATEGIES
from engine.strategies.base import Pool
from engine.units import MAX_TOKENS
from engine.wire import NATIVE
from engine.wire.features import Conversation

# requests ranked together at most: a chunk's live containers (its events, requests,
# environments and rows, a dozen or so a request) stay under the replay's GC_YOUNG
# (engine.replay.run), so a scan of the youngest GC generation, when one comes, finds
# few of them alive (at 4096, a scan came every chunk or so and walked tens of
# thousands of live containers: ~7% of a replay)
CHUNK = 2048
HEAD = 4  # ranked models per request made Python lists up front (the rest if a limit asks)
ROUTES_KEPT = 1 << 16  # condition signatures remembered per side at most (then forgotten)
_encode = msgspec.json.Encoder().encode
# the fields of a logged request `_Envs` keeps out of its shape (and those made of them)
PER_ROW = frozenset({"id", "key", "user", "ip", "input_tokens"})
# the fields of a logged request `logged_conversation` takes out (its prompt, as logged)
LOGGED_PROMPT = ("format", "text", "features", "body")
SHAPES_KEPT = 1 << 12  # environment templates remembered per side at most (then forgotten)
# the strategies ranked as a matrix: (the first key, the second), each "cost" or "lat"
RANKED = {"cost": ("cost", "lat"), "latency": ("lat", "cost"), "weighted": ("score", "")}


class Asked(NamedTuple):
    """A logged request, ready to be decided: its time, its request and its request id."""

    at: float
    request: Mapping[str, Any]
    request_id: str | None
    conversation: Conversation | None = None  # its logged prompt features (None: its own)
    # its logged prompt fields (`LOGGED_PROMPT`) are still in `request`: its conversation is
    # `logged_conversation` of them, made only when its environment is (`conversation` None)
    logged: bool = False

    def taken_conversation(self) -> Conversation | None:
        """Its conversation, its logged prompt fields taken out of `request` (`logged`)."""
        if self.logged:
            return logged_conversation(self.request)  # type: ignore[arg-type]
        return self.conversation


@dataclass(slots=True)
class _Row:
    at: float
    env: dict[str, Any]  # its environment, or (`own` set) its shape's template
    route: CompiledRoute
    columns: Measured | None  # the snapshot's measured columns (None: the priors)
    stats_of: Any  # model key -> ModelStats | None (the general path's)
    measuring: bool
    out: Any  # positions dropped now (health, `require` on measurements, retired), or None
    slot: int  # its place in the chunk's results
    matrix: bool  # its strategy is ranked on the matrix (else one by one, `_rank_one`)
    ranked: list[int] | None = None  # route positions, best first
    costs: list[float] | None = None  # by rank
    lats: list[float] | None = None
    lean: Lean | None = None  # decided in the rank phase (no eligible model)
    # what ranks the models past the first HEAD of `ranked` (`_Whole` or `_BlockTail`, its
    # row `index` in it), and its eligible count
    rest: _Whole | _BlockTail | None = None
    index: int = 0  # its row in `rest`
    count: int = 0
    own: _Own | None = None  # its own fields, when `env` is its shape's template
    tokens: float = 0.0  # its `input_tokens`

    def full(self, envs: _Envs) -> dict[str, Any]:
        """Its environment (made of its template and own fields the first time asked)."""
        own = self.own
        if own is not None:
            self.env = envs.filled(self.env, own)
            self.own = None
        return self.env

    def field(self, name: str) -> Any:
        """Its environment's `name`, without making the environment."""
        own = self.own
        if own is None:
            return self.env[name]
        if name == "user":
            return own.user
        if name == "ip":
            return own.ip
        if name == "id" or name == "key":
            return own.request_id
        if name == "input_tokens":
            return own.tokens
        return self.env[name]

    def options(self, table: RouteTable) -> Iterator[tuple[str, str, float]]:
        """(provider, model key, cost) of each ranked model, best first, for the limiter;
        the matrix's rows past the head are read only if the limiter gets that far."""
        providers, model_keys = table.providers, table.model_keys
        ranked, costs = self.ranked, self.costs
        assert ranked is not None and costs is not None
        for p, c in zip(ranked, costs, strict=True):
            yield providers[p], model_keys[p], c
        if self.rest is not None:
            import numpy as np

            keys, cost, lat = self.rest.row(self.index)
            self.rest = None
            tail = np.lexsort(keys)[HEAD : self.count]
            more, more_costs = tail.tolist(), cost[tail].tolist()
            ranked.extend(more)
            costs.extend(more_costs)
            self.lats.extend(lat[tail].tolist())  # type: ignore[union-attr]
            for p, c in zip(more, more_costs, strict=True):
                yield providers[p], model_keys[p], c


class BatchSide:
    """One side of a replay (its engine and the shared clock) on the batch path."""

    def __init__(self, engine: PolicyEngine, set_now: Callable[[float], None]) -> None:
        self.engine = engine
        self.set_now = set_now
        self.ranks = {name: STRATEGIES[name].rank for name in RANKED}
        self.batched = 0  # requests ranked on the matrix
        self.single = 0  # requests decided one by one (`evaluate_lean`)
        self.reads = _signature_reads(engine.program)
        # condition signature -> the route its requests take (None: a deny rule fires)
        self.routes: dict[tuple[Any, ...], CompiledRoute | None] = {}
        self.conditions = 0  # times the deny rules and route conditions were evaluated
        # a route's name -> (the route, `_kind` of it), found once
        self.kinds: dict[str, tuple[CompiledRoute, bool, bool]] = {}
        self.envs = _Envs()
        # a shape's route (`_Envs`), when the conditions read no field a shape leaves out
        self.shape_routes: dict[bytes, CompiledRoute | None] | None = None
        if self.reads is not None and not any(
            not meta and name in PER_ROW for meta, name in self.reads
        ):
            self.shape_routes = {}
        self.fast: _FastLimits | None = None  # (None: not yet asked of this policy's limits)
        self.fast_limits = 0  # requests admitted by `_FastLimits` (the limiter not asked)

    def decide(
        self,
        events: Sequence[LoggedOutcome | Asked],
        record: Callable[[PolicyEngine, LoggedOutcome], None],
    ) -> list[Lean | Unlogged]:
        """Each asked request's lean decision, in order (`Unlogged` for one that reads a
        prompt feature the log did not keep); the outcomes recorded at their times between
        them."""
        out: list[Lean | Unlogged | None] = []
        rows: list[_Row] = []
        engine = self.engine
        for event in events:
            self.set_now(event.at)
            if type(event) is LoggedOutcome:
                record(engine, event)
                continue
            assert isinstance(event, Asked)
            try:
                row = self._read(event, len(out))
                if row is None:
                    self._finish(rows, out)
                    rows = []
                    self.set_now(event.at)
                    conversation = event.taken_conversation()
                    out.append(
                        engine.evaluate_lean(
                            event.request,
                            request_id=event.request_id,
                            conversation=conversation,
                        )
                    )
                    self.single += 1
                else:
                    rows.append(row)
                    out.append(None)
            except Unlogged as unlogged:  # it reads what the log did not keep: not decided
                out.append(unlogged)
        self._finish(rows, out)
        return out  # type: ignore[return-value]  # every slot is filled

    # ------------------------------------------------------------------ read

    def _read(self, asked: Asked, slot: int) -> _Row | None:
        """The request read at its time (the clock is there), or None when it is not
        batchable: a deny rule that fires, an experiment, a route that reads state that
        changes per decision or requires per model, a request the fast path does not price
        (cached tokens, images, price tiers), a big route (the evaluator's numpy path)."""
        engine = self.engine
        program = engine.program
        if program.live_requires:
            return None
        shape = own = None
        if asked.request_id is None:
            envs = self.envs
            env = envs.read(asked.request, asked.conversation, asked.logged)  # `own`: template
            shape, own = envs.shape, envs.own
        else:
            env = env_of(asked.request, request_id=asked.request_id)
            if asked.conversation is not None:
                env["conversation"] = asked.conversation
        by_shape = self.shape_routes
        if own is not None and by_shape is None:  # the conditions read its own fields
            env, own = self.envs.filled(env, own), None
        if shape is None or by_shape is None:
            route = self._route(env)
        else:  # the fields the conditions read are the shape's: its route is theirs
            route = by_shape.get(shape, self)  # type: ignore[arg-type]
            if route is self:
                if len(by_shape) >= ROUTES_KEPT:
                    by_shape.clear()
                route = by_shape[shape] = self._route(env)
        if route is None:
            return None
        split = route.split
        if split is not None:  # an experiment: one hash of the request picks the arm
            if own is not None:
                env, own = self.envs.filled(env, own), None
            route = program.arm_routes[route.name][split.arm_index(env)]
        table = route.table
        kind = self.kinds.get(route.name)
        if kind is None or kind[0] is not route:
            kind = self.kinds[route.name] = (route, *self._kind(route))
        if (
            not kind[1]
            or env["cached_tokens"]
            or env["images"]
            or (env["input_tokens"] if own is None else own.tokens) > table.min_tier_above
        ):
            return None
        metrics = engine.metrics
        now = asked.at
        measuring = metrics.has_data
        stats_of = metrics.stats
        columns: Measured | None = None
        if measuring:  # as `_evaluate` takes it: once, at the request's time
            take = getattr(metrics, "snapshot", None)
            if take is None:
                return None
            snapshot = take()
            if snapshot.stats:
                stats_of = snapshot.stats.get
                columns = snapshot.routes.get(id(route))
                if columns is None or columns.route is not route:
                    columns = measured_columns(snapshot, route)
            else:
                measuring = False
        if columns is None:
            out = route.prior_failing
        else:
            out = columns.dropped(now) if columns.watch else None
            if columns.failing:
                out = columns.failing if not out else out | columns.failing
        if now >= table.next_retirement:
            retired = table.retired(now)
            out = retired if not out else out | retired
        row = _Row(now, env, route, columns, stats_of, measuring, out, slot, kind[2])
        if own is None:
            row.tokens = env["input_tokens"]
        else:
            row.own, row.tokens = own, own.tokens
        return row

    def _kind(self, route: CompiledRoute) -> tuple[bool, bool]:
        """(whether the route's requests can be batched at all: no state that changes per
        decision, no `require` per model, not a big route (the evaluator's numpy path);
        whether its strategy is ranked on the matrix)"""
        table, settings = route.table, route.settings
        batchable = not (
            route.requires
            or settings.explore is not None
            or settings.affinity is not None
            or table.takes_turns
            or len(table.keys) >= VECTOR_MIN_CANDIDATES
            or not table.keys
        )
        strategy = settings.strategy
        return batchable, strategy in RANKED and table.rank is self.ranks[strategy]

    def _route(self, env: dict[str, Any]) -> CompiledRoute | None:
        """The route a request takes, before any split (None: a deny rule fires), the
        conditions evaluated once per distinct signature (`_signature`): they are pure
        functions of the request fields the policy reads."""
        reads = self.reads
        key = None
        if reads is not None:
            key = _signature(reads, env)
            known = self.routes.get(key, self)
            if known is not self:
                return known  # type: ignore[return-value]
        self.conditions += 1
        program = self.engine.program
        route: CompiledRoute | None = None
        for rule in program.denies:
            if rule.when(env, None):
                break
        else:
            route = _route_for(program, env, None)
        if key is not None:
            if len(self.routes) >= ROUTES_KEPT:
                self.routes.clear()
            self.routes[key] = route
        return route

    # ------------------------------------------------------------------ rank, limits

    def _finish(self, rows: list[_Row], out: list[Lean | Unlogged | None]) -> None:
        if not rows:
            return
        groups: dict[tuple[int, int], list[_Row]] = {}
        for row in rows:
            if row.matrix:
                groups.setdefault(id(row.route), []).append(row)
            else:
                self._rank_one(row)
        for group in groups.values():
            _ranked(group)
            for row in group:
                if row.ranked is None:  # not ranked on the matrix, or no model eligible
                    self._rank_one(row)
        engine = self.engine
        program = engine.program
        limiter = engine.limiter
        limits = program.limits
        fast = self.fast
        if fast is None or fast.limits is not limits:
            fast = self.fast = _FastLimits.of(limiter, limits)
        took = None if fast is None else fast.took
        set_now, envs = self.set_now, self.envs
        admitted = 0  # by the store's fast check
        self.batched += len(rows)
        for row in rows:
            if row.lean is not None:
                out[row.slot] = row.lean
                continue
            route, ranked, costs, lats = row.route, row.ranked, row.costs, row.lats
            assert ranked is not None and costs is not None and lats is not None
            k = 0
            if limits:
                at = row.at
                set_now(at)
                if took is not None and took(row, at):
                    admitted += 1
                else:
                    verdict = limiter.check(
                        limits,
                        row.full(envs),
                        row.options(route.table),
                        consume=True,
                        on_store_error=route.settings.on_store_error,
                        record=True,
                    )
                    if verdict.option is None:
                        out[row.slot] = lean_of(
                            _rate_limited(program, row.full(envs), route, verdict, None)
                        )
                        continue
                    k = verdict.option
            model = route.table.models[ranked[k]]
            out[row.slot] = _new_lean((
                True, route.name, model.provider, model.id, None,
                round(costs[k], 10), round(lats[k], 3),
            ))  # fmt: skip
        self.fast_limits += admitted

    def _rank_one(self, row: _Row) -> None:
        """One request ranked as `_evaluate` ranks it (the reference the matrix matches)."""
        route, env, columns = row.route, row.full(self.envs), row.columns
        table = route.table
        pos, costs, lats = _eligible_fast(
            table, env, row.at, None if columns is None else columns.lats, row.out
        )
        general = None
        slow = not pos
        if slow:
            program = self.engine.program
            pos, costs, lats, general, _, dropped = _eligible(
                program, route, env, row.stats_of, row.measuring, row.at, None
            )
            if not pos:
                row.lean = lean_of(_no_eligible_model(program, env, route, dropped, None))
                return
        rates = general  # the general path's, when it decided; else the snapshot's
        if not slow and columns is not None and columns.rates is not None:
            column = columns.rates
            rates = column if type(pos) is range else [column[p] for p in pos]
        drawn = draw(env["key"]) if table.draws else 0.0
        order, _, _ = table.rank(Pool(table.view, pos, costs, lats, rates, drawn))
        row.ranked = [pos[s] for s in order]
        row.costs = [costs[s] for s in order]
        row.lats = [lats[s] for s in order]


class _FastLimits:
    """The limiter's check of a request every bucket of which has room, when the policy's
    limits are plain request counts keyed by a request field (or global) on a plain memory
    store: the same buckets (`Limiter.check`'s, in its order) consumed by the store's
    `consume_all`, without the verdict's statuses and the allowed tallies (a replay reads
    neither). A request a bucket has no room for is asked of `Limiter.check` (nothing has
    changed then), as is every request of any other policy (`of` gives None)."""

    __slots__ = ("consume_all", "limits", "one", "parts")

    def __init__(
        self,
        limits: tuple[Any, ...],
        consume_all: Any,
        parts: list[tuple[str | None, list[tuple[str, float, float]]]],
    ) -> None:
        self.limits = limits
        self.consume_all = consume_all
        self.parts = parts  # (the key's request field, None: global; (prefix, capacity, rate))
        # a policy of one bucket keyed by a request field (`limit user N per …`): its field
        # and bucket, checked without the loops
        self.one: tuple[str, str, float, float] | None = None
        if len(parts) == 1 and parts[0][0] is not None and len(parts[0][1]) == 1:
            self.one = (parts[0][0], *parts[0][1][0])

    @classmethod
    def of(cls, limiter: Any, limits: tuple[Any, ...]) -> _FastLimits | None:
        from engine.limits.limiter import _Plan, group_limits

        consume_all = limiter._consume_all
        if (
            not limits
            or consume_all is None
            or limiter._reserving
            or limiter.events is not None
            or limiter.store.quotas()
        ):
            return None
        plan = _Plan(group_limits(limits))
        if plan.shadow is not None or plan.inflight or plan.per_candidate:
            return None
        parts: list[tuple[str | None, list[tuple[str, float, float]]]] = []
        for part in plan.shared:
            if not (part.requests and part.plain and (part.is_global or part.key_field)):
                return None
            buckets = [(a.prefix, a.capacity, a.rate) for a in part.defaults]
            parts.append((None if part.is_global else part.key_field, buckets))
        return cls(limits, consume_all, parts)

    def took(self, row: _Row, at: float) -> bool:
        """Whether the request's buckets all had room and are consumed (False: nothing
        consumed; ask the limiter)."""
        one = self.one
        if one is not None:
            field, prefix, capacity, rate = one
            key = row.field(field)
            if key is None or key == "" or type(key) is not str:
                return False
            return self.consume_all([(prefix + key, capacity, rate, 1.0)], at * 1000.0) is not None
        buckets: list[tuple[str, float, float, float]] = []
        for field, specs in self.parts:
            if field is None:
                key = ""
            else:
                key = row.field(field)
                if key is None or key == "":
                    continue
                if type(key) is not str:
                    return False
            for prefix, capacity, rate in specs:
                buckets.append((prefix + key, capacity, rate, 1.0))
        if not buckets:
            return False
        return self.consume_all(buckets, at * 1000.0) is not None


class _Envs:
    """Evaluation environments of logged requests, one template per distinct shape.

    A logged request's features differ from one request to the next in a few fields
    (its id, user, IP and token estimate); the rest (the requested model, the limits it
    set, its requirements, the metadata the policy reads) take a few distinct values over
    a log (a shape: their JSON text). `fast_env` checks each field on its own, so a request
    whose other fields (each with its type) equal a template's, and whose own fields pass the checks
    `fast_env` makes of them, has the template's environment with its own fields in it:
    `fast_env` runs once per distinct shape (`built`), not once per request. A request with
    no `input_tokens` (the estimate then reads the prompt), a request `fast_env` does not
    take, or a field that fails a check, goes through `env_of` as it is."""

    def __init__(self) -> None:
        self.templates: dict[bytes, dict[str, Any] | None] = {}
        self.built = 0  # templates made (`fast_env` calls)
        self.whole = 0  # requests given to `env_of` as they are
        self.made = 0  # environments made of a template (`filled`: asked for one)
        self.conversations = 0  # logged conversations made (of `Asked.logged` requests)
        self.shape: bytes | None = None  # the last request's shape (None: taken whole)
        self.own: _Own | None = None  # the last request's own fields (None: taken whole)

    def env(self, request: Mapping[str, Any], conversation: Conversation | None) -> dict[str, Any]:
        """The request's environment, its conversation `conversation` (None: its own)."""
        env = self.read(request, conversation, False)
        own = self.own
        return env if own is None else self.filled(env, own)

    def read(
        self, request: Mapping[str, Any], conversation: Conversation | None, logged: bool
    ) -> dict[str, Any]:
        """The request's shape's template, its own fields in `own` (`filled` makes its
        environment of them, when one is asked for); or, taken whole, its environment
        (`own` None). `logged`: its logged prompt fields are still in it (`Asked.logged`):
        they are its own fields too (`request` is left as it is)."""
        self.shape = self.own = None
        if type(request) is not dict:
            return self._whole(request, conversation, logged)
        rest = request.copy()
        pop = rest.pop
        request_id, user = pop("id", None), pop("user", None)
        ip, tokens = pop("ip", None), pop("input_tokens", None)
        prompt = None
        if logged:  # (a field absent and a null one are the same to `logged_conversation`)
            prompt = (pop("format", None), pop("text", None), pop("features", None))
            prompt += (pop("body", None),)
        if (
            type(request_id) is not str
            or type(tokens) is not int
            or not 0 <= tokens <= MAX_TOKENS
            or (user is not None and type(user) is not str)
            or (ip is not None and type(ip) is not str)
        ):
            return self._whole(request, conversation, logged)
        # the shape: the other fields as JSON (each value's type shows: `true`, `1`, `1.0`,
        # `"1"`), unless one is null (None, NaN and inf all are): then no template
        try:
            key = _encode(rest)
        except (TypeError, ValueError):
            return self._whole(request, conversation, logged)
        if b"null" in key and (b":null" in key or b"[null" in key or b",null" in key):
            return self._whole(request, conversation, logged)  # (one search when none is)
        templates = self.templates
        template = templates.get(key, self)
        if template is self:
            self.built += 1
            # made of the shape alone (None: `env_of` takes each request of it whole)
            template = fast_env({**rest, "id": "", "input_tokens": 0})
            if len(templates) >= SHAPES_KEPT:
                templates.clear()
            templates[key] = template
        if template is None:
            return self._whole(request, conversation, logged)
        if not request_id.isascii() and _SURROGATE.search(request_id):
            return self._whole(request, conversation, logged)
        if user is not None and not user.isascii() and _SURROGATE.search(user):
            return self._whole(request, conversation, logged)
        if ip is not None:
            ip = _normal_ip(ip)
            if ip is None:
                return self._whole(request, conversation, logged)
        self.own = _new_own((request_id, user, ip, float(tokens), conversation, request, prompt))
        self.shape = key
        return template  # type: ignore[no-any-return]

    def filled(self, template: dict[str, Any], own: _Own) -> dict[str, Any]:
        """The environment of a request of the template's shape, its own fields `own`."""
        self.made += 1
        env = template.copy()
        env["id"] = env["key"] = own.request_id
        env["user"] = own.user
        env["ip"] = own.ip
        env["input_tokens"] = own.tokens
        env["metadata"] = dict(template["metadata"])
        env["tags"] = list(template["tags"])
        if own.prompt is not None:  # its logged conversation, made now
            self.conversations += 1
            env["conversation"] = logged_conversation(
                dict(zip(LOGGED_PROMPT, own.prompt, strict=True))
            )
        elif own.conversation is None:
            env["conversation"] = Conversation(NATIVE, own.request)
        else:
            env["conversation"] = own.conversation
        return env

    def _whole(
        self, request: Mapping[str, Any], conversation: Conversation | None, logged: bool
    ) -> dict[str, Any]:
        self.whole += 1
        if logged:  # its prompt fields taken out of a copy (the request is left as it is)
            request = dict(request)
            conversation = logged_conversation(request)  # type: ignore[arg-type]
            self.conversations += 1
        env = env_of(request)
        if conversation is not None:
            env["conversation"] = conversation
        return env


class _Own(NamedTuple):
    """A templated request's own fields (`_Envs.read`): what its environment has that its
    shape's template does not."""

    request_id: str
    user: str | None
    ip: str | None  # normalised
    tokens: float
    conversation: Conversation | None  # its logged conversation (None: its own)
    request: Mapping[str, Any]
    prompt: tuple[Any, ...] | None  # its `LOGGED_PROMPT` fields (`Asked.logged`), else None


# made as tuples, not through the generated constructors (a few times slower): a chunk
# makes one of each per request
_new_own = functools.partial(tuple.__new__, _Own)
_new_lean = functools.partial(tuple.__new__, Lean)


def _signature_reads(program: Program) -> tuple[tuple[bool, str], ...] | None:
    """What a request's condition signature is made of: (metadata?, field) per
    `request.…` path the policy set reads, or None when a condition may read more than
    fields (a prompt feature, a classifier, the complexity score): then nothing is memoised."""
    reads: set[tuple[bool, str]] = set()
    for path in program.request_paths:
        rest = path.split(".")[1:]
        if not rest or rest[0] in (TEXT_FIELD, FEATURES_FIELD, COMPLEXITY_FIELD):
            return None
        if rest[0] == "metadata" and len(rest) > 1:
            reads.add((True, rest[1]))
        else:
            reads.add((False, rest[0]))
    return tuple(sorted(reads))


def _signature(reads: tuple[tuple[bool, str], ...], env: Mapping[str, Any]) -> tuple[Any, ...]:
    """The values of the fields the policy reads, each with its type (`True`, `1` and `1.0`
    are equal keys in a dict, not to a condition); lists and dicts made hashable."""
    metadata = env["metadata"]
    out: list[Any] = []
    for meta, name in reads:
        value = metadata.get(name) if meta else env.get(name)
        kind = type(value)
        if kind is list or kind is dict:
            value = _frozen(value)
        out.append(kind)
        out.append(value)
    return tuple(out)


def _frozen(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return (list, tuple(_frozen(v) for v in value))
    if kind is dict:
        return (dict, tuple((k, _frozen(v)) for k, v in sorted(value.items())))
    return (kind, value)


def _ranked(group: list[_Row]) -> bool:
    """Rank a group of rows (one route): a `latency` route's by blocks (`_by_blocks`), the
    rest on a [rows × models] matrix (`_matrix`); False when the matrix gave up (its rows
    unranked). A row left unranked (`ranked` None) is ranked one by one."""
    if group[0].route.settings.strategy == "latency":
        group = _by_blocks(group)
    return _matrix(group) if group else True


class _Whole(NamedTuple):
    """A group's matrices (`_matrix`): each row's whole order is sorted of them if the
    limiter reads past its first HEAD."""

    keys: tuple[Any, ...]  # the lexsort keys, [rows × models] each
    cost: Any
    lat: Any

    def row(self, i: int) -> tuple[tuple[Any, ...], Any, Any]:
        """Row `i`'s lexsort keys, costs and latencies (by route position)."""
        return tuple(k[i] for k in self.keys), self.cost[i], self.lat[i]


class _BlockTail(NamedTuple):
    """A `latency` route's blocks (`_by_blocks`): a row's whole order is sorted of its
    block's latencies and eligibility and its own costs if the limiter reads past its
    first HEAD (the matrix's keys, the same values)."""

    vec: Any  # the route's `TableVectors`
    lat: Any  # [blocks × models]
    keep: Any  # [blocks × models]
    block: list[int]  # each row's block
    tokens: list[float]  # each row's input tokens
    most: list[float]  # each block's `max_tokens` (0.0: none)
    has_max: list[bool]  # by block
    index_sorted: bool  # route order is catalog order (no index key)

    def row(self, i: int) -> tuple[tuple[Any, ...], Any, Any]:
        """Row `i`'s lexsort keys, costs and latencies (by route position)."""
        import numpy as np

        vec, b = self.vec, self.block[i]
        output = self.most[b] * vec.output_prices if self.has_max[b] else vec.default_output_costs
        cost = self.tokens[i] * vec.input_prices
        cost += output
        cost /= 1e6
        lat = self.lat[b]
        keys: tuple[Any, ...] = (cost, np.where(self.keep[b], lat, np.inf))
        if not self.index_sorted:
            keys = (vec.indexes, *keys)
        return keys, cost, lat


def _by_blocks(group: list[_Row]) -> list[_Row]:
    """Rank a `latency` route's rows by blocks, the rows it leaves (to `_matrix`).

    A block is the rows of one shape (its template: `max_tokens`, requirements, quality
    floor, latency cap), one snapshot's latencies and one set of positions dropped: their
    eligibility and latencies are the same, their costs differ (their input tokens). When a
    block's eligible latencies have no tie among its first HEAD (and the next), each row's
    first HEAD are the block's, in its order, whatever the costs (the cost only breaks ties):
    the block is sorted once, each row's costs are computed for its HEAD models alone. A row
    with a `max_cost`, a context that some model's window does not hold, or a number a float
    does not hold exactly, and each row of a block with a tie, is left to the matrix."""
    import numpy as np

    table = group[0].route.table
    vec = table.vectors()
    big = 2.0**53
    with np.errstate(over="ignore", invalid="ignore"):
        bound = (
            big * np.abs(vec.input_prices).max()
            + big * np.abs(vec.output_prices).max()
            + np.abs(vec.default_output_costs).max()
        )
    if not bound < 1e300:  # a cost could be inf or NaN: the matrix checks each
        return group
    shapes: dict[int, tuple[bool, float, bool]] = {}  # id(env) -> (has_max, most, blockable)
    blocks: dict[tuple[int, int, Any], int] = {}
    firsts: list[_Row] = []  # each block's first row
    rows: list[_Row] = []
    which: list[int] = []
    left: list[_Row] = []
    limit = table.min_context_window
    for row in group:
        env = row.env
        shape = shapes.get(id(env))
        if shape is None:
            m = env["max_tokens"]
            most = float(m or 0)
            shape = shapes[id(env)] = (
                m is not None,
                most,
                env["max_cost"] is None and abs(most) < big,
            )
        tokens = row.tokens
        if not shape[2] or not abs(tokens) < big or tokens + shape[1] > limit:
            left.append(row)
            continue
        out = row.out
        out = (out if type(out) is frozenset else frozenset(out)) if out else None
        key = (id(env), id(row.columns), out)
        at = blocks.get(key)
        if at is None:
            at = blocks[key] = len(firsts)
            firsts.append(row)
        rows.append(row)
        which.append(at)
    if not rows:
        return left
    # each block's latencies: its snapshot's measured columns (blocks share a few)
    width = len(table.keys)
    n_blocks = len(firsts)
    lats_of: dict[int, int] = {}
    distinct: list[Any] = []
    sources = []
    for row in firsts:
        columns = row.columns
        at = lats_of.get(id(columns))
        if at is None:
            at = lats_of[id(columns)] = len(distinct)
            distinct.append(table.latency_priors if columns is None else columns.lats)
        sources.append(at)
    lats = np.fromiter(chain.from_iterable(distinct), dtype=np.float64, count=len(distinct) * width)
    lats = lats.reshape(len(distinct), width)
    if not np.isfinite(lats).all():
        return group  # the matrix ranks none of them either (one by one)
    lat = lats[np.array(sources)]
    keep = np.ones((n_blocks, width), dtype=bool)
    drops: dict[int, Any] = {}  # id(a set of positions dropped) -> the positions kept
    for b, row in enumerate(firsts):  # a block's eligibility, as `_matrix` makes a row's
        env = row.env
        has_max, most, _ = shapes[id(env)]
        need = _needs_mask(env)
        if need & ~table.common_mask:
            keep[b] &= (vec.masks & need) == need
        if has_max and most > table.min_max_tokens:
            keep[b] &= ~(most > vec.max_tokens)
        out = row.out
        if out:  # (blocks mostly share their snapshot's set)
            stays = drops.get(id(out))
            if stays is None:
                stays = drops[id(out)] = np.ones(width, dtype=bool)
                stays[list(out)] = False
            keep[b] &= stays
        floor = env["min_quality"]
        if floor is not None:
            keep[b] &= ~(vec.qualities < np.float64(floor))
        cap = env["max_latency"]
        if cap is not None:
            keep[b] &= ~(lat[b] > np.float64(cap))
    # each block's candidates for its rows' first HEAD, as `_matrix` picks a row's: the
    # eligible whose latency is at most the block's HEAD-th smallest (a tie at the HEAD-th
    # is broken by each row's costs, among them)
    major = np.where(keep, lat, np.inf)
    counts = keep.sum(axis=1)
    pick = keep
    if width > HEAD:
        kth = np.partition(major, HEAD - 1, axis=-1)[:, HEAD - 1]
        pick = keep & (major <= kth[:, None])
    _, cand = np.nonzero(pick)  # block by block, each block's positions ascending
    per_block = pick.sum(axis=1)
    block_start = np.cumsum(per_block) - per_block
    # each row's candidates (its block's), row by row, in `_matrix`'s order
    n = len(rows)
    blk = np.array(which)
    per_row = per_block[blk]
    row_start = np.cumsum(per_row) - per_row
    at_row = np.repeat(np.arange(n), per_row)
    at = np.arange(int(per_row.sum())) + np.repeat(block_start[blk] - row_start, per_row)
    at_col = cand[at]
    tokens = [row.tokens for row in rows]
    has_max = [shapes[id(row.env)][0] for row in firsts]  # by block
    most = [shapes[id(row.env)][1] for row in firsts]
    inp = np.array(tokens, dtype=np.float64)[at_row]
    cost = inp * vec.input_prices[at_col]  # (the matrix's IEEE operations, on these alone)
    if all(has_max):
        cost += np.array(most, dtype=np.float64)[blk][at_row] * vec.output_prices[at_col]
    elif any(has_max):
        cost += np.where(
            np.array(has_max)[blk][at_row],
            np.array(most, dtype=np.float64)[blk][at_row] * vec.output_prices[at_col],
            vec.default_output_costs[at_col],
        )
    else:
        cost += vec.default_output_costs[at_col]
    cost /= 1e6
    lat_at = lat[blk[at_row], at_col]
    keys: tuple[Any, ...] = (cost, lat_at)  # (the picked are eligible: no inf)
    if not table.view.index_sorted:
        keys = (vec.indexes[at_col], *keys)
    flat = np.lexsort((*keys, at_row))
    cols = at_col[flat].tolist()
    ranked_costs = cost[flat].tolist()
    ranked_lats = lat_at[flat].tolist()
    starts = row_start.tolist()
    row_counts = counts[blk].tolist()
    tail = _BlockTail(vec, lat, keep, which, tokens, most, has_max, table.view.index_sorted)
    _heads(rows, row_counts, starts, cols, ranked_costs, ranked_lats, tail)
    return left


def _matrix(group: list[_Row]) -> bool:
    """Rank a group of rows (one route) on a [rows × models] matrix; False
    (nothing set) when a cost or latency is not finite (NaN and inf sort differently in
    numpy and in Python's sort: the rows are ranked one by one)."""
    import numpy as np

    route = group[0].route
    table = route.table
    vec = table.vectors()
    envs = [row.env for row in group]  # read for their shape's fields alone
    n = len(envs)
    inp = np.fromiter([row.tokens for row in group], dtype=np.float64, count=n)
    given = [e["max_tokens"] for e in envs]
    has_max = np.fromiter((m is not None for m in given), dtype=bool, count=n)
    most = np.fromiter((m or 0 for m in given), dtype=np.float64, count=n)
    if not (np.abs(inp) < 2.0**53).all() or not (np.abs(most) < 2.0**53).all():
        return False  # ints a float cannot hold exactly: Python's int * float rounds once
    if has_max.all():  # (the same IEEE operations as one expression, fewer temporaries)
        output = most[:, None] * vec.output_prices
    elif has_max.any():
        output = np.where(
            has_max[:, None], most[:, None] * vec.output_prices, vec.default_output_costs
        )
    else:
        output = vec.default_output_costs
    cost = inp[:, None] * vec.input_prices
    cost += output
    cost /= 1e6
    # each row's latencies: its snapshot's measured columns (rows share a few), else priors
    rows_of: dict[int, int] = {}
    distinct: list[Any] = []
    sources: list[Measured | None] = []  # each distinct row of `lats`: its columns
    which = []
    for row in group:
        columns = row.columns
        key = id(columns)
        at = rows_of.get(key)
        if at is None:
            at = rows_of[key] = len(distinct)
            distinct.append(table.latency_priors if columns is None else columns.lats)
            sources.append(columns)
        which.append(at)
    width = len(table.keys)
    lats = np.fromiter(chain.from_iterable(distinct), dtype=np.float64, count=len(distinct) * width)
    lats = lats.reshape(len(distinct), width)
    if not np.isfinite(cost).all() or not np.isfinite(lats).all():
        return False
    lat = lats[np.array(which)]
    # each row's capabilities asked: once per distinct environment (a shape's rows share
    # its template)
    masks: dict[int, int] = {}
    for e in envs:
        if id(e) not in masks:
            masks[id(e)] = _needs_mask(e)
    needs = np.fromiter([masks[id(e)] for e in envs], dtype=np.int64, count=n)
    context = inp + most  # exact: both are integers under 2**53
    keep = np.ones(cost.shape, dtype=bool)
    # the rows some candidate cannot serve (as `_eligible_fast` asks of one request)
    some = ((needs & ~table.common_mask) != 0) | (context > table.min_context_window)
    some |= has_max & (most > table.min_max_tokens)
    if some.any():
        at = np.flatnonzero(some)
        need = needs[at, None]
        fits = (vec.masks & need) == need
        fits &= ~(context[at, None] > vec.context_windows)
        fits &= ~(has_max[at, None] & (most[at, None] > vec.max_tokens))
        keep[at] = fits
    # the positions dropped now (health, retired): rows mostly share their snapshot's set
    dropping: dict[frozenset[int], list[int]] = {}
    for i, row in enumerate(group):
        out = row.out
        if out:
            key = out if type(out) is frozenset else frozenset(out)
            at = dropping.get(key)
            if at is None:
                dropping[key] = [i]
            else:
                at.append(i)
    # each row's set dropped (0: none, k: the k-th row of `stays`)
    drops = np.zeros(n, dtype=np.int64)
    stays = np.ones((len(dropping) + 1, cost.shape[1]), dtype=bool)
    for k, (out, at) in enumerate(dropping.items(), 1):
        stays[k, list(out)] = False
        keep[at] &= stays[k]
        drops[at] = k
    # the rows whose eligibility is their set dropped alone (`_weighted`'s blocks)
    plain = ~some
    floors = [e["min_quality"] for e in envs]
    if any(f is not None for f in floors):
        floor = np.array([-np.inf if f is None else f for f in floors], dtype=np.float64)
        keep &= ~(vec.qualities < floor[:, None])
        plain &= floor == -np.inf
    caps = [e["max_cost"] for e in envs]
    if any(c is not None for c in caps):
        cap = np.array([np.inf if c is None else c for c in caps], dtype=np.float64)
        keep &= ~(cost > cap[:, None])
        plain &= cap == np.inf
    caps = [e["max_latency"] for e in envs]
    if any(c is not None for c in caps):
        cap = np.array([np.inf if c is None else c for c in caps], dtype=np.float64)
        keep &= ~(lat > cap[:, None])
        plain &= cap == np.inf
    strategy = route.settings.strategy
    if strategy == "weighted":
        blocks = _Blocks(lats, sources, np.array(which), stays, drops, plain)
        scores = _weighted(group, keep, cost, lat, blocks)
        if scores is None:
            return False
        keys: tuple[Any, ...] = (np.where(keep, -scores, np.inf),)  # -x is exact
    else:
        major, minor = (cost, lat) if RANKED[strategy][0] == "cost" else (lat, cost)
        keys = (minor, np.where(keep, major, np.inf))
    # ineligible last (every key of the eligible is finite: inf sorts after them); then the
    # strategy's keys; ties by catalog order, then route order (lexsort is stable: a route
    # whose positions are in catalog order needs neither key). Only each row's first HEAD
    # are sorted here: the candidates whose first key is at most the row's HEAD-th smallest
    # (every one of the first HEAD is among them), one flat lexsort grouped by row
    if not table.view.index_sorted:
        keys = (np.broadcast_to(vec.indexes, cost.shape), *keys)
    major = keys[-1]
    counts = keep.sum(axis=1)
    pick = keep
    if major.shape[1] > HEAD:
        kth = np.partition(major, HEAD - 1, axis=-1)[:, HEAD - 1]
        pick = keep & (major <= kth[:, None])
    at_row, at_col = np.nonzero(pick)  # row by row, each row's positions ascending
    flat = np.lexsort((*(k[at_row, at_col] for k in keys), at_row))
    at_row, at_col = at_row[flat], at_col[flat]
    cols = at_col.tolist()
    ranked_costs = cost[at_row, at_col].tolist()
    ranked_lats = lat[at_row, at_col].tolist()
    starts = np.concatenate(([0], np.cumsum(pick.sum(axis=1))[:-1])).tolist()
    _heads(group, counts.tolist(), starts, cols, ranked_costs, ranked_lats, _Whole(keys, cost, lat))
    return True


def _heads(
    rows: list[_Row],
    counts: list[int],
    starts: list[int],
    cols: list[int],
    costs: list[float],
    lats: list[float],
    rest: _Whole | _BlockTail,
) -> None:
    """Each row's first `HEAD` ranked models (columns, costs, latencies) out of the flat
    ranking, where row i's `counts[i]` candidates start at `starts[i]`; `rest` orders a
    row's candidates past its head when the limiter reads that far."""
    for i, (row, count, start) in enumerate(zip(rows, counts, starts, strict=True)):
        if not count:  # left None: the side asks the general path why (`_rank_one`)
            continue
        end = start + (count if count < HEAD else HEAD)
        row.ranked = cols[start:end]
        row.costs = costs[start:end]
        row.lats = lats[start:end]
        if count > HEAD:
            row.rest = rest
            row.index = i
            row.count = count


class _Blocks(NamedTuple):
    """A weighted group's rows by block (`_matrix`): the rows of one snapshot's columns and
    one set of positions dropped, whose eligibility is that set's alone (`plain`), have
    the same eligible latencies and success rates: their scores but the cost term are the
    same, computed once per block."""

    lats: Any  # [distinct columns × models]
    sources: list[Measured | None]  # each distinct row's columns
    which: Any  # each row's distinct columns
    stays: Any  # [sets dropped × models] (row 0: none dropped)
    drops: Any  # each row's set dropped
    plain: Any  # each row: its eligibility is its set's alone


def _weighted(group: list[_Row], keep: Any, cost: Any, lat: Any, blocks: _Blocks) -> Any:
    """`strategies.weighted`'s scores of each row's eligible models (the same arithmetic in
    the same order: `bases` over the row's eligible models, less k * cost), or None when
    one is not finite (the rows are ranked one by one). The bases of the plain rows are
    computed per block (the same values: the same operations on the same numbers)."""
    import numpy as np

    route = group[0].route
    view = route.table.view
    w_latency, w_cost, w_success = view.factor_weights
    width = len(view.keys)
    eligible = keep.any(axis=1)
    quality = None
    if view.quality_terms is not None:
        quality = np.array(view.quality_terms, dtype=np.float64)
    # each distinct columns' success rates: measured, else 1.0
    rates = np.array(
        [
            [1.0] * width if columns is None or columns.rates is None else columns.rates
            for columns in blocks.sources
        ],
        dtype=np.float64,
    )

    def bases(keep: Any, lat: Any, succ: Any) -> Any:
        max_latency = np.where(keep, lat, -np.inf).max(axis=1)
        spread = max_latency[:, None]
        term = np.where(spread > 0, 1.0 - lat / spread, 1.0)
        base = w_latency * term + w_cost
        base = base + w_success * succ
        if quality is not None:
            base = base + quality
        return base

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        max_cost = np.where(keep, cost, -np.inf).max(axis=1)
        k = np.where(max_cost > 0, w_cost / max_cost, 0.0)
        if not np.isfinite(k[eligible]).all():
            return None
        plain = blocks.plain
        at = None if plain.all() else np.flatnonzero(plain)  # (None: every row)
        which, drops = blocks.which, blocks.drops
        if at is not None:
            which, drops = which[at], drops[at]
        # the plain rows' blocks: (distinct columns, set dropped)
        codes, block = np.unique(which * len(blocks.stays) + drops, return_inverse=True)
        of_columns, of_drops = np.divmod(codes, len(blocks.stays))
        by_block = bases(blocks.stays[of_drops], blocks.lats[of_columns], rates[of_columns])
        if at is None:
            base = by_block[block]
        else:
            base = np.empty(cost.shape, dtype=np.float64)
            base[at] = by_block[block]
            rest = np.flatnonzero(~plain)
            base[rest] = bases(keep[rest], lat[rest], rates[blocks.which[rest]])
        scores = base - k[:, None] * cost
    if not np.isfinite(scores[keep]).all():
        return None
    return scores
