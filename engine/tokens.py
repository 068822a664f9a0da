"""Token estimates for text, before any tokenizer is at hand. Standard library only."""

from __future__ import annotations

import math

# tokens a chat format adds per message (role, separators), as OpenAI's counting does
TOKENS_PER_MESSAGE = 3


def estimate_text_tokens(text: str) -> int:
    """An estimate of the tokens of `text`."""
    return math.ceil(len(text) / 4)
