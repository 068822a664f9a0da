"""The catalogue of diagnostic codes: one Markdown file per code in `codes/`.

Each file has one shape (docs/errors.md):

    # E0333: unit mismatch
    Paragraphs: what it means and how to fix it.

    ## Wrong
    ```policy
    …
    ```

    ## Right
    ```policy
    …
    ```

A section's fenced blocks are the example: a `policy` block is a policy file; a block whose
info string names a file (```` ```yaml models.yaml ````) is that file beside it; an `sh`
block is the commands that show the code (`policyctl check`, `policyctl eval …`), for
codes whose trigger is not a policy text. `policyctl explain` prints a file as it is.
Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.diagnostics import did_you_mean
from engine.errors import PolicyctlError
from engine.resources import codes_dir

CODE = re.compile(r"[EW][0-9]{4}")
_TITLE = re.compile(r"^# ([EW][0-9]{4}): (.+)$")
_FENCE = re.compile(r"^```(\S*)[ \t]*(.*)$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced block of an example: its language, the file it names (if any), its text."""

    lang: str
    name: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Explanation:
    code: str
    title: str
    text: str  # the whole file, as `policyctl explain CODE` prints it
    wrong: tuple[Block, ...]
    right: tuple[Block, ...]


class UnknownCode(PolicyctlError, LookupError):
    """A code with no explanation: the nearest code that has one, if any, is suggested."""

    def __init__(self, code: str, guess: str | None) -> None:
        hint = f"; did you mean `{guess}`?" if guess else ""
        super().__init__(
            f"no explanation for `{code}`{hint} (`policyctl explain` lists every code)"
        )
        self.code = code
        self.guess = guess


def codes() -> list[str]:
    """Every code with an explanation, in order."""
    return sorted(p.stem for p in codes_dir().glob("*.md") if CODE.fullmatch(p.stem))


def explanation(code: str) -> Explanation:
    """The explanation of `code` (`e0333` is `E0333`); UnknownCode with a guess if none."""
    wanted = code.strip().upper()
    path = codes_dir() / f"{wanted}.md"
    if not CODE.fullmatch(wanted) or not path.is_file():
        raise UnknownCode(code, did_you_mean(wanted, codes()))
    return read(path)


def read(path: Path) -> Explanation:
    """Parse one catalogue file; ValueError naming the file if it is not in the shape."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    match = _TITLE.match(lines[0]) if lines else None
    if match is None or match.group(1) != path.stem:
        raise ValueError(f"{path.name}: the first line must be `# {path.stem}: title`")
    sections: dict[str, list[Block]] = {}
    section: list[Block] | None = None
    fence: tuple[str, str | None] | None = None
    body: list[str] = []
    for line in lines[1:]:
        if fence is not None:
            if line.startswith("```"):
                if section is not None:
                    section.append(Block(fence[0], fence[1], "\n".join(body) + "\n"))
                fence, body = None, []
            else:
                body.append(line)
        elif line.startswith("## "):
            section = sections.setdefault(line[3:].strip(), [])
        elif (opened := _FENCE.match(line)) is not None:
            fence = (opened.group(1), opened.group(2).strip() or None)
    for name in ("Wrong", "Right"):
        if not sections.get(name):
            raise ValueError(f"{path.name}: a `## {name}` section with an example is missing")
    return Explanation(
        path.stem,
        match.group(2).strip(),
        text,
        tuple(sections["Wrong"]),
        tuple(sections["Right"]),
    )
