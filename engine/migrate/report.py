"""The records a migration hands back: what became of each deployment, every key that was
approximated or not translated (with its key path and position), and the outputs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from engine.migrate.config import Where

NoteKind = Literal["untranslated", "approximated"]
Outcome = Literal["full", "partial", "failed"]


@dataclass(frozen=True, slots=True)
class Note:
    """One key the policy does not carry over as LiteLLM means it: `untranslated` (left
    out, with why and what to do), or `approximated` (translated to something close, and
    how it differs)."""

    kind: NoteKind
    where: Where
    message: str
    key: str  # the config key it is about (`num_retries`, `litellm_params.tags`): for counts

    def line(self, source: str) -> str:
        return f"{self.where.located(source)}: {self.message}"


@dataclass(frozen=True, slots=True)
class Translated:
    """A deployment that became a catalog model: `model_list[index]` of group `group` is
    `provider/id` (the provider gets a suffix, `openai-2`, when two deployments name the same
    model), priced from LiteLLM's table entry `table_key` (None: from model_info only)."""

    index: int
    group: str
    provider: str
    id: str
    table_key: str | None
    deployment_id: str | None  # model_info.id, when the config gives one


@dataclass(frozen=True, slots=True)
class Report:
    source: str
    deployments: int  # entries of model_list
    translated: tuple[Translated, ...]
    groups: tuple[str, ...]  # every model group, in the order of model_list
    routes: tuple[str, ...]  # the groups that have a route
    notes: tuple[Note, ...]  # in the order of the config
    left: tuple[tuple[str, int], ...]  # connection settings and credentials not copied: counts

    @property
    def untranslated(self) -> tuple[Note, ...]:
        return tuple(n for n in self.notes if n.kind == "untranslated")

    @property
    def approximated(self) -> tuple[Note, ...]:
        return tuple(n for n in self.notes if n.kind == "approximated")

    @property
    def outcome(self) -> Outcome:
        """`full`: every key translated (perhaps approximately); `partial`: a policy, with
        keys left out; `failed`: no deployment could be translated, so no policy."""
        if not self.translated:
            return "failed"
        return "partial" if self.untranslated else "full"

    def key_counts(self) -> list[tuple[str, int]]:
        """Untranslated keys by how often they occur, most first."""
        counts = Counter(n.key for n in self.untranslated)
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def lines(self) -> list[str]:
        """The report as `policyctl migrate` prints it (standard error)."""
        out = [
            f"{self.source}: translated {len(self.translated)} of {self.deployments}"
            f" deployments, {len(self.routes)} of {len(self.groups)} model groups"
        ]
        for title, notes in (
            ("not translated", self.untranslated),
            ("approximated", self.approximated),
        ):
            if notes:
                out.append(f"{title} ({len(notes)}):")
                out.extend(f"  {n.line(self.source)}" for n in notes)
        if self.left:
            shown = ", ".join(f"{key} {count}" for key, count in self.left)
            out.append(
                f"left in LiteLLM (connection settings, credentials, request parameters;"
                f" never copied): {shown}"
            )
        return out


@dataclass(frozen=True, slots=True)
class Migration:
    """The policy text (naming the catalog file it was made for), the catalog document
    (version 2, None when nothing was translated) and the report."""

    policy: str | None
    catalog: dict[str, Any] | None
    report: Report
