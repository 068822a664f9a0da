"""policyctl inside LiteLLM's Router: a routing strategy that decides among the Router's own
deployments by policy, and a callback that records every call's outcome into the engine.

    from litellm import Router
    from engine import PolicyEngine
    from engine.integrations.litellm import install

    router = Router(model_list=model_list)       # the app's Router, unchanged
    install(router, PolicyEngine("policies"))    # strategy + callback

Each deployment maps to a catalog entry (`catalog_entry`); the engine decides among the
entries of the requested model group only (`PolicyEngine.evaluate(..., only=...)`), and the
strategy returns the Router's deployment for the chosen entry. A denial (a rate limit, or
no eligible model) is raised as `PolicyDenied`, a `litellm.RateLimitError` (HTTP 429) with
the retry time. litellm is imported on first use, never by importing this module, and
always with `LITELLM_LOCAL_MODEL_COST_MAP=True` (it then never fetches its price table).
"""

from __future__ import annotations

import functools
import math
import os
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from engine.api.policy_engine import PolicyEngine
from engine.catalog.model import Catalog, Model
from engine.diagnostics import did_you_mean
from engine.errors import PolicyctlError
from engine.limits.records import LimitDenial
from engine.routing.decision import Decision
from engine.routing.evaluator import draw
from engine.wire import OPENAI_CHAT, OPENAI_RESPONSES

STAMP = "policyctl"  # the request-metadata key the strategy writes for the callback
MAPPING_KEY = "policyctl_model"  # model_info key naming a deployment's catalog entry
# request-metadata keys LiteLLM's Router (and proxy) add: not the app's, not for policies
INJECTED_METADATA = frozenset(
    {
        STAMP, "model_group", "model_group_alias", "model_group_size", "original_model_group",
        "attempted_fallbacks", "attempted_retries", "max_retries", "request_retry_count",
        "deployment", "deployment_model_name", "model_info", "api_base", "caching_groups",
        "previous_models", "kubernetes_pod_routing", "fallback_depth", "headers",
        "endpoint", "hidden_params", "model_region", "mock_testing_fallbacks",
        "requester_ip_address", "requester_metadata", "global_max_parallel_requests",
    }
)  # fmt: skip
INJECTED_PREFIXES = ("_", "litellm_", "user_api_key")
# what the engine reads from a call's keywords (the wire readers take these fields)
CALL_KEYS = (
    "tools", "functions", "response_format", "max_tokens", "max_completion_tokens", "user",
    "stream", "modalities", "audio", "reasoning_effort", "thinking", "reasoning",
)  # fmt: skip


class UnmappedDeployment(PolicyctlError, LookupError):
    """A Router deployment that names no entry of the policy's catalog."""


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as err:  # pragma: no cover - the extra is installed where this runs
        raise ImportError(
            "the LiteLLM integration needs litellm: pip install 'policyctl[litellm]'"
        ) from err
    return litellm


# ----------------------------------------------------------------- deployments -> catalog


def _split(model: str) -> tuple[str | None, str]:
    provider, slash, rest = model.partition("/")
    return (provider, rest) if slash and provider and rest else (None, model)


def _lookup(catalog: Catalog, provider: str, name: str) -> Model | None:
    """The entry `provider/name` names: an entry's id or alias, else the one deployment of
    that provider among a catalog model's deployments."""
    found = catalog.find(provider, name)
    if found is not None:
        return found
    mine = [m for m in catalog.resolve(provider, name) if m.provider == provider]
    return mine[0] if len(mine) == 1 else None


def catalog_entry(catalog: Catalog, deployment: Mapping[str, Any]) -> Model:
    """The catalog entry a LiteLLM deployment serves, from (first that applies):
    `model_info["policyctl_model"]` ("provider/id", nothing else is tried);
    `model_info["base_model"]` (Azure's convention) under the deployment's provider;
    `litellm_params.model` ("openai/gpt-4o": provider `openai`, id `gpt-4o`; without a
    prefix, `custom_llm_provider` or the provider LiteLLM infers from the name).

    Raises `UnmappedDeployment` naming the deployment and how to map it."""
    params = deployment.get("litellm_params") or {}
    info = deployment.get("model_info") or {}
    model = params.get("model")
    explicit = info.get(MAPPING_KEY)
    tried: list[str] = []
    if explicit is not None:
        provider, name = _split(str(explicit))
        if provider is not None:
            found = _lookup(catalog, provider, name)
            if found is not None:
                return found
        tried.append(str(explicit))
    elif isinstance(model, str):
        provider, name = _split(model)
        provider = params.get("custom_llm_provider") or provider or _provider_of(model)
        names = [name]
        base = info.get("base_model")
        if isinstance(base, str) and base:
            names.insert(0, _split(base)[1])
        for candidate in names:
            if provider is not None:
                found = _lookup(catalog, provider, candidate)
                if found is not None:
                    return found
                tried.append(f"{provider}/{candidate}")
            else:
                tried.append(candidate)
    group = deployment.get("model_name")
    guess = next((found for t in tried if (found := _guess(catalog, t))), None)
    looked = ", ".join(f"`{t}`" for t in tried) + (f"; did you mean `{guess}`?" if guess else "")
    raise UnmappedDeployment(
        f"LiteLLM deployment `{model}` (model group `{group}`, id `{info.get('id')}`) is not"
        f" in the catalog `{catalog.source}` (looked for {looked}):"
        f" add it to the catalog, or name the entry it serves in the deployment's model_info,"
        f' e.g. "model_info": {{"{MAPPING_KEY}": "{guess or "openai/gpt-4o"}"}}'
    )


def _guess(catalog: Catalog, tried: str) -> str | None:
    """The catalog entry `provider/name` was likely meant to be (the checker's did-you-mean
    for an unknown model: among the names of the same provider)."""
    provider, name = _split(tried)
    if provider is None:
        return None
    found = did_you_mean(name, catalog.names(provider))
    return None if found is None else f"{provider}/{found}"


def _provider_of(model: str) -> str | None:
    """The provider LiteLLM routes an unprefixed model name to (`gpt-4o` -> `openai`)."""
    try:
        return str(_litellm().get_llm_provider(model)[1])
    except Exception:  # LiteLLM does not know the name either: reported as unmapped
        return None


# ----------------------------------------------------------------- the request


def _scalar_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in metadata.items()
        if type(key) is str
        and type(value) in (str, int, float, bool)
        and key not in INJECTED_METADATA
        and not key.startswith(INJECTED_PREFIXES)
    }


def _as_dict(item: Any) -> Any:
    """A message or part as a dict (LiteLLM accepts its own pydantic `Message` objects)."""
    if isinstance(item, Mapping):
        return item
    dump = getattr(item, "model_dump", None)
    return dump() if callable(dump) else item


def _response_format(value: Any) -> Any:
    """A pydantic class (LiteLLM accepts one for structured output) as a json_schema."""
    if isinstance(value, type):
        return {"type": "json_schema", "json_schema": {"name": value.__name__}}
    return value


def wire_body(
    group: str, messages: Sequence[Any] | None, input: Any, kwargs: Mapping[str, Any]
) -> tuple[dict[str, Any], str]:
    """The body of one LiteLLM call as the engine reads it, and its wire format: an OpenAI
    Chat Completions body (`openai-chat`) built from the model group, the messages and
    the call's keywords (tools, functions, response_format, max_tokens,
    max_completion_tokens, user, stream, modalities, audio, reasoning_effort, thinking, and
    the scalar values of `metadata` less the keys LiteLLM's Router adds); a call with `input`
    and no messages (responses, embeddings) is an OpenAI Responses body (`openai-responses`),
    whose `reasoning_effort` is its `reasoning.effort` (unless it has a `reasoning`).
    Nothing is copied but the metadata."""
    body: dict[str, Any] = {"model": group}
    fmt = OPENAI_CHAT
    if messages is not None:
        body["messages"] = (
            messages
            if all(isinstance(m, Mapping) for m in messages)
            else [_as_dict(m) for m in messages]
        )
    elif isinstance(input, str):
        body["input"], fmt = input, OPENAI_RESPONSES
    elif isinstance(input, list):
        texts = all(isinstance(i, str) for i in input)
        body["input"], fmt = ("\n".join(input) if texts else input), OPENAI_RESPONSES
    else:
        body["messages"] = []
    for key in CALL_KEYS:
        value = kwargs.get(key)
        if value is not None:
            body[key] = _response_format(value) if key == "response_format" else value
    if fmt == OPENAI_RESPONSES:
        if "max_tokens" in body:
            body["max_output_tokens"] = body.pop("max_tokens")
        if "reasoning_effort" in body:
            effort = body.pop("reasoning_effort")
            body.setdefault("reasoning", {"effort": effort})
    metadata = kwargs.get("metadata")
    if isinstance(metadata, Mapping):
        scalars = _scalar_metadata(metadata)
        if scalars:
            body["metadata"] = scalars
    return body, fmt


def _metadata_of(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's metadata bucket (LiteLLM reads `litellm_metadata` on some endpoints)."""
    for name in ("metadata", "litellm_metadata"):
        bucket = kwargs.get(name)
        if isinstance(bucket, dict):
            return bucket
    bucket = kwargs["metadata"] = {}
    return bucket


# ----------------------------------------------------------------- the strategy


class _Group:
    """A model group's deployments, mapped: by catalog entry key, and the keys as `only`."""

    __slots__ = ("by_key", "ids", "only", "version")

    def __init__(
        self, ids: tuple[Any, ...], by_key: dict[str, list[dict[str, Any]]], version: Any
    ) -> None:
        self.ids = ids
        self.by_key = by_key
        self.only = frozenset(by_key)
        self.version = version  # the Router registry's version it was read at (None: unknown)


class _Strategy:
    """The pick both of LiteLLM's entry points run (the LiteLLM base class is mixed in by
    `_classes`)."""

    def __init__(self, engine: PolicyEngine, router: Any) -> None:
        self.engine = engine
        self.router = router
        self.token = uuid.uuid4().hex  # marks the calls this strategy routed
        self._catalog: Catalog | None = None
        self._groups: dict[str, _Group] = {}
        self._entries: dict[Any, Model] = {}  # deployment id -> catalog entry
        self.callback: Any = _classes()[1](self)

    # LiteLLM's two entry points
    async def async_get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        return self.pick(model, messages, input, specific_deployment, request_kwargs)

    def get_available_deployment(
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        return self.pick(model, messages, input, specific_deployment, request_kwargs)

    def deployments(self, group: str | None = None) -> list[dict[str, Any]]:
        """The Router's deployments of `group` (all of them for None)."""
        registry = getattr(self.router, "registry", None)
        if registry is not None:
            found = registry().deployments(group)
        else:  # LiteLLM before the registry API
            found = self.router.get_model_list(model_name=group)
        return list(found or ())

    def check(self) -> None:
        """Map every deployment of the Router now (raises `UnmappedDeployment`)."""
        for deployment in self.deployments():
            self.entry(deployment)

    def entry(self, deployment: Mapping[str, Any]) -> Model:
        catalog = self.engine.program.catalog
        if catalog is not self._catalog:  # a reload may change the catalog
            self._catalog, self._entries, self._groups = catalog, {}, {}
        ident = (deployment.get("model_info") or {}).get("id")
        found = self._entries.get(ident) if ident is not None else None
        if found is None:
            found = catalog_entry(catalog, deployment)
            if ident is not None:
                self._entries[ident] = found
        return found

    def _version(self) -> Any:
        """The Router registry's version (it changes with the deployments), if it has one."""
        registry = getattr(self.router, "registry", None)
        return None if registry is None else getattr(registry(), "version", None)

    def _group(self, model: str, specific: bool | None) -> _Group:
        version = self._version()
        cached = self._groups.get(model)
        if (
            cached is not None
            and version is not None
            and cached.version == version
            and self._catalog is self.engine.program.catalog
        ):
            return cached  # the same deployments, the same catalog
        deployments = self.deployments(model)
        if not deployments and specific:
            one = self._by_id(model)
            deployments = [one] if one is not None else []
        if not deployments:
            raise UnmappedDeployment(f"the LiteLLM Router has no deployment for model `{model}`")
        ids = tuple((d.get("model_info") or {}).get("id") for d in deployments)
        if (
            cached is not None
            and cached.ids == ids
            and self._catalog is self.engine.program.catalog
            and None not in ids
        ):
            return cached
        by_key: dict[str, list[dict[str, Any]]] = {}
        for deployment in deployments:
            by_key.setdefault(self.entry(deployment).key, []).append(deployment)
        group = self._groups[model] = _Group(ids, by_key, version)
        return group

    def _by_id(self, ident: str) -> dict[str, Any] | None:
        for deployment in self.deployments():
            if (deployment.get("model_info") or {}).get("id") == ident:
                return deployment
        return None

    def pick(
        self,
        model: str,
        messages: Any,
        input: Any,
        specific_deployment: bool | None,
        request_kwargs: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = request_kwargs if isinstance(request_kwargs, dict) else {}
        group = self._group(model, specific_deployment)
        metadata = _metadata_of(kwargs)
        trace = kwargs.get("litellm_trace_id") or kwargs.get("litellm_call_id")
        if not isinstance(trace, str):
            trace = uuid.uuid4().hex
            kwargs["litellm_trace_id"] = trace
        attempt = len(metadata.get("previous_models") or ())  # retries and fallbacks so far
        request_id = trace if attempt == 0 else f"{trace}#{attempt}"
        body, fmt = wire_body(model, messages, input, kwargs)
        decision = self.engine.evaluate(
            body, input_format=fmt, request_id=request_id, only=group.only
        )
        if not decision.allowed:
            raise _classes()[2](decision, model)
        key = f"{decision.provider}/{decision.model}"
        candidates = group.by_key[key]
        chosen = (
            candidates[0]
            if len(candidates) == 1
            else candidates[int(draw(request_id + "/deployment") * len(candidates))]
        )
        metadata[STAMP] = {
            "token": self.token,
            "request_id": request_id,
            "route": decision.route,
            "entry": key,
            "deployment": (chosen.get("model_info") or {}).get("id"),
            "user": body.get("user"),
        }
        return chosen

    def uninstall(self) -> None:
        """Take the callback off LiteLLM's callback lists (the Router keeps the strategy)."""
        litellm = _litellm()
        for name in (
            "callbacks", "success_callback", "failure_callback", "_async_success_callback",
            "_async_failure_callback",
        ):  # fmt: skip
            listed = getattr(litellm, name, None)
            while isinstance(listed, list) and self.callback in listed:
                listed.remove(self.callback)


# ----------------------------------------------------------------- the callback


def _seconds(start: Any, end: Any) -> float | None:
    if isinstance(start, datetime) and isinstance(end, datetime):
        return (end - start).total_seconds()
    if isinstance(start, int | float) and isinstance(end, int | float):
        return float(end - start)
    if isinstance(end, timedelta):
        return end.total_seconds()
    return None


def _tokens(response: Any, kwargs: Mapping[str, Any]) -> tuple[int | None, int | None]:
    usage = getattr(response, "usage", None)
    if usage is None and isinstance(response, Mapping):
        usage = response.get("usage")
    if usage is not None:
        get = usage.get if isinstance(usage, Mapping) else lambda n: getattr(usage, n, None)
        prompt, completion = get("prompt_tokens"), get("completion_tokens")
    else:
        logged = kwargs.get("standard_logging_object") or {}
        prompt, completion = logged.get("prompt_tokens"), logged.get("completion_tokens")
    return (
        prompt if type(prompt) is int and prompt >= 0 else None,
        completion if type(completion) is int and completion >= 0 else None,
    )


def error_class(kwargs: Mapping[str, Any]) -> str | None:
    """The exception class of a failed call (`RateLimitError`, `InternalServerError`, …)."""
    exception = kwargs.get("exception")
    if isinstance(exception, BaseException):
        return type(exception).__name__
    logged = (kwargs.get("standard_logging_object") or {}).get("error_information") or {}
    name = logged.get("error_class")
    return name if isinstance(name, str) and name else None


class _Callback:
    """Records every call the strategy routed: `engine.record_outcome` with the latency, the
    tokens and success. The outcome record has no error class: the callback counts them
    itself, in memory (`error_classes`, by catalog entry), and nothing stores them."""

    def __init__(self, strategy: _Strategy) -> None:
        super().__init__()  # LiteLLM's CustomLogger
        self.strategy = strategy
        self.recorded = 0  # outcomes recorded (dropped ones, past a full queue, are not)
        self.error_classes: Counter[tuple[str, str]] = Counter()

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, start_time, end_time, True)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, start_time, end_time, False)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, start_time, end_time, True)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._record(kwargs, response_obj, start_time, end_time, False)

    def _record(self, kwargs: Any, response: Any, start: Any, end: Any, success: bool) -> None:
        if not isinstance(kwargs, Mapping) or kwargs.get("cache_hit") is True:
            return  # a cached answer says nothing about the deployment
        params = kwargs.get("litellm_params") or {}
        stamp = None
        for name in ("metadata", "litellm_metadata"):
            bucket = params.get(name)
            if isinstance(bucket, Mapping) and isinstance(bucket.get(STAMP), Mapping):
                stamp = bucket[STAMP]
                break
        if stamp is None or stamp.get("token") != self.strategy.token:
            return  # not a call this strategy routed (another Router's, or no Router's)
        info = params.get("model_info") or {}
        ident = info.get("id")
        if ident is not None and ident == stamp.get("deployment"):
            provider, _, model = str(stamp["entry"]).partition("/")
        else:  # LiteLLM called another deployment than the one picked: map that one
            deployment = {"litellm_params": params, "model_info": info}
            entry = self.strategy.entry(deployment)
            provider, model = entry.provider, entry.id
        seconds = _seconds(start, end)
        if seconds is None or not seconds >= 0:
            return
        input_tokens, output_tokens = _tokens(response, kwargs) if success else (None, None)
        if not success:
            name = error_class(kwargs)
            if name is not None:
                self.error_classes[(f"{provider}/{model}", name)] += 1
        user = stamp.get("user")
        if self.strategy.engine.record_outcome(
            provider,
            model,
            latency_ms=seconds * 1000.0,
            success=success,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            request_id=stamp.get("request_id"),
            route=stamp.get("route"),
            user=user if isinstance(user, str) else None,
        ):
            self.recorded += 1


# ----------------------------------------------------------------- the 429


def retry_after_ms(decision: Decision) -> int | None:
    """When the request may be tried again, from the limit that denied it (None: no limit
    denied it, or the request is larger than the limit)."""
    denied = decision.denied_by
    return denied.retry_after_ms if isinstance(denied, LimitDenial) else None


def _denied_init(self: Any, decision: Decision, group: str) -> None:
    retry = retry_after_ms(decision)
    headers: dict[str, str] = {}
    if retry is not None:
        headers = {
            "retry-after": str(max(1, math.ceil(retry / 1000))),
            "retry-after-ms": str(retry),
        }
    self.decision = decision
    self.retry_after_ms = retry
    _litellm().RateLimitError.__init__(
        self,
        f"policyctl denied the request for model group `{group}`: {decision.reason}",
        llm_provider="policyctl",
        model=group,
        **_ERROR_OPTIONS,
        **({"headers": headers} if headers and "headers" in _ERROR_PARAMETERS else {}),
    )
    self.response.headers.update(headers)  # the 429 response LiteLLM made for it


_ERROR_OPTIONS: dict[str, Any] = {}  # what this litellm's RateLimitError takes besides
_ERROR_PARAMETERS: set[str] = set()


@functools.cache
def _classes() -> tuple[type, type, type]:
    """(PolicyctlStrategy, PolicyctlCallback, PolicyDenied), built on LiteLLM's bases the
    first time they are needed."""
    import inspect

    litellm = _litellm()
    from litellm.integrations.custom_logger import CustomLogger
    from litellm.types.router import CustomRoutingStrategyBase

    _ERROR_PARAMETERS.update(inspect.signature(litellm.RateLimitError.__init__).parameters)
    if "category" in _ERROR_PARAMETERS:
        _ERROR_OPTIONS["category"] = "litellm_rate_limit"  # a limit on this side, not the vendor's
    strategy = type(
        "PolicyctlStrategy",
        (_Strategy, CustomRoutingStrategyBase),
        {"__module__": __name__, "__doc__": _Strategy.__doc__},
    )
    callback = type(
        "PolicyctlCallback",
        (_Callback, CustomLogger),
        {"__module__": __name__, "__doc__": _Callback.__doc__},
    )
    denied = type(
        "PolicyDenied",
        (litellm.RateLimitError,),
        {
            "__module__": __name__,
            "__init__": _denied_init,
            "__doc__": "A policy denial as LiteLLM's 429: `decision` says why,"
            " `retry_after_ms` when to try again (also the `retry-after` header).",
        },
    )
    return strategy, callback, denied


def __getattr__(name: str) -> type:
    classes = {"PolicyctlStrategy": 0, "PolicyctlCallback": 1, "PolicyDenied": 2}
    if name in classes:
        return _classes()[classes[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------- switching an app over


def install(router: Any, engine: PolicyEngine) -> Any:
    """Route `router`'s calls by `engine`'s policy and record their outcomes into it.
    Every deployment must map to the catalog (raises `UnmappedDeployment` now, not at the
    first call). Returns the strategy; `strategy.callback` is the LiteLLM callback and
    `strategy.uninstall()` takes it off LiteLLM's callback list."""
    strategy = _classes()[0](engine, router)
    strategy.check()
    register = getattr(router, "register_plugin", None)
    if register is not None:
        register(strategy)
    else:  # LiteLLM before register_plugin
        router.set_custom_routing_strategy(strategy)
    _litellm().callbacks.append(strategy.callback)
    return strategy


def policyctl_router(
    engine: PolicyEngine, model_list: list[dict[str, Any]], **router_kwargs: Any
) -> Any:
    """A LiteLLM `Router(model_list=..., **router_kwargs)` routed by `engine` (`install`)."""
    router = _litellm().Router(model_list=model_list, **router_kwargs)
    install(router, engine)
    return router
