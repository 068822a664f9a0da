"""What an `alert` can watch: the signals, their units, what they are computed from and
what they can be split by. The one home of this vocabulary: the checker, the compiler,
the alert monitor (`engine.alerts`), the language server and docs/language.md read it.

Two kinds of signal:

- a **measurement** (`p50`, `p95`, `p99`, `success_rate`, `error_rate`) of the outcomes
  recorded over a sliding window, written `over D` (default `DEFAULT_OVER_MS`);
- a **count** (`violations`, `denials`, `spend`) summed over a sliding window, written
  `per D` (required: `violations(user) > 100 per 1m`).

A subject in parentheses either splits the signal into one series per key (`p95(provider)`:
each provider its own alert; `violations(user)`: each user) or narrows it to one catalog
entry (`p95(openai)`, `p95(openai/gpt-4o)`). No subject: all the traffic, one series.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.vocabulary import STANDARD_SCOPES, Unit

DEFAULT_OVER_MS = 300_000.0  # a measurement's window when the alert gives no `over D`
MAX_WINDOW_MS = 86_400_000.0  # a window is held in memory: a day at the most
OUTCOMES = "outcomes"  # recorded outcomes (`PolicyEngine.record`, `POST /v1/outcomes`)
DECISIONS = "decisions"  # denied decisions
OPERATORS = (">", ">=", "<", "<=")
KEY_PLACEHOLDER = "{key}"  # in an alert's name: the key of a per-key alert


@dataclass(frozen=True, slots=True)
class SignalSpec:
    name: str
    unit: Unit
    source: str  # OUTCOMES or DECISIONS
    counted: bool  # a sum over `per D` (True) or a measurement `over D` (False)
    keys: tuple[str, ...]  # the words that split it into one series per key
    catalog: bool  # whether a catalog reference (`openai`, `openai/gpt-4o`) narrows it
    named_scopes: bool  # whether a named limit scope (`limit team = …`) splits it
    doc: str
    lowest: float = 0.0  # the range of its values (a threshold outside it never fires)
    highest: float = float("inf")

    @property
    def window_word(self) -> str:
        return "per" if self.counted else "over"


_MEASURED_KEYS = ("provider", "model")
_LATENCY = "latency percentile of the outcomes recorded over the window (`over D`, default 5m)"


SIGNALS: dict[str, SignalSpec] = {
    spec.name: spec
    for spec in (
        SignalSpec("p50", Unit.DURATION, OUTCOMES, False, _MEASURED_KEYS, True, False,
                   f"the median {_LATENCY}"),
        SignalSpec("p95", Unit.DURATION, OUTCOMES, False, _MEASURED_KEYS, True, False,
                   f"the 95th {_LATENCY}"),
        SignalSpec("p99", Unit.DURATION, OUTCOMES, False, _MEASURED_KEYS, True, False,
                   f"the 99th {_LATENCY}"),
        SignalSpec("success_rate", Unit.PERCENT, OUTCOMES, False, _MEASURED_KEYS, True, False,
                   "the share of the outcomes recorded over the window that succeeded",
                   highest=1.0),
        SignalSpec("error_rate", Unit.PERCENT, OUTCOMES, False, _MEASURED_KEYS, True, False,
                   "the share of the outcomes recorded over the window that failed",
                   highest=1.0),
        SignalSpec("spend", Unit.MONEY, OUTCOMES, True, _MEASURED_KEYS, True, False,
                   "the cost of the outcomes recorded in the window (`per D`)"),
        SignalSpec("violations", Unit.COUNT, DECISIONS, True,
                   tuple(s for s in STANDARD_SCOPES), False, True,
                   "requests denied by a rate limit in the window (`per D`); by a scope:"
                   " one series per key of the scope (`violations(user)`: per user)"),
        SignalSpec("denials", Unit.COUNT, DECISIONS, True, ("route",), False, False,
                   "requests denied for any reason in the window (`per D`): limits, `deny`"
                   " rules, a policy-wide `require`, no eligible model"),
    )
}  # fmt: skip


def subject_words(spec: SignalSpec, named_scopes: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The per-key words `spec` takes (a named limit scope too, for `violations`)."""
    return spec.keys + (named_scopes if spec.named_scopes else ())
