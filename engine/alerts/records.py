"""The records alerts hand out: an alert's state (`AlertStatus`, what `PolicyEngine.alerts()`
returns), a notification (what the webhook receives), and the delivery counters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.units import format_duration, format_money, format_timestamp
from engine.vocabulary import Unit

INACTIVE = "inactive"  # the condition does not hold
PENDING = "pending"  # it holds, not yet for the alert's `for` duration
FIRING = "firing"  # it has held for `for`: notified once
RESOLVED = "resolved"  # it fired and stopped holding: notified once
STATES = (INACTIVE, PENDING, FIRING, RESOLVED)


def format_value(value: float | None, unit: str) -> str | None:
    """A signal's value as a policy writes it: `3.2s`, `4.5%`, `$12.5`, `120`."""
    if value is None:
        return None
    if unit == Unit.DURATION.value:
        return format_duration(round(value)) if value >= 1 else f"{value:.3g}ms"
    if unit == Unit.PERCENT.value:
        return f"{value * 100:.4g}%"
    if unit == Unit.MONEY.value:
        return format_money(value)
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class AlertStatus:
    """One alert's state, for one key when it is split by one (`p95(provider)`: a status
    per provider). A split alert no key has reached yet is listed once, with key None."""

    name: str  # as written (`slow {key}`)
    message: str  # the name with `{key}` filled in
    key: str | None
    state: str  # inactive, pending, firing, resolved
    value: float | None  # the signal's value at the last tick (None: nothing measured)
    op: str
    threshold: float
    unit: str  # `duration` (ms), `percentage` (a fraction), `money` (USD), `number`
    signal: str  # `p95(provider)`, `violations(user)`, `spend`
    since: float | None  # epoch seconds: when the condition began to hold (pending, firing)
    changed_at: float | None  # epoch seconds: the last change of state
    location: str  # file:line of the `alert` statement

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "message": self.message,
            "key": self.key,
            "state": self.state,
            "value": self.value,
            "value_text": format_value(self.value, self.unit),
            "op": self.op,
            "threshold": self.threshold,
            "threshold_text": format_value(self.threshold, self.unit),
            "unit": self.unit,
            "signal": self.signal,
            "since": format_timestamp(self.since),
            "changed_at": format_timestamp(self.changed_at),
            "location": self.location,
        }


@dataclass(frozen=True, slots=True)
class Notification:
    """What is posted when an alert fires or resolves (the JSON body: `to_dict`)."""

    status: AlertStatus
    at: float  # epoch seconds
    webhook: str | None  # where it is posted (None: the log only)
    policy_version: str

    def to_dict(self) -> dict[str, Any]:
        s = self.status
        return {
            "alert": s.name,
            "message": s.message,
            "state": s.state,
            "key": s.key,
            "value": s.value,
            "value_text": format_value(s.value, s.unit),
            "threshold": s.threshold,
            "threshold_text": format_value(s.threshold, s.unit),
            "op": s.op,
            "unit": s.unit,
            "since": format_timestamp(s.since),
            "at": format_timestamp(self.at),
            "labels": {
                "signal": s.signal,
                "location": s.location,
                "policy_version": self.policy_version,
                **({} if s.key is None else {"key": s.key}),
            },
        }

    def line(self) -> str:
        """The log line: `alert firing: slow openai (p95(provider) = 3412ms, alert when > 3s;
        rules.policy:4)`."""
        s = self.status
        value = format_value(s.value, s.unit) or "no data"
        return (
            f"alert {s.state}: {s.message} ({s.signal} = {value}, alert when {s.op}"
            f" {format_value(s.threshold, s.unit)}; {s.location})"
        )


@dataclass(frozen=True, slots=True)
class DeliveryStats:
    """The webhook's counters since the engine started."""

    sent: int  # notifications a webhook answered 2xx
    failed: int  # notifications given up after the retries (logged)
    dropped: int  # notifications not queued: the queue was full
    retries: int  # attempts after a first one failed
    queued: int  # waiting now
