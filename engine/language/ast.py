"""The rule AST: frozen, slotted dataclasses; every node carries its span. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass

from engine.diagnostics import Span
from engine.vocabulary import Unit  # the value types; importable from here for AST code

# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Literal:
    value: object  # normalised: ms, USD, fraction, float, str, bool, None
    unit: Unit
    span: Span
    text: str  # as written, for messages


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Path:
    """`request.metadata.team` or `model.regions`: a root name and field names."""

    parts: tuple[str, ...]
    span: Span

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >= in "not in" contains
    left: Expr
    right: Expr
    span: Span
    op_span: Span


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and / or
    operands: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    span: Span


Expr = Literal | ListLit | Path | Compare | BoolOp | Not


# ---------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class Name:
    """An identifier as written (a provider, model, strategy or route name)."""

    text: str
    span: Span


@dataclass(frozen=True, slots=True)
class ModelRef:
    provider: Name
    model: Name | None  # None: every model of the provider
    span: Span

    @property
    def text(self) -> str:
        return (
            self.provider.text if self.model is None else f"{self.provider.text}/{self.model.text}"
        )


@dataclass(frozen=True, slots=True)
class Factor:
    name: Name
    weight: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class StrategySetting:
    name: Name
    factors: tuple[Factor, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class ValueSetting:
    """`min_success_rate 80%`, `min_samples 100`, `window 24h`."""

    key: Name
    value: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class FallbackSetting:
    refs: tuple[ModelRef, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class CooldownSetting:
    """`cooldown after 3 failures for 30s`."""

    failures: Literal
    duration: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class StoreErrorSetting:
    """`on_store_error open` or `on_store_error closed`."""

    mode: Name
    span: Span


@dataclass(frozen=True, slots=True)
class DegradedSetting:
    """`degraded when model.p95 > 3s`: a health rule on a model's measurements."""

    condition: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class ExploreSetting:
    """`explore 5% budget $2 per 1h`: a share of requests sent to measure the models with
    few samples, what they may cost per window bounding it."""

    share: Literal
    budget: Literal | None  # None only in a policy the checker refuses (E0270)
    window: Literal | None  # given with the budget
    span: Span


@dataclass(frozen=True, slots=True)
class AffinitySetting:
    """`affinity by request.metadata.session_id for 30m`: requests with the same key go to
    the model the last one went to, within the duration of it, while it stays eligible."""

    key: Path
    duration: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class WaitSetting:
    """`wait up to 2s` in a route or `defaults`: a request its limits deny may wait."""

    duration: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class Prefer:
    ref: ModelRef
    weight: Literal | None
    span: Span


@dataclass(frozen=True, slots=True)
class Exclude:
    refs: tuple[ModelRef, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Require:
    condition: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Arm:
    """`90%: route stable`: an experiment arm, its share and the route it sends to."""

    share: Literal
    route: Name
    span: Span


@dataclass(frozen=True, slots=True)
class Split:
    """`split by request.user { 90%: route a  10%: route b }`: a sticky experiment."""

    key: Path
    arms: tuple[Arm, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Shadow:
    """`shadow route b`: route b decides each request too, logged and never served."""

    route: Name
    span: Span


@dataclass(frozen=True, slots=True)
class ComplexitySetting:
    """`complexity(code: 0.6, length: 0.2)`: weights of `request.complexity` (in `defaults`)."""

    weights: tuple[Factor, ...]
    span: Span


Setting = (
    StrategySetting
    | ValueSetting
    | FallbackSetting
    | CooldownSetting
    | StoreErrorSetting
    | DegradedSetting
    | ExploreSetting
    | AffinitySetting
    | WaitSetting
    | ComplexitySetting
)
RouteItem = Setting | Prefer | Exclude | Require | Split | Shadow


@dataclass(frozen=True, slots=True)
class CatalogStmt:
    path: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class Defaults:
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Route:
    name: Name
    when: Expr | None
    items: tuple[RouteItem, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Limit:
    scope: Name  # global user ip provider model, or a named scope
    key_expr: Path | None  # `limit team = request.metadata.team ...`
    key: Literal | None  # `limit user "vip-user" ...`
    unit: Name | None  # requests (default) / tokens / spend / concurrent
    amount: Literal
    window: Literal | None  # None only for `concurrent` (which refuses one: E0414)
    burst: Literal | None
    when: Expr | None
    until: Literal | None
    span: Span
    lease: Literal | None = None  # `concurrent 8 lease 10m`: a slot's longest hold
    shadow: bool = False  # `shadow limit …`: counted and logged, never denying
    wait: Literal | None = None  # `wait up to 2s`: how long a denied request may wait


@dataclass(frozen=True, slots=True)
class PolicyRequire:
    """A top-level `require … [when …]`: binds every route, `defaults` and the fallbacks."""

    condition: Expr
    when: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Deny:
    """`deny "reason" when …`: a request for which `when` holds is denied before routing."""

    reason: Literal  # a string
    when: Expr | None  # None only in a policy the checker refuses (E0251)
    span: Span


@dataclass(frozen=True, slots=True)
class Signal:
    """`p95(provider)`, `violations(user)`, `spend`: what an alert watches. `subject` is a
    per-key word (`provider`, `user`, a limit scope) or a catalog reference (`openai`,
    `openai/gpt-4o`); the checker tells them apart (docs/language.md, Alerts)."""

    name: Path  # one part when valid; `provider.p95` is a mistake the checker names
    subject: ModelRef | None
    span: Span


@dataclass(frozen=True, slots=True)
class Alert:
    """`alert "NAME" when SIGNAL OP THRESHOLD [per|over D] [for D] [to "URL"]`."""

    name: Literal  # a string; `{key}` in it is the key of a per-key alert
    signal: Signal
    op: str  # > >= < <= (others are refused by the checker)
    op_span: Span
    threshold: Literal
    window_word: str | None  # `per` (a count over the window) or `over` (a measurement)
    window: Literal | None
    hold: Literal | None  # `for 5m`: how long the condition must hold before it fires
    webhook: Literal | None  # `to "https://…"`
    span: Span


Statement = CatalogStmt | Defaults | Route | Limit | PolicyRequire | Deny | Alert


@dataclass(frozen=True, slots=True)
class PolicyFile:
    name: str
    statements: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Comment:
    """A `# …` comment: the parser drops them from the AST; the formatter puts them back."""

    text: str  # from `#` to the end of its line, trailing whitespace removed
    span: Span
