"""What reading a wire body yields: `WireRequest`, each derived value with the field it
came from (`Derivation`), and `WireError` for a body whose routing fields are malformed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import PolicyctlError

NATIVE = "native"
OPENAI_CHAT = "openai-chat"
OPENAI_RESPONSES = "openai-responses"
ANTHROPIC = "anthropic"
GEMINI = "gemini"
# the request formats `eval`, `/v1/eval` and `PolicyEngine.evaluate` read, native first
FORMATS = (NATIVE, OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC, GEMINI)
WIRE_FORMATS = FORMATS[1:]


class WireError(PolicyctlError, ValueError):
    """A wire body whose fields routing reads are malformed; `.problems` lists
    (field, message) like the native request's errors."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))


@dataclass(frozen=True, slots=True)
class Derivation:
    """One value routing derived from a body, and where it came from (for `--explain`)."""

    field: str
    value: Any
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "value": self.value, "from": self.source}


@dataclass(slots=True)
class WireRequest:
    """The native request fields a wire body yields. Mutable while a reader fills it."""

    format: str
    model: str | None = None
    user: str | None = None
    stream: bool = False
    max_tokens: int | None = None
    text_tokens: int = 0
    image_tokens: int = 0
    images: int = 0
    messages: int = 0
    requires_vision: bool = False
    requires_tools: bool = False
    requires_json: bool = False
    requires_json_schema: bool = False
    requires_pdf: bool = False
    requires_audio: bool = False
    requires_reasoning: bool = False
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)
    # (field, value, source) as read; `derivations()` makes the records (explain only)
    derived: list[tuple[str, Any, str]] = field(default_factory=list)
    # the text the model reads, piece by piece, estimated at once when reading ends
    texts: list[str] = field(default_factory=list)
    text: str = ""  # the pieces joined, once they are all read
    # what the request key hashes besides the text: each image's size and ends
    digest: list[str] = field(default_factory=list)

    @property
    def input_tokens(self) -> int:
        return self.text_tokens + self.image_tokens

    def need(self, requirement: str, source: str) -> None:
        """Set `requires_<requirement>` (first source wins in the explanation)."""
        name = "requires_" + requirement
        if not getattr(self, name):
            setattr(self, name, True)
            self.derived.append((name, True, source))

    def note(self, name: str, value: Any, source: str) -> None:
        self.derived.append((name, value, source))

    def derivations(self) -> list[Derivation]:
        """Each derived value and the field it came from, the input-token estimate last."""
        found = [Derivation(name, value, source) for name, value, source in self.derived]
        images = f" + {self.image_tokens} for {self.images} image(s)" if self.images else ""
        found.append(
            Derivation(
                "input_tokens",
                self.input_tokens,
                f"{self.text_tokens} estimated from the text of {self.messages} message(s)"
                + images,
            )
        )
        return found
