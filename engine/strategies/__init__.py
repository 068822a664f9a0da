"""The routing strategies, registered by name: the registry.

`STRATEGIES` maps each name to its `Strategy` (see `engine.strategies.base`), in the
order help texts list them. A strategy is one module here with one `@strategy(...)`
registration; importing this package registers the built-in six. To add one, write
`engine/strategies/NAME.py` and add it to `BUILT_IN` below.
"""

from __future__ import annotations

import importlib

from engine.strategies.base import (
    STRATEGIES,
    Pool,
    Rank,
    Ranking,
    RouteFacts,
    RouteView,
    Strategy,
    Vectors,
    register,
    strategy,
    unregister,
)

# the built-in strategies, one module each, registered in this order (the order help
# texts list them in)
BUILT_IN = ("latency", "cost", "weighted", "model_specific", "round_robin", "failover")
for _module in BUILT_IN:
    importlib.import_module(f"{__name__}.{_module}")

DEFAULT_STRATEGY = "weighted"  # when a policy names none

__all__ = [
    "BUILT_IN",
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Pool",
    "Rank",
    "Ranking",
    "RouteFacts",
    "RouteView",
    "Strategy",
    "Vectors",
    "register",
    "strategy",
    "unregister",
]
