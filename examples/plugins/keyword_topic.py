"""A classifier plugin: the topic of the last message, by keywords (docs/features.md).

Registered in pyproject.toml as `topic = "keyword_topic:topic"`; a policy reads it as
`request.features.topic`.
"""

from __future__ import annotations

from engine.features import RequestView, feature

TOPICS = {
    "legal": ("contract", "lawsuit", "liability", "gdpr", "clause"),
    "medical": ("symptom", "diagnosis", "dosage", "medication"),
}


# keywords over the request's text cannot hang: `inline=True` runs it on the deciding
# thread, without the handoff to a worker that enforcing its timeout costs
@feature(type=str, timeout_ms=50, fallback="general", inline=True)
def topic(request: RequestView) -> str:
    """The last message's topic: "code", "legal", "medical" or "general"."""
    if request.text("code"):  # a prompt feature, derived once for the request
        return "code"
    words = set(request.last_text.lower().split())
    for name, keywords in TOPICS.items():
        if words.intersection(keywords):
            return name
    return "general"
