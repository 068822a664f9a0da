"""Leases on the limits everyone shares (docs/redis.md, Leases): each instance takes a batch
of a shared bucket's tokens in one call, spends them locally with no round trip, renews
before it runs out, and hands back what is left when the lease expires or the store closes.

Hot keys (`lease_hot`): a per-key limit (user, ip, named scope) whose key this instance
sees in more than `lease_hot` decisions per second is leased the same way (`Heat` counts
them per lease period); cold keys stay exact.

This module is the lease book only (no I/O): what an instance holds per bucket, how big the
next batch is, which renewals a decision needs. The store (`redis_cluster_store`) sends the
renewals in one `redis_lease.lua` call and feeds the replies back (`LeaseBook.apply`).

Sizing: a batch is the tokens this instance spent on the bucket in its last lease period
(`lease_ms`) times `FACTOR`, at least the decision's cost, at most `lease_max` × the bucket's
capacity (the cap; one request's cost when that is larger). An instance renews when its
lease is expired, lacks the cost, or would fall under a quarter of its last batch
(`LOW_MARK`); a renewal hands back what is left and takes the new batch in the same call, so
an instance never holds more than one cap per bucket.

The over-admission bound: tokens spent in any window of W ms ≤ capacity + rate × W (what the
bucket admits in strict mode) + what every instance held at the window's start, so at most
`instances × cap` more (`LeaseConfig.bound`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import parse_qs

from engine.limits.stores.base import EPSILON, TIME_SLACK_MS, ConfigurationError, Spec

MODES = ("strict", "auto")
FACTOR = 2.0  # a batch is this many times what the last lease period spent
LOW_MARK = 0.25  # renew before the lease falls under this share of its last batch
LEASE_OPTIONS = frozenset({"lease", "lease_max", "lease_ms", "lease_hot"})


@dataclass(frozen=True)
class LeaseConfig:
    """`?lease=auto|strict&lease_max=…&lease_ms=…` of a `redis+cluster://` URL."""

    mode: str = "strict"
    lease_max: float = 0.01  # the cap of one instance's batch, a share of the capacity
    lease_ms: float = 1000.0  # how long a batch is held before it is handed back
    # a per-key limit (user, ip, named scope) whose key this instance sees more than this
    # many decisions per second of is leased too (0: per-key limits are never leased)
    lease_hot: float = 0.0

    @property
    def leased(self) -> bool:
        return self.mode == "auto"

    def cap(self, spec: Spec) -> float:
        """The most one instance holds of this bucket (tokens)."""
        return max(spec.cost, self.lease_max * spec.capacity)

    def bound(self, spec: Spec, instances: int) -> float:
        """The over-admission bound per window: tokens past what strict mode admits."""
        return instances * self.cap(spec) if self.leased else 0.0


def parse_lease_options(url: str, query: str) -> LeaseConfig:
    """The lease options of a store URL's query; a ConfigurationError saying which is wrong."""
    values = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    mode = values.get("lease", "strict")
    if mode not in MODES:
        raise ConfigurationError(
            f"state store `{url}`: `lease` is `auto` or `strict`, not `{mode}`"
        )
    try:
        lease_max = float(values.get("lease_max", "0.01"))
        lease_ms = float(values.get("lease_ms", "1000"))
        lease_hot = float(values.get("lease_hot", "0"))
    except ValueError:
        raise ConfigurationError(
            f"state store `{url}`: `lease_max` (a share of a limit, 0 to 1), `lease_ms`"
            " (milliseconds) and `lease_hot` (decisions per second) must be numbers"
        ) from None
    if not 0 < lease_max <= 1:
        raise ConfigurationError(
            f"state store `{url}`: `lease_max` must be more than 0 and at most 1 (a share of"
            " each shared limit's capacity)"
        )
    if not lease_ms > 0:
        raise ConfigurationError(f"state store `{url}`: `lease_ms` must be more than 0")
    if not lease_hot >= 0 or lease_hot == float("inf"):
        raise ConfigurationError(
            f"state store `{url}`: `lease_hot` must be decisions per second, 0 or more"
        )
    if lease_hot and mode != "auto":
        raise ConfigurationError(f"state store `{url}`: `lease_hot` needs `lease=auto`")
    return LeaseConfig(mode, lease_max, lease_ms, lease_hot)


class Renewal(NamedTuple):
    """One bucket's part of a `redis_lease.lua` call."""

    key: str
    capacity: float
    rate: float
    give_back: float  # unspent tokens handed back first
    want: float  # the batch asked for (0: a return only)
    need: float  # the least worth taking (the decision's cost)


class Granted(NamedTuple):
    """One bucket's reply: tokens granted, available before the grant, full_at after it."""

    granted: float
    available: float
    full_at: float


@dataclass
class Lease:
    """What one instance holds of one shared bucket."""

    capacity: float
    rate: float
    tokens: float = 0.0  # granted, not yet spent
    batch: float = 0.0  # the last grant
    expires_at: float = 0.0  # ms, the engine's clock
    full_at: float = 0.0  # the bucket's full_at as the last call saw it
    available: float = 0.0  # the bucket's tokens (outside leases) as the last call saw them
    period_start: float = 0.0
    spent: float = 0.0  # in the current lease period
    spent_before: float = 0.0  # in the previous one
    retry_at: float = 0.0  # ms: a renewal short of its batch is not asked again before this


@dataclass
class LeaseBook:
    config: LeaseConfig
    leases: dict[str, Lease] = field(default_factory=dict)

    def _lease(self, spec: Spec, now: float) -> Lease:
        lease = self.leases.get(spec.key)
        if lease is None:
            lease = self.leases[spec.key] = Lease(spec.capacity, spec.rate, period_start=now)
        lease.capacity, lease.rate = spec.capacity, spec.rate
        elapsed = now - lease.period_start
        if elapsed >= self.config.lease_ms:  # a new period: the last one's spending counts
            lease.spent_before = lease.spent if elapsed < 2 * self.config.lease_ms else 0.0
            lease.spent = 0.0
            lease.period_start = now
        return lease

    def live(self, key: str, now: float) -> float:
        """The tokens this instance may spend now on the bucket (0 when expired)."""
        lease = self.leases.get(key)
        return lease.tokens if lease is not None and now < lease.expires_at else 0.0

    def has_room(self, spec: Spec, now: float) -> bool:
        return self.live(spec.key, now) + EPSILON + spec.rate * TIME_SLACK_MS >= spec.cost

    def renewals(
        self, specs: list[Spec], now: float, same_slot: Callable[[str], bool] = lambda _: True
    ) -> list[Renewal]:
        """What a decision spending `specs` must (no room) or should (under the low mark)
        renew, plus the expired leases of other buckets of the same slot (`same_slot`)
        handed back in the same call."""
        out: list[Renewal] = []
        asked: set[str] = set()
        for spec in specs:
            if spec.key in asked:
                continue
            lease = self._lease(spec, now)
            live = self.live(spec.key, now)
            if live - spec.cost >= LOW_MARK * lease.batch and now < lease.expires_at:
                continue  # enough, and not under the low mark after this decision
            recent = max(lease.spent, lease.spent_before) + spec.cost
            want = min(self.config.cap(spec), max(spec.cost, recent * FACTOR))
            want = max(want, spec.cost)
            out.append(Renewal(spec.key, spec.capacity, spec.rate, lease.tokens, want, spec.cost))
            asked.add(spec.key)
        for key, lease in self.leases.items():
            if key not in asked and lease.tokens > 0 and now >= lease.expires_at and same_slot(key):
                out.append(Renewal(key, lease.capacity, lease.rate, lease.tokens, 0.0, 0.0))
        return out

    def must_renew(self, specs: list[Spec], now: float) -> bool:
        return any(not self.has_room(spec, now) for spec in specs)

    def dry(self, specs: list[Spec], now: float) -> bool:
        """Some bucket lacks room here, and its last renewal found too few tokens for a
        batch so recently that the bucket cannot have refilled one yet (at most `lease_ms`
        ago): deny without asking (an overloaded limit costs no round trip per denial)."""
        for spec in specs:
            lease = self.leases.get(spec.key)
            if lease is not None and not self.has_room(spec, now) and now < lease.retry_at:
                return True
        return False

    def apply(self, renewals: list[Renewal], replies: list[Granted], now: float) -> None:
        """A `redis_lease.lua` reply taken in: what was handed back is gone, the grant held."""
        for renewal, reply in zip(renewals, replies, strict=True):
            lease = self.leases[renewal.key]
            lease.tokens = lease.batch = reply.granted
            lease.full_at = reply.full_at
            lease.available = max(0.0, reply.available - reply.granted)
            short = renewal.want - reply.granted
            if renewal.want > 0 and short > 0:  # the bucket refills the rest first
                wait = (short - lease.available) / renewal.rate if renewal.rate > 0 else 0.0
                lease.retry_at = now + min(self.config.lease_ms, max(0.0, wait))
            else:
                lease.retry_at = 0.0
            if reply.granted > 0:
                lease.expires_at = now + self.config.lease_ms
            if lease.tokens <= 0 and renewal.want == 0:
                del self.leases[renewal.key]

    def spend(self, spec: Spec, now: float) -> float:
        """Takes the decision's cost out of the lease; the tokens held before."""
        lease = self._lease(spec, now)
        before = lease.tokens
        lease.tokens = max(0.0, lease.tokens - spec.cost)
        lease.spent += spec.cost
        return before

    def unspend(self, spec: Spec) -> None:
        """Puts back what `spend` took (a later check of the same decision denied it)."""
        lease = self.leases.get(spec.key)
        if lease is not None:
            lease.tokens += spec.cost
            lease.spent = max(0.0, lease.spent - spec.cost)

    def held(self) -> list[Renewal]:
        """Every lease's unspent tokens, as returns (`close`)."""
        return [
            Renewal(key, lease.capacity, lease.rate, lease.tokens, 0.0, 0.0)
            for key, lease in self.leases.items()
            if lease.tokens > 0
        ]

    def returned(self) -> None:
        self.leases.clear()


class Heat:
    """How many decisions this instance sent per per-key slot in the current and the last
    lease period (`lease_ms`, on the engine's clock): a slot whose count passes `lease_hot`
    decisions per second in either is hot, and its buckets are leased like the shared ones.
    The counts are per period only: a period's table holds the slots it saw."""

    def __init__(self, config: LeaseConfig) -> None:
        self.period_ms = config.lease_ms
        self.threshold = config.lease_hot * config.lease_ms / 1000.0
        self.period_start = float("-inf")
        self.current: dict[str, int] = {}
        self.before: dict[str, int] = {}

    def count(self, tag: str, now: float) -> bool:
        """Counts one decision on `tag`; whether it is hot."""
        elapsed = now - self.period_start
        if elapsed >= self.period_ms:
            self.before = self.current if elapsed < 2 * self.period_ms else {}
            self.current = {}
            self.period_start = now
        seen = self.current.get(tag, 0) + 1
        self.current[tag] = seen
        return max(seen, self.before.get(tag, 0)) > self.threshold
