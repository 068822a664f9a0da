"""The public API of classifier plugins (`request.features.NAME`): docs/features.md.

    from engine.features import RequestView, feature

    @feature(type=bool, timeout_ms=20, fallback=False)
    def legal(request: RequestView) -> bool:
        "The last message reads like a legal question."
        return "contract" in request.last_text.lower()

registered in the plugin's pyproject.toml as

    [project.entry-points."policyctl.features"]
    legal = "my_plugins:legal"

The machinery is `engine.wire.plugins`; this module is the stable import for plugins.
"""

from __future__ import annotations

from engine.wire.plugins import (
    DEFAULT_TIMEOUT_MS,
    GROUP,
    FeatureDeclarationError,
    FeatureSpec,
    RequestView,
    feature,
)

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "GROUP",
    "FeatureDeclarationError",
    "FeatureSpec",
    "RequestView",
    "feature",
]
