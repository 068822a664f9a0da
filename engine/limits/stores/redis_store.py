"""`redis://host:port/db` (also `rediss://`, `unix:///path.sock`): limits shared by many
app instances.

One server-side Lua script per decision checks and consumes every applicable bucket
atomically, all-or-nothing (`redis_gcra.lua`, shipped as package data, registered once:
EVALSHA, reloaded on NOSCRIPT). Buckets are GCRA timestamps with a TTL, so idle buckets
expire by themselves. Every key carries one hash tag, `{policyctl}`, so the script's keys
live in one slot and a Redis Cluster can run it.

A Redis that is down or slow (the socket timeout, default 50 ms, `?timeout=0.2` to change)
raises `StoreUnavailableError`; the limiter then applies the policy's `on_store_error`.
redis-py reconnects on the next call, so the store recovers on its own.

Reservations (reserve-then-settle, docs/ratelimits.md) live here too, so an outcome may reach
any instance: the admission's script writes the record `{policyctl}:r:<request id>` (a list:
expires_at, input tokens, its maker's outstanding set, then per bucket key, rate, estimate,
unit), and `settle_reservation` takes it out and applies it in one script. Each store object
has an id of its own: its outstanding reservations are the sorted set
`{policyctl}:ro:<id>` (request id scored by expires_at), and the ones that expired unsettled
are counted into `{policyctl}:rx:<id>` until `reservation_counts` reads them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from engine.limits.stores.base import (
    AcquireResult,
    Adjustment,
    ConfigurationError,
    Gauge,
    Outcome,
    PinRecord,
    PinWrite,
    Quota,
    ReservationCounts,
    Settled,
    Settlement,
    Slots,
    Spec,
    StoreUnavailableError,
    Ticket,
    Usage,
)

PREFIX = "{policyctl}:"
BUCKETS = PREFIX + "b:"
QUOTAS = PREFIX + "quotas"
SCRIPT = (Path(__file__).with_name("redis_gcra.lua")).read_text(encoding="utf-8")
# in-flight gauges (`concurrent` limits): a sorted set per gauge, a set per lease
GAUGES = PREFIX + "g:"
LEASES = PREFIX + "l:"
INFLIGHT_SCRIPT = (Path(__file__).with_name("redis_inflight.lua")).read_text(encoding="utf-8")
# reserve-then-settle: one decision's adjustments in one script
SETTLE_SCRIPT = (Path(__file__).with_name("redis_settle.lua")).read_text(encoding="utf-8")
# reservation records, and per store object its outstanding set and expired mailbox
RESERVATIONS = PREFIX + "r:"
OUTSTANDING = PREFIX + "ro:"
EXPIRED = PREFIX + "rx:"
KEEP_MS = 3_600_000  # a record outlives its expiry by an hour in Redis (cleanup only)
_UNIT_FLAGS = {"tokens": "t", "spend": "s"}
_FLAG_UNITS = {"t": "tokens", "s": "spend"}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def taken_buckets(reply: Sequence[Any], bucket_of: Callable[[str], str]) -> tuple[Settled, ...]:
    """The buckets of a reservation `redis_settle.lua` take returned (after its state and
    expiry: per bucket its Redis key, unit flag, estimate, actual and the delta applied;
    `bucket_of` maps a Redis key to the bucket key)."""
    values = reply[2:]
    buckets = []
    for i in range(0, len(values), 5):
        actual, delta = _text(values[i + 3]), _text(values[i + 4])
        buckets.append(
            Settled(
                bucket_of(_text(values[i])),
                _FLAG_UNITS[_text(values[i + 1])],
                float(delta) if delta else 0.0,
                float(values[i + 2]),
                float(actual) if actual else None,
                bool(delta),
            )
        )
    return tuple(buckets)


def _optional(value: float | None) -> str:
    return "" if value is None else repr(float(value))


# affinity pins (`affinity by … for D`): one string per route and key hash
PINS = PREFIX + "p:"
PIN_SCRIPT = (Path(__file__).with_name("redis_pin.lua")).read_text(encoding="utf-8")
# ... and the check-and-consume script with a pin written for the candidate it admits
PIN_FOLD_SCRIPT = (
    (Path(__file__).with_name("redis_pin_fold.lua"))
    .read_text(encoding="utf-8")
    .replace("--[[redis_gcra.lua]]", SCRIPT)
)


class RedisStore:
    persistent = False
    KIND = "redis"  # what errors call the server

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - redis is a dependency of the redis extra
            raise ConfigurationError(
                f"state store `{url}` needs the redis client: pip install 'policyctl[redis]'"
            ) from None
        self.url = url
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        try:
            timeout = float(query.pop("timeout", ["0.05"])[0])
        except ValueError:
            raise ConfigurationError(f"state store `{url}`: `timeout` must be seconds") from None
        clean = url.split("?", 1)[0]
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry_on_timeout": False,
            "health_check_interval": 0,
        }
        try:
            if clean.startswith("unix://"):
                self._redis = redis.Redis(unix_socket_path=clean[len("unix://") :], **options)
            else:
                self._redis = redis.Redis.from_url(clean, **options)
        except ValueError as err:
            raise ConfigurationError(f"state store `{url}`: {err}") from None
        self._errors = (redis.ConnectionError, redis.TimeoutError, OSError)
        self._response_error = redis.ResponseError
        self._script = self._redis.register_script(SCRIPT)
        self._inflight_script = self._redis.register_script(INFLIGHT_SCRIPT)
        self._settle_script = self._redis.register_script(SETTLE_SCRIPT)
        self._pin_script = self._redis.register_script(PIN_SCRIPT)
        self._pin_fold_script = self._redis.register_script(PIN_FOLD_SCRIPT)
        self.round_trips = 0
        # this store object's own reservations (reserve-then-settle)
        self.instance = uuid.uuid4().hex
        self._outstanding = OUTSTANDING + self.instance
        self._expired = EXPIRED + self.instance

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.round_trips += 1
        try:
            return fn(*args, **kwargs)
        except self._errors as err:
            raise StoreUnavailableError(f"{self.KIND} at `{self.url}`: {err}") from None

    # ------------------------------------------------------------------ buckets

    def acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
        pin: PinWrite | None = None,
    ) -> AcquireResult:
        """`pin` (a decision on a route with `affinity`, consuming): the key is pinned to
        the admitted candidate's model in the same script (`redis_pin_fold.lua`)."""
        return self._acquire(shared, options, now, consume, None, pin)

    def acquire_reserving(
        self,
        shared: Sequence[Spec],
        options: Sequence[Sequence[Spec]],
        now: float,
        ticket: Ticket,
        *,
        pin: PinWrite | None = None,
    ) -> AcquireResult:
        return self._acquire(shared, options, now, True, ticket, pin)

    def _acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        consume: bool,
        ticket: Ticket | None,
        pin: PinWrite | None,
    ) -> AcquireResult:
        option_list = [list(option) for option in options]
        specs: list[Spec] = list(shared)
        for option in option_list:
            specs.extend(option)
        keys = [BUCKETS + s[0] for s in specs]
        argv: list[Any] = [repr(float(now)), "1" if consume else "0", len(shared), len(option_list)]
        argv.extend(len(option) for option in option_list)
        for spec in specs:
            argv.extend((repr(float(spec[1])), repr(float(spec[2])), repr(float(spec[3]))))
        if ticket is not None:
            units = ticket.units
            flags = "".join(_UNIT_FLAGS.get(units.get(spec[0], ""), "-") for spec in specs)
            keys.extend((RESERVATIONS + ticket.request_id, self._outstanding, self._expired))
            argv.extend((
                ticket.request_id, repr(float(ticket.input_tokens)),
                repr(float(ticket.expires_at)), KEEP_MS, flags,
            ))  # fmt: skip
        script = self._script
        if pin is not None and consume:  # after the ticket's: taken off before gcra runs
            script = self._pin_fold_script
            keys.append(PINS + pin.key)
            argv += [pin.prefix, max(1, int(pin.keep_ms)), *pin.models, len(pin.models) + 2]
        reply = self._call(script, keys=keys, args=argv)
        option = int(reply[0])
        if script is not self._script and 0 <= option < len(pin.models):  # type: ignore[union-attr]
            pin.written = True  # type: ignore[union-attr]
        failed_at = int(reply[1])
        values = reply[2:]
        count = len(values) // 3
        # which specs the outcomes belong to: shared, then the chosen (or last tried) option
        if option >= 0:
            chosen = list(shared) + (option_list[option] if option_list else [])
        else:
            chosen = list(shared)
            if count > len(shared) and option_list:
                chosen += option_list[-1]
        outcomes = tuple(
            Outcome(
                chosen[i],
                float(values[3 * i]),
                values[3 * i + 1] in (b"1", "1"),
                float(values[3 * i + 2]),
            )
            for i in range(count)
        )
        failed = outcomes[failed_at - 1] if failed_at > 0 else None
        return AcquireResult(option if option >= 0 else None, outcomes, failed)

    def peek(self, key: str) -> float | None:
        value = self._call(self._redis.get, BUCKETS + key)
        return None if value is None else float(value)

    def buckets(self, prefix: str = "") -> list[tuple[str, float]]:
        keys = [k for k in self._scan(BUCKETS + prefix) if k]
        if not keys:
            return []
        values = self._call(self._redis.mget, keys)
        found = []
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                name = key.decode() if isinstance(key, bytes) else key
                found.append((name[len(BUCKETS) :], float(value)))
        return sorted(found)

    def _scan(self, prefix: str) -> list[Any]:
        pattern = prefix.replace("[", "\\[").replace("?", "\\?").replace("*", "\\*") + "*"
        return list(self._call(lambda: list(self._redis.scan_iter(match=pattern, count=1000))))

    def reset(self, prefix: str) -> int:
        keys = self._scan(BUCKETS + prefix)
        if not keys:
            return 0
        return int(self._call(self._redis.delete, *keys))

    def evict(self, now: float) -> int:
        return 0  # idle buckets expire by their TTL

    def settle(self, adjustments: Sequence[Adjustment], now: float) -> list[float]:
        if not adjustments:
            return []
        argv: list[Any] = ["adjust", repr(float(now))]
        for adjustment in adjustments:
            argv.extend((repr(float(adjustment[2])), repr(float(adjustment[3]))))
        keys = [BUCKETS + a[0] for a in adjustments]
        reply = self._call(self._settle_script, keys=keys, args=argv)
        return [float(v) for v in reply]

    def settle_reservation(self, request_id: str, usage: Usage, now: float) -> Settlement:
        argv = [
            "take", repr(float(now)), request_id, _optional(usage.input_tokens),
            _optional(usage.output_tokens), _optional(usage.cost),
        ]  # fmt: skip
        reply = self._call(self._settle_script, keys=[RESERVATIONS + request_id], args=argv)
        state = _text(reply[0])
        if state == "absent":
            return Settlement(state)
        buckets = taken_buckets(reply, lambda key: key[len(BUCKETS) :])
        applied = tuple(b for b in buckets if b.adjusted)
        return Settlement(state, applied, buckets, float(reply[1]))

    def reservation_counts(self, now: float) -> ReservationCounts:
        keys = [self._outstanding, self._expired]
        reply = self._call(self._settle_script, keys=keys, args=["count", repr(float(now))])
        return ReservationCounts(int(reply[0]), int(reply[1]))

    # ------------------------------------------------------------------ in-flight slots

    def take_slots(
        self, gauges: Sequence[Gauge], lease: str, now: float, *, consume: bool = True
    ) -> Slots:
        keys = [GAUGES + g[0] for g in gauges] + [LEASES + lease]
        argv: list[Any] = ["take", repr(float(now)), "1" if consume else "0", lease]
        for gauge in gauges:
            argv.extend((int(gauge[1]), repr(float(gauge[2]))))
        reply = self._call(self._inflight_script, keys=keys, args=argv)
        failed = int(reply[0])
        free_at = reply[1].decode() if isinstance(reply[1], bytes) else reply[1]
        return Slots(
            tuple(int(v) for v in reply[2:]),
            failed - 1 if failed else None,
            float(free_at) if failed and free_at else None,
        )

    def release_slots(self, lease: str) -> int:
        script = self._inflight_script
        return int(self._call(script, keys=[LEASES + lease], args=["release", lease]))

    def inflight(self, now: float, prefix: str = "") -> list[tuple[str, int]]:
        found = []
        for key in self._scan(GAUGES + prefix):
            count = int(self._call(self._redis.zcount, key, f"({now!r}", "+inf"))
            if count:
                name = key.decode() if isinstance(key, bytes) else key
                found.append((name[len(GAUGES) :], count))
        return sorted(found)

    # ------------------------------------------------------------------ affinity pins

    def swap_pin(
        self,
        key: str,
        now: float,
        ttl_ms: float,
        keep_ms: float,
        input_tokens: float,
        default: str,
        eligible: Sequence[str],
        write: bool,
    ) -> tuple[PinRecord | None, str | None]:
        argv: list[Any] = [
            repr(float(now)), repr(float(ttl_ms)), max(1, int(keep_ms)), "1" if write else "0",
            repr(float(input_tokens)), default, *eligible,
        ]  # fmt: skip
        old, live, model = self._pin_call(self._pin_script, keys=[self._pin_key(key)], args=argv)
        pin = _pin_record(old) if live in (b"1", "1") else None
        written = model.decode() if isinstance(model, bytes) else model
        return pin, written or None

    def set_pin(self, key: str, pin: PinRecord, keep_ms: float) -> None:
        value = f"{pin.at!r}|{float(pin.input_tokens)!r}|{pin.model}"
        self._pin_call(self._redis.set, self._pin_key(key), value, px=max(1, int(keep_ms)))

    def _pin_key(self, key: str) -> str:
        """The Redis key of a pin (`route:keyhash`): in the shared slot on one node."""
        return PINS + key

    def _pin_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """`_call`, with any error of the server's (a read-only replica, out of memory) also
        a `StoreUnavailableError`: a pin never fails a decision."""
        try:
            return self._call(fn, *args, **kwargs)
        except self._response_error as err:
            raise StoreUnavailableError(f"redis at `{self.url}`: {err}") from None

    # ------------------------------------------------------------------ quotas

    def quotas(self) -> list[Quota]:
        raw = self._call(self._redis.hgetall, QUOTAS)
        found = []
        for value in raw.values():
            data = json.loads(value)
            found.append(Quota(**data))
        return sorted(found, key=lambda q: (q.scope, q.key))

    def set_quota(self, quota: Quota) -> None:
        field = f"{quota.scope}\0{quota.key}"
        value = json.dumps(
            {
                "scope": quota.scope,
                "key": quota.key,
                "limit": quota.limit,
                "window_ms": quota.window_ms,
                "burst": quota.burst,
                "expires_at": quota.expires_at,
            }
        )
        self._call(self._redis.hset, QUOTAS, field, value)

    def remove_quota(self, scope: str, key: str) -> bool:
        return bool(self._call(self._redis.hdel, QUOTAS, f"{scope}\0{key}"))

    def flush(self, **logs: object) -> None:
        """Nothing to write: every acquire already is."""

    def close(self) -> None:
        self._redis.close()


def _pin_record(value: bytes | str) -> PinRecord | None:
    """A pin's stored string, `at|input_tokens|model`; None if it is not one."""
    text = value.decode() if isinstance(value, bytes) else value
    parts = text.split("|", 2)
    if len(parts) != 3:
        return None
    try:
        return PinRecord(parts[2], float(parts[0]), float(parts[1]))
    except ValueError:
        return None
