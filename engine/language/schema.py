"""The names a policy can read, and their types: `request.<field>` and `model.<attr>`.

Standard library only. The checker types expressions with these tables; the request
validator (`engine.routing.request`) produces evaluation environments with exactly these keys.
Scopes and limit units are in `engine.vocabulary`; strategy names and their factors are
the strategy registry's (`engine.strategies`).
"""

from __future__ import annotations

from engine.vocabulary import Unit

# A field type: a unit, and for lists the unit of the items.
FieldType = tuple[Unit, Unit | None]

REQUEST_FIELDS: dict[str, FieldType] = {
    "id": (Unit.STRING, None),
    "user": (Unit.STRING, None),
    "ip": (Unit.STRING, None),
    "model": (Unit.STRING, None),
    "prompt": (Unit.STRING, None),
    "input_tokens": (Unit.COUNT, None),
    "max_tokens": (Unit.COUNT, None),
    "cached_tokens": (Unit.COUNT, None),
    "images": (Unit.COUNT, None),
    "requires_vision": (Unit.BOOL, None),
    "requires_tools": (Unit.BOOL, None),
    "requires_json": (Unit.BOOL, None),
    "requires_json_schema": (Unit.BOOL, None),
    "requires_pdf": (Unit.BOOL, None),
    "requires_audio": (Unit.BOOL, None),
    "requires_reasoning": (Unit.BOOL, None),
    "stream": (Unit.BOOL, None),
    "max_cost": (Unit.MONEY, None),
    "max_latency": (Unit.DURATION, None),
    "max_latency_ms": (Unit.DURATION, None),
    "min_quality": (Unit.COUNT, None),  # a quality floor (0-1) the client asks for, or null
    "region": (Unit.STRING, None),
    "priority": (Unit.COUNT, None),  # the order of waiters for a limit's tokens
    "tags": (Unit.LIST, Unit.STRING),
    "format": (Unit.STRING, None),  # "native", "openai-chat", … (engine.wire.FORMATS)
}
# the request fields that ask for a catalog capability (`model.supports`)
NEEDS: dict[str, str] = {
    "requires_vision": "vision",
    "requires_tools": "tools",
    "requires_json": "json",
    "requires_json_schema": "json_schema",
    "requires_pdf": "pdf",
    "requires_audio": "audio",
    "requires_reasoning": "reasoning",
    "stream": "streaming",
}
# `request.metadata.<key>`: any scalar, known only when a request arrives.
METADATA_FIELD = "metadata"

# Derived request fields: not in the environment a request is read into, but derived from
# its text when a condition reads them (`engine.wire.features`, which holds how each is
# derived under the same names). One registry of the names and their types: a classifier
# plugin's `request.features.NAME` joins it under its own prefix.
# `request.text.<feature>`: a prompt feature (docs/requests.md, Prompt features)
TEXT_FIELD = "text"
PROMPT_FEATURES: dict[str, FieldType] = {
    "tokens": (Unit.COUNT, None),  # the conversation's text, in tokens
    "last_tokens": (Unit.COUNT, None),  # the last turn's text, in tokens
    "turns": (Unit.COUNT, None),  # messages other than system prompts
    "code": (Unit.BOOL, None),  # a code block or code lines
    "math": (Unit.BOOL, None),  # math in the last turn
    "multi_step": (Unit.BOOL, None),  # the last turn asks for multi-step work
    "tool_results": (Unit.BOOL, None),  # a tool's result in the conversation
    "script": (Unit.STRING, None),  # the last turn's dominant script: "latin", "cjk", …
    "system_reasoning": (Unit.BOOL, None),  # a system prompt asks for reasoning
    "system_json": (Unit.BOOL, None),  # a system prompt asks for JSON
}
# what each prompt feature means, in one line (editor hovers and completions)
PROMPT_FEATURE_DOCS: dict[str, str] = {
    "tokens": "the conversation's text, in tokens",
    "last_tokens": "the last turn's text, in tokens",
    "turns": "the messages other than system prompts",
    "code": "a code block or code lines in the recent turns",
    "math": "math in the last turn (symbols, LaTeX, equations, math words)",
    "multi_step": "the last turn asks for multi-step work (prove, design, step by step, …)",
    "tool_results": "a tool's result is in the conversation",
    "script": 'the last turn\'s dominant script: "latin", "cjk", "cyrillic", … or "none"',
    "system_reasoning": "a system prompt asks for reasoning (step by step, …)",
    "system_json": "a system prompt asks for JSON",
}
# `request.complexity`: 0-1, a weighted sum over the prompt features (docs/language.md)
COMPLEXITY_FIELD = "complexity"
# `request.features.<name>`: a classifier plugin's value (`engine.wire.plugins`; its type is
# the plugin's registration: `PLUGIN_TYPES` maps the Python type it declares)
FEATURES_FIELD = "features"
PLUGIN_TYPES: dict[type, FieldType] = {
    bool: (Unit.BOOL, None),
    int: (Unit.COUNT, None),
    float: (Unit.COUNT, None),
    str: (Unit.STRING, None),
}
DERIVED_FIELDS: dict[str, FieldType] = {
    **{f"{TEXT_FIELD}.{name}": t for name, t in PROMPT_FEATURES.items()},
    COMPLEXITY_FIELD: (Unit.COUNT, None),
}

MODEL_ATTRS: dict[str, FieldType] = {
    "id": (Unit.STRING, None),
    "provider": (Unit.STRING, None),
    "key": (Unit.STRING, None),
    "aliases": (Unit.LIST, Unit.STRING),
    "context_window": (Unit.COUNT, None),
    "max_tokens": (Unit.COUNT, None),
    "supports": (Unit.LIST, Unit.STRING),
    "regions": (Unit.LIST, Unit.STRING),
    "pricing.input": (Unit.MONEY, None),
    "pricing.output": (Unit.MONEY, None),
    "pricing.cached_input": (Unit.MONEY, None),  # null when the catalog gives none
    "pricing.image": (Unit.MONEY, None),
    "latency_p50": (Unit.DURATION, None),
    "latency_p95": (Unit.DURATION, None),
    "quality": (Unit.COUNT, None),  # the catalog's overall score (0-1), or null
    # measured over the metrics window (the catalog prior below the route's `min_samples`):
    "p50": (Unit.DURATION, None),
    "p95": (Unit.DURATION, None),
    "success_rate": (Unit.PERCENT, None),
    "samples": (Unit.COUNT, None),
    "deprecated": (Unit.DATE, None),  # or null
    "retires": (Unit.DATE, None),  # or null
}
# the attributes read from live measurements, known only when a decision is made
MEASURED_ATTRS = ("p50", "p95", "success_rate", "samples")
# `model.quality.<task>`: a per-task score (0-1) or null, for any task some catalog model
# scores (the checker asks the catalog); `model.quality.overall` is `model.quality`
QUALITY = "quality"
QUALITY_TASK: FieldType = (Unit.COUNT, None)
