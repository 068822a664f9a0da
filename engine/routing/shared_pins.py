"""Affinity pins shared by every instance on one Redis (docs/language.md, Session affinity).

A decision on a route with `affinity` asks its key's pin once, before it chooses, and in
the same round trip writes where the request goes unless a rate limit moves it
(`redis_pin.lua`: the pin is kept if it is live and its model eligible, else the key is
pinned where the strategy sends it). Only when a rate limit skips that model is the pin
written again: folded into the limits' own store call when it can be, else one more
call. A dry run only reads. So a session whose requests land on different instances (a
round-robin load balancer) stays on one deployment.

A pin is keyed by the route and the hash of the key's value (never the value itself), as
`{policyctl}:p:ROUTE:KEYHASH` on one node (on a Redis Cluster, in the pin's own slot,
`{p:ROUTE:KEYHASH}:p:ROUTE:KEYHASH`, so pins spread over the masters).
Whether a pin is live is decided on the engine's clock, against the last request's time
kept in the pin; the key's expiry (twice the duration) only cleans up.

The engine's own `PinTable` stays beside it: every pin this instance writes is mirrored
there, and when Redis fails (down, slow, an error of its own) the decision routes on it
as a memory-state engine would, the error counted in `errors` and logged at most every
10 s: a pin never fails a decision.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from engine.limits.records import PinWrite
from engine.limits.stores.base import AffinityPins, PinRecord, StoreUnavailableError
from engine.routing.evaluator import Pin, PinAsk, PinTable

log = logging.getLogger("policyctl")

KEEP_FACTOR = 2.0  # a pin's key is kept this many durations past its last request
LOG_EVERY_S = 10.0  # at most one warning this often while the store fails


class SharedPins:
    """The `Pins` of an engine on a store that shares them (`AffinityPins`: Redis)."""

    def __init__(self, store: AffinityPins, local: PinTable) -> None:
        self.store = store
        self.local = local  # this instance's pins: the mirror, and the fallback
        self.errors = 0  # store calls for a pin that failed (the decision went on)
        self._lock = threading.Lock()
        self._last_log = float("-inf")
        self._thread = threading.local()  # the ask whose `swap` met a failure, if any

    def __len__(self) -> int:
        return len(self.local)

    def swap(self, ask: PinAsk) -> Pin | None:
        self._thread.failed = None
        try:
            record, written = self.store.swap_pin(
                _key(ask), ask.now, ask.ttl_ms, ask.ttl_ms * KEEP_FACTOR, ask.input_tokens,
                ask.default, ask.eligible_keys(), ask.write,
            )  # fmt: skip
        except StoreUnavailableError as err:
            self._failed(err, ask.now)
            self._thread.failed = ask
            return self.local.swap(ask)
        if written is not None:
            self.local.put(ask.key, ask.pin(written))
        if record is None:
            return None
        return Pin(record.model, record.at, record.at + ask.ttl_ms / 1000.0, record.input_tokens)

    def fold(self, ask: PinAsk, models: Callable[[], Sequence[str]]) -> PinWrite | None:
        if getattr(self._thread, "failed", None) is ask:
            return None  # Redis failed this decision: the limits' call meets it on its own
        prefix = f"{ask.now!r}|{float(ask.input_tokens)!r}|"
        return PinWrite(_key(ask), prefix, ask.ttl_ms * KEEP_FACTOR, models())

    def settle(self, ask: PinAsk, pin: Pin | None, model: str | None, written: bool) -> None:
        if getattr(self._thread, "failed", None) is ask:  # Redis failed: this instance's own
            self._thread.failed = None
            self.local.settle(ask, pin, model, written)
            return
        if model is None:  # denied: the key stays pinned where `swap` put it
            return
        kept = pin.model if pin is not None and ask.eligible(pin.model) else ask.default
        if model == kept:
            return
        self.local.put(ask.key, ask.pin(model))
        if written:
            return
        try:
            self.store.set_pin(
                _key(ask), PinRecord(model, ask.now, ask.input_tokens), ask.ttl_ms * KEEP_FACTOR
            )
        except StoreUnavailableError as err:
            self._failed(err, ask.now)

    def _failed(self, err: Exception, now: float) -> None:
        with self._lock:
            self.errors += 1
            if now - self._last_log < LOG_EVERY_S:
                return
            self._last_log = now
            errors = self.errors
        log.warning(
            "affinity pins: the shared store failed (%d so far), routing on this instance's"
            " pins: %s",
            errors,
            err,
        )


def _key(ask: PinAsk) -> str:
    return f"{ask.route}:{ask.key_hash}"


def shared_pins(store: Any, local: PinTable) -> SharedPins | PinTable:
    """The pins an engine on `store` keeps: shared when the store shares them, else `local`."""
    return SharedPins(store, local) if isinstance(store, AffinityPins) else local
