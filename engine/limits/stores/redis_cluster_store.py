"""`redis+cluster://host:port[,host:port…][?timeout=…]`: limits shared by many app instances
on a Redis Cluster, state sharded by key (docs/redis.md, Cluster).

The single-node store (`redis_store.RedisStore`) tags every key `{policyctl}`: one slot, so
one shard carries every decision. Here a bucket's hash tag is its own key's: a `user`
bucket `{u:<user>}`, an `ip` bucket `{ip:<ip>}`, a named scope's `{k:<scope>:<key>}`, and
the scopes everyone shares (global, provider, model) the shared slot `{policyctl}`
(`bucket_tag`). A key with a brace in it is tagged by its hash, so a tag never holds one.

A decision's buckets are grouped by slot, and each slot costs one call of the same
`redis_gcra.lua` (check-and-consume of that slot's buckets, atomically). The calls run in
a fixed order, per-key slots first (sorted), the shared slot last; a later slot that denies
refunds what the earlier ones took (`redis_settle.lua` adjust), so no scope keeps a token
unless every scope admitted. Which candidate is taken is settled by the first call whose
slot holds a candidate's buckets; a later slot that denies that candidate's own buckets
sends the decision back to the next candidate (the earlier slots refunded first).

Reservations (reserve-then-settle): each slot's call writes its part of the record,
`{TAG}:r:<request id>`; one more call writes the directory `{policyctl}:rd:<request id>`
(`redis_cluster_directory.lua`) that names the parts, so an outcome reaching any instance
finds them. In-flight gauges are tagged like buckets (a per-user gauge on its user's shard,
global and provider ones in the shared slot), taken slot by slot in the same order with a
full gauge handing back the earlier slots' takes; a lease holding per-key gauges notes their
slots in its directory `{l:<lease>}:ld:<lease>` (the lease's own slot) for a release on any
instance. An affinity pin lives in its own slot, `{p:<route:keyhash>}:p:…`. Quotas and
provider health stay in the shared slot as on one node.

With `?lease=auto` the shared slot's buckets, and those of per-key slots hot on this
instance (`lease_hot`), are spent from this instance's leases (`leases.py`): the exact
slots are asked first, the leased ones checked last, so a leased denial refunds them.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from engine.limits.stores.base import (
    AcquireResult,
    Adjustment,
    ConfigurationError,
    Gauge,
    Outcome,
    PinWrite,
    Settled,
    Settlement,
    Slots,
    SlotTake,
    Spec,
    StoreUnavailableError,
    Ticket,
    Usage,
    available,
)
from engine.limits.stores.leases import (
    LEASE_OPTIONS,
    Granted,
    Heat,
    LeaseBook,
    LeaseConfig,
    Renewal,
    parse_lease_options,
)
from engine.limits.stores.redis_store import (
    _UNIT_FLAGS,
    EXPIRED,
    GAUGES,
    INFLIGHT_SCRIPT,
    KEEP_MS,
    LEASES,
    OUTSTANDING,
    PIN_SCRIPT,
    PINS,
    SCRIPT,
    SETTLE_SCRIPT,
    RedisStore,
    _optional,
    _text,
    taken_buckets,
)

CLUSTER_SCHEME = "redis+cluster://"
SHARED_TAG = "policyctl"  # global, provider and model buckets, and everything not a bucket
SHARED_SCOPES = frozenset({"global", "provider", "model"})
DIRECTORY = "{" + SHARED_TAG + "}:rd:"
DIRECTORY_SCRIPT = (Path(__file__).with_name("redis_cluster_directory.lua")).read_text(
    encoding="utf-8"
)
LEASE_SCRIPT = (Path(__file__).with_name("redis_lease.lua")).read_text(encoding="utf-8")
# a slot's check-and-consume with that slot's in-flight gauges taken in the same call
GAUGE_FOLD_SCRIPT = (
    (Path(__file__).with_name("redis_gauge_fold.lua"))
    .read_text(encoding="utf-8")
    .replace("--[[redis_gcra.lua]]", SCRIPT)
)
NOTE_BATCH = 32  # lease directories pending before they are written (one pipeline)
NOTE_MS = 50.0  # ... or the oldest pending this long (the engine's clock)
TOMBSTONE_MS = 600_000  # a release asked before its directory was written waits this long
_SCRIPTS = {
    "_script": SCRIPT,
    "_inflight_script": INFLIGHT_SCRIPT,
    "_settle_script": SETTLE_SCRIPT,
    "_pin_script": PIN_SCRIPT,
    "_directory_script": DIRECTORY_SCRIPT,
    "_lease_script": LEASE_SCRIPT,
    "_gauge_fold_script": GAUGE_FOLD_SCRIPT,
}


def _safe(key: str) -> str:
    """A key as it may stand in a hash tag: as is, unless it holds a brace (then hashed)."""
    if "{" in key or "}" in key:
        return "h" + hashlib.sha1(key.encode()).hexdigest()[:20]
    return key


def bucket_tag(bucket: str) -> str:
    """The hash tag (without braces) of a bucket key `scope/unit/window/key`: its slot."""
    scope, _, rest = bucket.partition("/")
    parts = rest.split("/", 2)
    if scope in SHARED_SCOPES or len(parts) < 3:
        return SHARED_TAG
    key = parts[2]
    if scope == "user":
        return "u:" + _safe(key)
    if scope == "ip":
        return "ip:" + _safe(key)
    return f"k:{_safe(scope)}:{_safe(key)}"


def bucket_redis_key(bucket: str) -> str:
    return "{" + bucket_tag(bucket) + "}:b:" + bucket


def gauge_redis_key(gauge: str) -> str:
    """An in-flight gauge (`user/concurrent/600000/<user>`): tagged as a bucket would be, so
    a per-user gauge lives on its user's shard and a global or provider one in the shared
    slot."""
    return "{" + bucket_tag(gauge) + "}:" + GAUGES[len("{policyctl}:") :] + gauge


def lease_record(tag: str, lease: str) -> str:
    """The slots a lease holds in one slot's gauges (`redis_inflight.lua` take/release)."""
    return "{" + tag + "}:" + LEASES[len("{policyctl}:") :] + lease


def lease_directory(lease: str) -> str:
    """Where a lease whose gauges span per-key slots lists those slots: the lease's own
    slot, so these spread over the masters too."""
    return "{l:" + _safe(lease) + "}:ld:" + lease


def pin_redis_key(key: str) -> str:
    """An affinity pin (`route:keyhash`): its own slot, so pins spread over the masters."""
    return "{p:" + _safe(key) + "}:" + PINS[len("{policyctl}:") :] + key


def _bucket_of(redis_key: str) -> str:
    """The bucket key a Redis key holds (a tag never has a `}`)."""
    return redis_key.split("}:b:", 1)[1]


def parse_cluster_url(url: str) -> tuple[list[tuple[str, int]], float]:
    """The startup nodes and socket timeout of a `redis+cluster://` URL; a ConfigurationError
    saying what is wrong otherwise (the lease options: `cluster_lease_config`)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"timeout"} - LEASE_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"state store `{url}`: unknown option `{unknown[0]}` (a cluster URL takes"
            " `timeout`, `lease`, `lease_max`, `lease_ms` and `lease_hot`)"
        )
    try:
        timeout = float(query.get("timeout", ["0.05"])[0])
    except ValueError:
        raise ConfigurationError(f"state store `{url}`: `timeout` must be seconds") from None
    if not timeout > 0:
        raise ConfigurationError(f"state store `{url}`: `timeout` must be more than 0 seconds")
    hosts = url[len(CLUSTER_SCHEME) :].split("?", 1)[0].split("#", 1)[0].rstrip("/")
    if "@" in hosts or "/" in hosts:
        raise ConfigurationError(
            f"state store `{url}`: a cluster URL is `redis+cluster://host:port[,host:port…]`"
            " (no user, password or database)"
        )
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(
                f"state store `{url}`: `{item.strip()}` is not host:port (a cluster URL is"
                " `redis+cluster://host:port[,host:port…]`)"
            )
        nodes.append((host.strip("[]"), int(port)))
    return nodes, timeout


class _Call:
    """One slot's check-and-consume, as sent: its specs in KEYS order (shared ones, then
    each option's), and where each came from in the decision."""

    __slots__ = ("option_base", "options", "shared", "tag")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.shared: list[tuple[int, Spec]] = []  # (position in the decision's shared, spec)
        self.options: list[list[tuple[int, Spec]]] = []  # per option given: (index in it, spec)
        self.option_base = 0  # the decision's option index of options[0]


@dataclass(slots=True)
class _Folded:
    """One slot's gauges in its bucket call (`redis_gauge_fold.lua`): the decision's indexes
    of them, where the slots each held go, and, when one was full (nothing taken then),
    its index and when it frees."""

    take: SlotTake
    indexes: list[int]
    held: dict[int, int]
    full: tuple[int, float | None] | None = None


class RedisClusterStore(RedisStore):
    """`RedisStore` with its buckets and reservations sharded by key over a Redis Cluster."""

    KIND = "redis cluster"
    folds_slots = True  # per-key in-flight gauges ride in their slot's bucket call

    def __init__(self, url: str) -> None:  # the base's __init__ opens a single-node client
        try:
            import redis
            import redis.cluster
        except ImportError:  # pragma: no cover - redis is a dependency of the redis extra
            raise ConfigurationError(
                f"state store `{url}` needs the redis client: pip install 'policyctl[redis]'"
            ) from None
        self.url = url
        self._nodes, self._timeout = parse_cluster_url(url)
        self.leases = LeaseBook(parse_lease_options(url, urlsplit(url).query))
        self.heat = Heat(self.leases.config)  # which per-key slots are hot here (`lease_hot`)
        self._last_now = 0.0
        self._lease_lock = (
            threading.Lock()
        )  # the lease book is this instance's, one thread at a time
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        exceptions = redis.exceptions
        self._errors = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            exceptions.ClusterError,  # CLUSTERDOWN, MASTERDOWN
            exceptions.TryAgainError,
            exceptions.RedisClusterException,  # no node reachable, a slot not covered
            OSError,
        )
        self._response_error = exceptions.ResponseError
        self.round_trips = 0
        self.instance = uuid.uuid4().hex
        self._outstanding = "{" + SHARED_TAG + "}:" + OUTSTANDING[len("{policyctl}:") :]
        self._outstanding += self.instance
        self._expired = "{" + SHARED_TAG + "}:" + EXPIRED[len("{policyctl}:") :] + self.instance
        # leases whose per-key gauges were taken in a bucket call: their directories wait
        # here (lease -> noted at, tags, keep ms) to be written in batches (`flush_notes`),
        # and this instance remembers their slots (lease -> tags, expires at) to release
        # them in one call
        self._notes_lock = threading.Lock()
        self._pending: dict[str, tuple[float, list[str], int]] = {}
        self._held_tags: dict[str, tuple[list[str], float]] = {}
        self.notes_written = 0  # directories written by `flush_notes`

    # ------------------------------------------------------------------ the client

    @property
    def _redis(self) -> Any:
        """The cluster client, made on first use (it reads the slot map then): a cluster
        that cannot be reached is a `StoreUnavailableError`, never a crash at start."""
        if self._client is None:
            from redis.backoff import NoBackoff
            from redis.cluster import ClusterNode, RedisCluster
            from redis.retry import Retry

            try:
                client = RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),  # a decision never waits on retries
                    health_check_interval=0,
                )
            except self._errors as err:
                raise StoreUnavailableError(f"redis cluster at `{self.url}`: {err}") from None
            self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
            self._client = client
        return self._client

    def _registered(self, name: str) -> Any:
        if self._client is None:
            self._redis  # noqa: B018 - connects, registers the scripts
        return self._scripts[name]

    _script = property(lambda self: self._registered("_script"))
    _inflight_script = property(lambda self: self._registered("_inflight_script"))
    _settle_script = property(lambda self: self._registered("_settle_script"))
    _pin_script = property(lambda self: self._registered("_pin_script"))
    _directory_script = property(lambda self: self._registered("_directory_script"))
    _lease_script = property(lambda self: self._registered("_lease_script"))
    _gauge_fold_script = property(lambda self: self._registered("_gauge_fold_script"))

    @property
    def lease_config(self) -> LeaseConfig:
        return self.leases.config

    # ------------------------------------------------------------------ buckets

    def acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
        pin: PinWrite | None = None,
        slots: SlotTake | None = None,
    ) -> AcquireResult:
        """`RedisStore.acquire`; with `slots`, their gauges taken in the same calls
        (`SlotTake`)."""
        return self._acquire(shared, options, now, consume, None, pin, slots)

    def acquire_reserving(
        self,
        shared: Sequence[Spec],
        options: Sequence[Sequence[Spec]],
        now: float,
        ticket: Ticket,
        *,
        pin: PinWrite | None = None,
        slots: SlotTake | None = None,
    ) -> AcquireResult:
        return self._acquire(shared, options, now, True, ticket, pin, slots)

    def _acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        consume: bool,
        ticket: Ticket | None,
        pin: PinWrite | None,
        take: SlotTake | None = None,
    ) -> AcquireResult:
        if take is not None:
            take.asked = True
        shared_list = [Spec(*s) for s in shared]
        option_list = [[Spec(*s) for s in option] for option in options]
        n = len(option_list)
        tags = {bucket_tag(s[0]) for s in shared_list}
        option_tags = {bucket_tag(s[0]) for option in option_list for s in option}
        every = tags | option_tags
        if not every and take is None:
            return AcquireResult(0, (), None)  # nothing to check: every option fits
        self._last_now = max(self._last_now, now)  # the engine's clock, for `close`
        leasing = self._leasing(shared_list, option_list, consume, ticket)
        # spent from this instance's leases: the shared slot, and the per-key slots whose
        # key is hot here (`lease_hot`; never one holding a candidate's or a reserved bucket)
        leased_tags = {SHARED_TAG} if leasing else set()
        if leasing and self.leases.config.lease_hot > 0:
            with self._lease_lock:
                leased_tags |= self._hot(
                    shared_list, tags - option_tags - {SHARED_TAG}, now, ticket
                )
        # per-key slots asked first (in a fixed order), then the leased ones, the shared slot
        # last: a leased check denying hands back what the asked slots took
        asked = sorted(every - leased_tags - {SHARED_TAG})
        order = asked + ([SHARED_TAG] if SHARED_TAG in every - leased_tags else [])
        order += sorted(leased_tags & every - {SHARED_TAG})
        order += [SHARED_TAG] if SHARED_TAG in every & leased_tags else []
        # in-flight gauges: folded into the calls of the per-key slots that hold this
        # decision's own buckets; any other (a shared gauge, a key with no bucket here, a
        # hot one) and they are all taken first, on their own, as `take_slots` does
        gauge_at: dict[str, list[int]] = {}
        if take is not None:
            for index, gauge in enumerate(take.gauges):
                gauge_at.setdefault(bucket_tag(gauge[0]), []).append(index)
            if not set(gauge_at) <= (set(asked) & tags) - option_tags:
                return self._gauges_first(take, shared_list, option_list, now, consume, ticket, pin)
        held: dict[int, int] = {}
        gauged: list[str] = []  # slots whose gauges this pass took
        if leased_tags:  # an empty lease that cannot renew denies before any per-key call
            with self._lease_lock:
                denied = self._lease_precheck(shared_list, option_list, now, leased_tags)
            if denied is not None:
                if take is not None:  # nothing asked, nothing taken
                    take.slots = Slots((0,) * len(take.gauges), None, None)
                return denied
        start = 0
        flushed = False  # pending directories written once, when a folded gauge is full
        while True:
            fixed: int | None = None if n else 0
            taken: list[tuple[str, list[Spec]]] = []  # consumed this pass: (tag, specs)
            reserved: list[str] = []  # tags whose call wrote a reservation part
            known: dict[tuple[int, int], Outcome] = {}  # (-1, i) shared, (k, j) option k
            spent: list[Spec] = []  # spent from leases this pass
            for tag in order:
                call = _Call(tag)
                call.shared = [(i, s) for i, s in enumerate(shared_list) if bucket_tag(s[0]) == tag]
                resolving = fixed is None and tag in option_tags
                if resolving:
                    call.option_base = start
                    call.options = [
                        [(j, s) for j, s in enumerate(option_list[k]) if bucket_tag(s[0]) == tag]
                        for k in range(start, n)
                    ]
                elif fixed is not None and n:
                    call.option_base = fixed
                    call.options = [
                        [
                            (j, s)
                            for j, s in enumerate(option_list[fixed])
                            if bucket_tag(s[0]) == tag
                        ]
                    ]
                if not call.shared and not any(call.options):
                    continue  # nothing of this decision's here (the candidate skipped it)
                leased = tag in leased_tags
                if leased:
                    with self._lease_lock:
                        option, failed, outcomes, wrote = self._leased_call(call, now)
                elif tag in gauge_at:
                    assert take is not None
                    folded = _Folded(take, gauge_at[tag], held)
                    try:
                        option, failed, outcomes, wrote = self._slot_call(
                            call, now, consume, ticket, folded
                        )
                    except StoreUnavailableError:
                        with contextlib.suppress(StoreUnavailableError):
                            self._release_in(gauged, take.lease)
                        raise
                    if folded.full is not None:  # nothing taken in this slot
                        self._refund(taken, now)
                        self._release_in(gauged, take.lease)
                        gauged = []
                        if ticket is not None and reserved:
                            self._drop_parts(reserved, ticket.request_id)
                        # a slot another instance released before this one wrote its
                        # directory is freed by writing it: then asked again, once
                        if not flushed and self._pending:
                            flushed = True
                            with contextlib.suppress(StoreUnavailableError):
                                if self.flush_notes(now)[1]:
                                    break
                        take.slots = self._full(take, order, gauge_at, tag, folded.full, now, held)
                        return AcquireResult(None, (), None)
                    if failed is None and consume:
                        gauged.append(tag)
                else:
                    try:
                        option, failed, outcomes, wrote = self._slot_call(
                            call, now, consume, ticket
                        )
                    except StoreUnavailableError:
                        if take is not None:
                            with contextlib.suppress(StoreUnavailableError):
                                self._release_in(gauged, take.lease)
                        raise
                for place, outcome in outcomes:
                    known[place] = outcome
                if failed is None:
                    if leased:
                        spent += [o[0] for _, o in outcomes]
                    elif consume:  # (the shared slot is last: never refunded)
                        taken.append((tag, [o[0] for _, o in outcomes]))
                        if wrote:
                            reserved.append(tag)
                    if resolving:
                        fixed = start + (option or 0)
                    continue
                # denied here: hand back what the earlier slots took
                self._refund(taken, now)
                if take is not None:
                    self._release_in(gauged, take.lease)
                    gauged = []
                if spent:
                    with self._lease_lock:
                        for spec in spent:
                            self.leases.unspend(spec)
                for _, specs in taken:
                    for spec in specs:
                        for place, outcome in list(known.items()):
                            if outcome[0] is spec:
                                known[place] = _before(outcome, now)
                failed_place = failed
                retry = (
                    failed_place[0] >= 0 and not resolving and fixed is not None and fixed + 1 < n
                )
                if retry and ticket is not None and reserved:
                    self._drop_parts(reserved, ticket.request_id)
                if retry:
                    start = fixed + 1  # type: ignore[operator]
                    break
                if take is not None:  # (a denial's statuses do not report the gauges)
                    count = len(take.gauges)
                    take.slots = Slots(tuple(held.get(i, 0) for i in range(count)), None, None)
                return self._denial(shared_list, option_list, known, failed_place, now)
            else:
                if fixed is None:
                    fixed = start  # no slot held a candidate's bucket: the first one fits
                if ticket is not None and reserved:
                    self._note(ticket, reserved, now)
                if pin is not None and consume and fixed < len(pin.models):  # the pin's own slot
                    self._write_pin(pin, pin.models[fixed])
                if take is not None:
                    take.slots = Slots(tuple(held[i] for i in range(len(take.gauges))), None, None)
                    if gauged:
                        self._noted(take, gauged, now)
                chosen = option_list[fixed] if n else []
                outcomes = [known[(-1, i)] for i in range(len(shared_list))]
                outcomes += [known[(fixed, j)] for j in range(len(chosen))]
                return AcquireResult(fixed, tuple(outcomes), None)

    # ------------------------------------------------------------------ leases

    def _leasing(
        self,
        shared: list[Spec],
        options: list[list[Spec]],
        consume: bool,
        ticket: Ticket | None,
    ) -> bool:
        """Whether this decision's shared-slot buckets are spent from leases: `lease=auto`,
        consuming (a dry run asks the bucket), and no shared bucket reserved for settling
        (a token or spend limit on a shared scope with reserve-then-settle asks the bucket,
        which writes the reservation's part in the same call)."""
        if not (self.leases.config.leased and consume):
            return False
        if ticket is not None and ticket.units:
            every = shared + [s for option in options for s in option]
            if any(bucket_tag(s[0]) == SHARED_TAG and s[0] in ticket.units for s in every):
                return False
        return True

    def _hot(
        self, shared: list[Spec], tags: set[str], now: float, ticket: Ticket | None
    ) -> set[str]:
        """The per-key slots of this decision whose key is hot on this instance (counted
        here, once per decision), less those holding a bucket reserved for settling."""
        reserved = set(ticket.units) if ticket is not None else set()
        hot = {tag for tag in sorted(tags) if self.heat.count(tag, now)}
        for spec in shared:
            if spec[0] in reserved:
                hot.discard(bucket_tag(spec[0]))
        # a key gone cold: its expired lease handed back now (once), not parked until close
        back = [
            Renewal(s[0], lease.capacity, lease.rate, lease.tokens, 0.0, 0.0)
            for s in shared
            if bucket_tag(s[0]) in tags - hot
            and (lease := self.leases.leases.get(s[0])) is not None
            and lease.tokens > 0
            and now >= lease.expires_at
        ]
        for tag in sorted({bucket_tag(r.key) for r in back}):  # one call per slot
            with contextlib.suppress(StoreUnavailableError):  # kept: handed back on close
                self._send_leases([r for r in back if bucket_tag(r.key) == tag], now)
        return hot

    def _renew(self, specs: list[Spec], now: float) -> None:
        """One `redis_lease.lua` call per slot: the renewals these specs need, and the
        expired leases of other buckets of that slot handed back (nothing to send: no
        call)."""
        by_tag: dict[str, list[Spec]] = {}
        for spec in specs:
            by_tag.setdefault(bucket_tag(spec[0]), []).append(spec)
        for tag, group in by_tag.items():
            renewals = self.leases.renewals(group, now, lambda key, t=tag: bucket_tag(key) == t)
            if renewals:
                self._send_leases(renewals, now)

    def _send_leases(self, renewals: list[Renewal], now: float) -> None:
        argv: list[Any] = [repr(float(now))]
        for r in renewals:
            argv.extend(repr(float(v)) for v in (r.capacity, r.rate, r.give_back, r.want, r.need))
        keys = [bucket_redis_key(r.key) for r in renewals]
        reply = self._call(self._lease_script, keys=keys, args=argv)
        grants = [
            Granted(float(reply[i]), float(reply[i + 1]), float(reply[i + 2]))
            for i in range(0, len(reply), 3)
        ]
        self.leases.apply(renewals, grants, now)

    def _lease_outcome(self, spec: Spec, allowed: bool, now: float) -> Outcome:
        """A leased bucket's outcome: available = this instance's lease and the bucket's
        tokens outside every lease as its last call saw them."""
        lease = self.leases.leases.get(spec.key)
        live = self.leases.live(spec.key, now)
        if lease is None:
            return Outcome(spec, live, allowed, now)
        return Outcome(spec, live + lease.available, allowed, max(now, lease.full_at))

    def _lease_precheck(
        self, shared: list[Spec], options: list[list[Spec]], now: float, leased: set[str]
    ) -> AcquireResult | None:
        """The decision's leased buckets (not a candidate's) renewed first when their lease
        lacks the cost: still short, the decision is denied before any per-key call."""
        specs = [s for s in shared if bucket_tag(s[0]) in leased]
        if not specs or not self.leases.must_renew(specs, now):
            return None
        if not self.leases.dry(specs, now):
            self._renew(specs, now)
        for i, spec in enumerate(shared):
            if bucket_tag(spec[0]) in leased and not self.leases.has_room(spec, now):
                known = {
                    (-1, j): self._lease_outcome(s, self.leases.has_room(s, now), now)
                    for j, s in enumerate(shared)
                    if bucket_tag(s[0]) in leased
                }
                return self._denial(shared, options, known, (-1, i), now)
        return None

    def _leased_call(
        self, call: _Call, now: float
    ) -> tuple[int | None, tuple[int, int] | None, list[tuple[tuple[int, int], Outcome]], bool]:
        """The shared slot's check-and-consume from this instance's leases, in the shape of
        `_slot_call`: the first candidate whose buckets (with the shared ones) the leases
        cover is spent locally; a lease short of the cost renews first (one call for every
        bucket of that candidate), and a renewal that is only due (under the low mark)
        rides along or, when the cluster does not answer, waits for the next decision."""
        attempts: list[list[tuple[int, Spec]]] = call.options if call.options else [[]]
        outcomes: list[tuple[tuple[int, int], Outcome]] = []
        failed: tuple[int, int] | None = None
        for index, option in enumerate(attempts):
            places: list[tuple[tuple[int, int], Spec]] = [((-1, i), s) for i, s in call.shared]
            places += [((call.option_base + index, j), s) for j, s in option]
            specs = [s for _, s in places]
            if self.leases.dry(specs, now):
                pass  # asked too recently to find a batch: denied below, no call
            elif self.leases.must_renew(specs, now):
                self._renew(specs, now)
            else:
                with contextlib.suppress(StoreUnavailableError):
                    self._renew(specs, now)  # due only: the lease still covers this one
            outcomes, failed = [], None
            for place, spec in places:
                fits = self.leases.has_room(spec, now)
                outcomes.append((place, self._lease_outcome(spec, fits, now)))
                if not fits:
                    failed = place
                    break
            if failed is None:
                for _, spec in places:
                    self.leases.spend(spec, now)
                return index, None, outcomes, False
            if failed[0] < 0:
                break  # a shared bucket: no candidate can fit
        return None, failed, outcomes, False

    def return_leases(self) -> None:
        """Hands back every lease's unspent tokens (one call), on the engine's clock as the
        last decision saw it."""
        with self._lease_lock:
            by_tag: dict[str, list[Renewal]] = {}
            for renewal in self.leases.held():
                by_tag.setdefault(bucket_tag(renewal.key), []).append(renewal)
            try:
                for held in by_tag.values():  # one call per slot
                    self._send_leases(held, self._last_now)
            finally:
                self.leases.returned()

    def _slot_call(
        self,
        call: _Call,
        now: float,
        consume: bool,
        ticket: Ticket | None,
        gauges: _Folded | None = None,
    ) -> tuple[int | None, tuple[int, int] | None, list[tuple[tuple[int, int], Outcome]], bool]:
        """One slot's `redis_gcra.lua`: (the option it took relative to those given, or None;
        the place of the bucket that denied, or None; (place, outcome) per bucket it reports;
        whether it wrote a reservation part). With `gauges`: `redis_gauge_fold.lua`, this
        slot's gauges taken in the same call; a full one sets `gauges.full` (nothing taken,
        the rest of the reply empty)."""
        specs = [s for _, s in call.shared]
        for option in call.options:
            specs.extend(s for _, s in option)
        prefix = "{" + call.tag + "}:"
        keys = [prefix + "b:" + s[0] for s in specs]
        argv: list[Any] = [
            repr(float(now)), "1" if consume else "0", len(call.shared), len(call.options),
        ]  # fmt: skip
        argv.extend(len(option) for option in call.options)
        for spec in specs:
            argv.extend((repr(float(spec[1])), repr(float(spec[2])), repr(float(spec[3]))))
        writes = False
        if ticket is not None and consume:
            flags = "".join(_UNIT_FLAGS.get(ticket.units.get(s[0], ""), "-") for s in specs)
            writes = flags.strip("-") != ""
            if writes:
                keys.extend((prefix + "r:" + ticket.request_id, prefix + "ro", prefix + "rx"))
                argv.extend((
                    ticket.request_id, repr(float(ticket.input_tokens)),
                    repr(float(ticket.expires_at)), KEEP_MS, flags,
                ))  # fmt: skip
        script = self._script
        if gauges is not None:
            take, indexes, held = gauges.take, gauges.indexes, gauges.held
            script = self._gauge_fold_script
            keys.extend(gauge_redis_key(take.gauges[i][0]) for i in indexes)
            keys.append(lease_record(call.tag, take.lease))
            argv.append(take.lease)
            for i in indexes:
                argv.extend((int(take.gauges[i][1]), repr(float(take.gauges[i][2]))))
            argv.append(len(indexes))
        reply = self._call(script, keys=keys, args=argv)
        option = int(reply[0])
        if gauges is not None:
            if option == -2:  # a gauge full: nothing read or taken past it
                for i, value in zip(indexes, reply[3:], strict=False):
                    held[i] = int(value)
                free_at = _text(reply[2])
                index = indexes[int(reply[1]) - 1]
                gauges.full = (index, float(free_at) if free_at else None)
                return None, None, [], False
            g = int(reply[-1])
            for i, value in zip(indexes, reply[-1 - g : -1], strict=True):
                held[i] = int(value)
            reply = reply[: -1 - g]
        failed_at = int(reply[1])
        values = reply[2:]
        count = len(values) // 3
        places: list[tuple[tuple[int, int], Spec]] = [((-1, i), s) for i, s in call.shared]
        if call.options:
            if option >= 0:
                chosen = call.options[option]
                k = call.option_base + option
            else:
                chosen = call.options[-1]
                k = call.option_base + len(call.options) - 1
            places += [((k, j), s) for j, s in chosen]
        outcomes = [
            (
                places[i][0],
                Outcome(
                    places[i][1],
                    float(values[3 * i]),
                    values[3 * i + 1] in (b"1", "1"),
                    float(values[3 * i + 2]),
                ),
            )
            for i in range(count)
        ]
        failed = outcomes[failed_at - 1][0] if failed_at > 0 else None
        return (option if option >= 0 else None), failed, outcomes, writes and failed is None

    def _gauges_first(
        self,
        take: SlotTake,
        shared: list[Spec],
        options: list[list[Spec]],
        now: float,
        consume: bool,
        ticket: Ticket | None,
        pin: PinWrite | None,
    ) -> AcquireResult:
        """Gauges that cannot ride in a bucket call: taken first (`take_slots`), then the
        buckets; a bucket denial (or a store error) releases them."""
        take.slots = self.take_slots(take.gauges, take.lease, now, consume=consume)
        if take.slots.failed is not None:
            return AcquireResult(None, (), None)
        try:
            result = self._acquire(shared, options, now, consume, ticket, pin)
        except StoreUnavailableError:
            if consume:
                with contextlib.suppress(StoreUnavailableError):
                    self.release_slots(take.lease)
            raise
        if result.option is None and consume:
            with contextlib.suppress(StoreUnavailableError):  # else they run out at expiry
                self.release_slots(take.lease)
        return result

    def _full(
        self,
        take: SlotTake,
        order: list[str],
        gauge_at: dict[str, list[int]],
        tag: str,
        full: tuple[int, float | None],
        now: float,
        held: dict[int, int],
    ) -> Slots:
        """A folded gauge was full: the first full gauge in the decision's order (those
        listed before it in slots not asked yet are read: a denial path only)."""
        failed, free_at = full
        for other in order[order.index(tag) + 1 :]:
            earlier = [i for i in gauge_at.get(other, ()) if i < failed]
            if earlier:
                first, soonest = self._take_in(
                    other, earlier, take.gauges, take.lease, now, False, held
                )
                if first is not None and first < failed:
                    failed, free_at = first, soonest
        return Slots(tuple(held.get(i, 0) for i in range(failed + 1)), failed, free_at)

    def _noted(self, take: SlotTake, tags: list[str], now: float) -> None:
        """A lease whose gauges were taken in bucket calls: its slots remembered here, and
        its directory queued, written with others (`flush_notes`) when the batch is full or
        its oldest note is `NOTE_MS` old."""
        expires = max(g[2] for g in take.gauges)
        keep = max(1, math.ceil(expires - now)) + 1000
        with self._notes_lock:
            self._pending[take.lease] = (now, tags, keep)
            self._held_tags[take.lease] = (tags, expires)
            due = (
                len(self._pending) >= NOTE_BATCH
                or now - next(iter(self._pending.values()))[0] >= NOTE_MS
            )
        if due:
            with contextlib.suppress(StoreUnavailableError):  # kept: written with the next
                self.flush_notes(now)

    def flush_notes(self, now: float | None = None) -> tuple[int, int]:
        """Writes the pending lease directories (one pipeline: a round trip per master that
        holds one), so an outcome reaching another instance finds the slots. A directory
        that finds a release already asked for (`redis_inflight.lua` note: another instance
        got the outcome first) has its slots released here. (How many were written, how many
        of those released.)"""
        with self._notes_lock:
            batch = list(self._pending.items())
            self._pending.clear()
            if now is not None:  # forget the slots of leases past their expiry
                while self._held_tags:
                    lease, (_, expires) = next(iter(self._held_tags.items()))
                    if expires > now:
                        break
                    del self._held_tags[lease]
        if not batch:
            return 0, 0
        client = self._redis
        sha = self._inflight_script.sha
        pipe = client.pipeline(transaction=False)
        for lease, (_, tags, keep) in batch:
            pipe.execute_command("EVALSHA", sha, 1, lease_directory(lease), "note", keep, *tags)
        nodes = {client.get_node_from_key(lease_directory(lease)).name for lease, _ in batch}
        self.round_trips += len(nodes)
        try:
            try:
                replies = pipe.execute(raise_on_error=False)
            except self._errors as err:
                raise StoreUnavailableError(f"{self.KIND} at `{self.url}`: {err}") from None
            if any(isinstance(r, self._response_error) for r in replies):  # not loaded yet
                self._call(client.script_load, INFLIGHT_SCRIPT)
                pipe = client.pipeline(transaction=False)
                for lease, (_, tags, keep) in batch:
                    pipe.execute_command(
                        "EVALSHA", sha, 1, lease_directory(lease), "note", keep, *tags
                    )
                self.round_trips += len(nodes)
                try:
                    replies = pipe.execute()
                except self._errors as err:
                    raise StoreUnavailableError(f"{self.KIND} at `{self.url}`: {err}") from None
        except StoreUnavailableError:
            with self._notes_lock:  # written with the next batch
                for lease, note in batch:
                    self._pending.setdefault(lease, note)
            raise
        self.notes_written += len(batch)
        released = 0
        for (lease, (_, tags, _)), reply in zip(batch, replies, strict=True):
            if int(reply) == 0:  # released already, on another instance
                with self._notes_lock:
                    self._held_tags.pop(lease, None)
                self._release_in(tags, lease)
                released += 1
        return len(batch), released

    def _refund(self, taken: list[tuple[str, list[Spec]]], now: float) -> None:
        """Hands back, slot by slot, the tokens a decision took before a later slot denied
        it (the GCRA time moved back by cost / rate: exactly what the take moved it)."""
        for tag, specs in taken:
            if specs:
                self._adjust(tag, [(s[0], s[2], -s[3]) for s in specs], now)

    def _drop_parts(self, tags: list[str], request_id: str) -> None:
        for tag in tags:
            self._call(self._redis.delete, "{" + tag + "}:r:" + request_id)

    def _note(self, ticket: Ticket, tags: list[str], now: float) -> None:
        keys = [DIRECTORY + ticket.request_id, self._outstanding, self._expired]
        argv: list[Any] = [
            "note", repr(float(now)), ticket.request_id, repr(float(ticket.expires_at)),
            KEEP_MS, *tags,
        ]  # fmt: skip
        self._call(self._directory_script, keys=keys, args=argv)

    def _write_pin(self, pin: PinWrite, model: str) -> None:
        try:
            self._call(
                self._redis.set, self._pin_key(pin.key), pin.prefix + model,
                px=max(1, int(pin.keep_ms)),
            )  # fmt: skip
        except StoreUnavailableError:
            return  # the decision stands; the pin stays where `swap_pin` wrote it
        pin.written = True

    def _denial(
        self,
        shared: list[Spec],
        options: list[list[Spec]],
        known: dict[tuple[int, int], Outcome],
        failed: tuple[int, int],
        now: float,
    ) -> AcquireResult:
        """A denied decision's outcomes as one node reports them: the shared buckets, then
        the last candidate's, up to the first without room. Buckets of slots not asked (the
        denial came first) are read (one MGET: a denial path only)."""
        places = [(-1, i) for i in range(len(shared))]
        if failed[0] >= 0:
            places += [(failed[0], j) for j in range(len(options[failed[0]]))]
        end = places.index(failed)
        places = places[: end + 1]
        missing = [p for p in places if p not in known]
        if missing:
            specs = [shared[p[1]] if p[0] < 0 else options[p[0]][p[1]] for p in missing]
            try:
                levels = self._call(
                    self._redis.mget_nonatomic, [bucket_redis_key(s[0]) for s in specs]
                )
            except StoreUnavailableError:
                levels = [None] * len(specs)  # the denial stands; these read as full
            for place, spec, level in zip(missing, specs, levels, strict=True):
                full_at = None if level is None else float(level)
                have = available(full_at, spec[1], spec[2], now)
                fits = have + 1e-9 + spec[2] * 0.01 >= spec[3]
                at = now if full_at is None or full_at < now else full_at
                known[place] = Outcome(spec, have, fits, at)
        outcomes: list[Outcome] = []
        for place in places:
            outcome = known[place]
            outcomes.append(outcome)
            if not outcome[2]:
                return AcquireResult(None, tuple(outcomes), outcome)
        return AcquireResult(None, tuple(outcomes), outcomes[-1])  # pragma: no cover

    # ------------------------------------------------------------------ in-flight slots

    def take_slots(
        self, gauges: Sequence[Gauge], lease: str, now: float, *, consume: bool = True
    ) -> Slots:
        """One `redis_inflight.lua` take per slot the gauges fall in, per-key slots first
        (sorted), the shared slot last, each all-or-nothing with its own record of the lease;
        a slot that finds a gauge full releases what the earlier ones took. A lease that took
        slots of a per-key gauge is noted in its directory (one more call, in the lease's own
        slot) so that a release on any instance finds them; gauges of the shared slot only
        need no directory (one call, as on one node)."""
        by_tag: dict[str, list[int]] = {}
        for index, gauge in enumerate(gauges):
            by_tag.setdefault(bucket_tag(gauge[0]), []).append(index)
        order = sorted(set(by_tag) - {SHARED_TAG}) + ([SHARED_TAG] if SHARED_TAG in by_tag else [])
        held: dict[int, int] = {}
        taken: list[str] = []
        for tag in order:
            indexes = by_tag[tag]
            try:
                failed, free_at = self._take_in(tag, indexes, gauges, lease, now, consume, held)
            except StoreUnavailableError:  # the earlier slots' takes handed back if it can
                with contextlib.suppress(StoreUnavailableError):
                    self._release_in(taken, lease)
                raise
            if failed is None:
                if consume:
                    taken.append(tag)
                continue
            self._release_in(taken, lease)
            # a gauge listed before the full one, in a slot not asked yet: read it (a denial
            # path only), so the first full gauge in the decision's order is the one reported
            for other in order[order.index(tag) + 1 :]:
                earlier = [i for i in by_tag[other] if i < failed]
                if earlier:
                    first, soonest = self._take_in(other, earlier, gauges, lease, now, False, held)
                    if first is not None and first < failed:
                        failed, free_at = first, soonest
            return Slots(tuple(held[i] for i in range(failed + 1)), failed, free_at)
        if taken and taken != [SHARED_TAG]:
            keep = max(1, math.ceil(max(g[2] for g in gauges) - now)) + 1000
            try:
                self._call(
                    self._inflight_script, keys=[lease_directory(lease)],
                    args=["note", keep, *taken],
                )  # fmt: skip
            except StoreUnavailableError:
                with contextlib.suppress(StoreUnavailableError):
                    self._release_in(taken, lease)
                raise
        return Slots(tuple(held[i] for i in range(len(gauges))), None, None)

    def _take_in(
        self,
        tag: str,
        indexes: list[int],
        gauges: Sequence[Gauge],
        lease: str,
        now: float,
        consume: bool,
        held: dict[int, int],
    ) -> tuple[int | None, float | None]:
        """One slot's take of `gauges[i] for i in indexes`: the slots each held before go
        into `held`; (the decision's index of the full gauge, when it frees) or (None, None)."""
        keys = [gauge_redis_key(gauges[i][0]) for i in indexes] + [lease_record(tag, lease)]
        argv: list[Any] = ["take", repr(float(now)), "1" if consume else "0", lease]
        for i in indexes:
            argv.extend((int(gauges[i][1]), repr(float(gauges[i][2]))))
        reply = self._call(self._inflight_script, keys=keys, args=argv)
        for i, value in zip(indexes, reply[2:], strict=False):
            held[i] = int(value)
        failed = int(reply[0])
        if not failed:
            return None, None
        free_at = _text(reply[1])
        return indexes[failed - 1], float(free_at) if free_at else None

    def _release_in(self, tags: list[str], lease: str) -> int:
        freed = 0
        for tag in tags:
            record = lease_record(tag, lease)
            reply = self._call(self._inflight_script, keys=[record], args=["release", lease])
            freed += int(reply)
        return freed

    def release_slots(self, lease: str) -> int:
        """A lease this instance took in bucket calls: its slots released (one call per
        slot, its directory, if written, left to expire). Another's: the lease's directory
        taken out (once, on any instance), then each slot's record released; no directory:
        the shared slot's record (two calls), and when that held nothing either, a release
        left for the directory still to come (`flush_notes` on its maker; a third call)."""
        with self._notes_lock:
            mine = self._held_tags.pop(lease, None)
            self._pending.pop(lease, None)
        if mine is not None:
            return self._release_in(mine[0], lease)
        reply = self._call(self._inflight_script, keys=[lease_directory(lease)], args=["where"])
        tags = sorted(_text(t) for t in reply)
        if tags:
            return self._release_in(tags, lease)
        freed = self._release_in([SHARED_TAG], lease)
        if not freed:
            reply = self._call(
                self._inflight_script, keys=[lease_directory(lease)],
                args=["mark", TOMBSTONE_MS],
            )  # fmt: skip
            freed = self._release_in(sorted(_text(t) for t in reply), lease)
        return freed

    def inflight(self, now: float, prefix: str = "") -> list[tuple[str, int]]:
        found = []
        marker = "}:" + GAUGES[len("{policyctl}:") :]
        escaped = prefix.replace("[", "\\[").replace("?", "\\?").replace("*", "\\*")
        pattern = "{*" + marker + escaped + "*"
        for key in self._call(lambda: list(self._redis.scan_iter(match=pattern, count=1000))):
            count = int(self._call(self._redis.zcount, key, f"({now!r}", "+inf"))
            if count:
                found.append((_text(key).split(marker, 1)[1], count))
        return sorted(found)

    # ------------------------------------------------------------------ affinity pins

    def _pin_key(self, key: str) -> str:
        return pin_redis_key(key)

    def peek(self, key: str) -> float | None:
        value = self._call(self._redis.get, bucket_redis_key(key))
        return None if value is None else float(value)

    def buckets(self, prefix: str = "") -> list[tuple[str, float]]:
        keys = [k for k in self._scan_buckets(prefix) if k]
        if not keys:
            return []
        values = self._call(self._redis.mget_nonatomic, keys)
        found = []
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                found.append((_bucket_of(_text(key)), float(value)))
        return sorted(found)

    def _scan_buckets(self, prefix: str) -> list[Any]:
        pattern = "{*}:b:" + prefix.replace("[", "\\[").replace("?", "\\?").replace("*", "\\*")
        return list(
            self._call(lambda: list(self._redis.scan_iter(match=pattern + "*", count=1000)))
        )

    def reset(self, prefix: str) -> int:
        keys = self._scan_buckets(prefix)
        if not keys:
            return 0
        return int(self._call(self._redis.delete, *keys))

    def settle(self, adjustments: Sequence[Adjustment], now: float) -> list[float]:
        if not adjustments:
            return []
        by_tag: dict[str, list[int]] = {}
        for index, adjustment in enumerate(adjustments):
            by_tag.setdefault(bucket_tag(adjustment[0]), []).append(index)
        applied = [0.0] * len(adjustments)
        for tag, indexes in by_tag.items():
            items = [(adjustments[i][0], adjustments[i][2], adjustments[i][3]) for i in indexes]
            for index, value in zip(indexes, self._adjust(tag, items, now), strict=True):
                applied[index] = value
        return applied

    def _adjust(self, tag: str, items: list[tuple[str, float, float]], now: float) -> list[float]:
        """`redis_settle.lua` adjust on one slot: (bucket key, rate, delta) per bucket."""
        argv: list[Any] = ["adjust", repr(float(now))]
        for _, rate, delta in items:
            argv.extend((repr(float(rate)), repr(float(delta))))
        keys = ["{" + tag + "}:b:" + key for key, _, _ in items]
        reply = self._call(self._settle_script, keys=keys, args=argv)
        return [float(v) for v in reply]

    def settle_reservation(self, request_id: str, usage: Usage, now: float) -> Settlement:
        """The directory taken out (once, on any instance), then each part settled in its
        own slot by `redis_settle.lua` take."""
        reply = self._call(
            self._directory_script,
            keys=[DIRECTORY + request_id],
            args=["take", repr(float(now)), request_id],
        )
        state = _text(reply[0])
        if state != "settled":
            return Settlement(state)
        argv = [
            "take", repr(float(now)), request_id, _optional(usage.input_tokens),
            _optional(usage.output_tokens), _optional(usage.cost),
        ]  # fmt: skip
        buckets: list[Settled] = []
        expires_at: float | None = None
        for tag in sorted(_text(t) for t in reply[1:]):
            part = self._call(
                self._settle_script, keys=["{" + tag + "}:r:" + request_id], args=argv
            )
            if _text(part[0]) == "absent":  # this slot's part expired by Redis's cleanup
                continue
            expires_at = float(part[1])
            buckets.extend(taken_buckets(part, _bucket_of))
        applied = tuple(b for b in buckets if b.adjusted)
        return Settlement("settled", applied, tuple(buckets), expires_at)

    def close(self) -> None:
        """Leases handed back first (a cluster that does not answer keeps them until their
        bucket refills), then the client closed."""
        if self._client is not None:
            with contextlib.suppress(StoreUnavailableError):
                self.return_leases()
            with contextlib.suppress(StoreUnavailableError):
                self.flush_notes()
            self._client.close()


def _before(outcome: Outcome, now: float) -> Outcome:
    """A consumed bucket's outcome as it was before (its consumption was refunded)."""
    spec = outcome[0]
    full_at = now + (spec[1] - outcome[1]) / spec[2] if outcome[1] < spec[1] else now
    return Outcome(spec, outcome[1], outcome[2], full_at)
