"""Source text, spans and diagnostics: errors a person can act on.

Rendering follows one shape everywhere::

    policies/default.policy:12:26: error[E0333]: unit mismatch: `request.max_cost` is money,
    `2s` is a duration  (one line in the output)
       |
    12 | route fast when request.max_cost <= 2s {
       |                                     ^^
       = help: compare money with money, e.g. `$0.01`

Standard library only.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.errors import PolicyctlError


@dataclass(frozen=True, slots=True)
class Source:
    """A named text with a line index; offsets are 0-based, lines and columns 1-based."""

    name: str
    text: str
    _line_starts: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        starts.extend(i + 1 for i, ch in enumerate(self.text) if ch == "\n")
        object.__setattr__(self, "_line_starts", tuple(starts))

    def line_col(self, offset: int) -> tuple[int, int]:
        offset = max(0, min(offset, len(self.text)))
        line = bisect.bisect_right(self._line_starts, offset) - 1
        return line + 1, offset - self._line_starts[line] + 1

    def offset(self, line: int, col: int) -> int:
        line = max(1, min(line, len(self._line_starts)))
        return min(self._line_starts[line - 1] + col - 1, len(self.text))

    def line_text(self, line: int) -> str:
        if line < 1 or line > len(self._line_starts):
            return ""
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        line_text = self.text[start:] if end < 0 else self.text[start:end]
        return line_text.rstrip("\r")

    def span(self, start: int, end: int) -> Span:
        return Span(self, start, max(start, end))

    def end_span(self) -> Span:
        """A span at the end of the text (for "unexpected end of file")."""
        end = len(self.text.rstrip("\r\n"))  # CRLF text (from_text, an editor's buffer) too
        return Span(self, end, end)


@dataclass(frozen=True, slots=True)
class Span:
    source: Source = field(repr=False, compare=False)
    start: int
    end: int

    @property
    def line(self) -> int:
        return self.source.line_col(self.start)[0]

    @property
    def col(self) -> int:
        return self.source.line_col(self.start)[1]

    def text(self) -> str:
        return self.source.text[self.start : self.end]

    def location(self) -> str:
        line, col = self.source.line_col(self.start)
        return f"{self.source.name}:{line}:{col}"


@dataclass(frozen=True, slots=True)
class Note:
    """A second place a diagnostic points at (`this `{` is not closed`), shown under it."""

    span: Span
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One error (or warning) with its place, a message, an optional hint and notes."""

    code: str
    message: str
    span: Span | None
    help: str | None = None
    severity: str = "error"
    file: str | None = None  # for diagnostics with no span (a missing file)
    notes: tuple[Note, ...] = ()
    counterexample: str | None = None  # a request (JSON) that shows a warning, if one does

    def sort_key(self) -> tuple[str, int, str]:
        if self.span is None:  # no place: keep the order they were found in (sort is stable)
            return (self.file or "", -1, "")
        return (self.span.source.name, self.span.start, self.message)

    def headline(self) -> str:
        prefix = f"{self.severity}[{self.code}]: " if self.code else f"{self.severity}: "
        if self.span is None:
            where = f"{self.file}: " if self.file else ""
            return f"{where}{prefix}{self.message}"
        return f"{self.span.location()}: {prefix}{self.message}"

    def render(self) -> str:
        lines = [self.headline()]
        pad = ""
        if self.span is not None:
            digits = max(len(str(s.line)) for s in (self.span, *(n.span for n in self.notes)))
            pad = " " * digits
            lines.append(f"{pad} |")
            lines.extend(_excerpt(self.span, "^", digits))
            for note in self.notes:
                lines.append(f"{pad} |")
                lines.extend(_excerpt(note.span, "-", digits, note.message))
        if self.help:
            lines.append(f"{pad} = help: {self.help}" if pad else f"  = help: {self.help}")
        return "\n".join(lines)


def _excerpt(span: Span, mark: str, digits: int, label: str = "") -> list[str]:
    """A span's line and the marks under it (`^` for the place, `-` for a note's)."""
    source = span.source
    line, col = source.line_col(span.start)
    text = source.line_text(line)
    end_line, end_col = source.line_col(span.end)
    width = (end_col - col) if end_line == line else len(text) - col + 1
    width = max(1, width)
    shown = text.expandtabs(1).translate(_CONTROL_PICTURES)
    if len(shown) > 200:  # keep huge one-line files readable
        lo = max(0, col - 100)
        shown = shown[lo : lo + 200]
        col -= lo
    # the marks go under the characters as a terminal shows them: a wide character (CJK,
    # most emoji) takes two columns, a combining mark none
    lead = _display_width(shown[: col - 1])
    under = max(1, _display_width(shown[col - 1 : col - 1 + width]))
    marks = f"{' ' * lead}{mark * min(under, 200)}" + (f" {label}" if label else "")
    return [f"{line:>{digits}} | {shown}", f"{' ' * digits} | {marks}"]


# The characters that change the direction text is shown in (embeddings, overrides,
# isolates and the implicit marks): in a policy they make the text a reviewer reads differ
# from the text the parser reads ("Trojan Source", CVE-2021-42574), so a policy holding
# one is refused (E0016) and a source line shows each as `�`.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)

# a control character in a source line is shown as its picture (`␛`, `␀`), one column
# wide: written raw, an escape sequence in a policy would act on the terminal or CI log
# (and a direction control would reorder the line shown)
_CONTROL_PICTURES = (
    {**{c: 0x2400 + c for c in range(0x20)}, 0x7F: 0x2421}
    | {c: 0xFFFD for c in range(0x80, 0xA0)}
    | {ord(c): 0xFFFD for c in BIDI_CONTROLS}
)


def _display_width(text: str) -> int:
    """The columns a terminal gives `text`: two for a wide or fullwidth character, none for
    a combining mark or a format character (a zero-width joiner), one for any other."""
    if text.isascii():
        return len(text)
    width = 0
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def not_utf8(name: str, err: UnicodeDecodeError, code: str = "E0005") -> Diagnostic:
    """E0005 (or a test file's E0900) at the line and column of the first byte that is not
    UTF-8, shown as `�`."""
    data: bytes = err.object  # type: ignore[assignment]
    before = data[: err.start].decode("utf-8")  # valid: the first error is at err.start
    text = before + data[err.start :].decode("utf-8", "replace")
    if text.startswith("\ufeff"):  # a byte order mark is no part of the text (`_read`)
        before, text = before[1:], text[1:]
    source = Source(name, text)
    return Diagnostic(
        code,
        f"not UTF-8 text (byte {err.start})",
        source.span(len(before), len(before) + 1),
        'save the file as UTF-8 (an editor\'s "Save with encoding")',
    )


def render_all(diagnostics: Iterable[Diagnostic]) -> str:
    items = sorted(diagnostics, key=Diagnostic.sort_key)
    errors = sum(1 for d in items if d.severity == "error")
    body = "\n\n".join(d.render() for d in items)
    if errors > 1:
        body += f"\n\n{errors} errors occurred"
    return body


class PolicyError(PolicyctlError, located=True):
    """A policy set (or its catalog) that cannot be used; carries every diagnostic found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(
            sorted(diagnostics, key=Diagnostic.sort_key)
        )
        super().__init__(render_all(self.diagnostics))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions (optimal string alignment)."""
    if a == b:
        return 0
    la, lb = len(a), len(b)
    prev2: list[int] = []
    prev = list(range(lb + 1))
    for i in range(1, la + 1):
        cur = [i] + [0] * lb
        for j in range(1, lb + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[lb]


GUESS_MAX_CHARS = 64  # names longer than this get no guess: edit distance is quadratic


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate within a third of the word's length (at least 2 edits), if any.

    Bounded: a word or candidate over `GUESS_MAX_CHARS` is not compared, nor a candidate
    whose length alone puts it out of reach (the distance is at least the difference)."""
    if len(word) > GUESS_MAX_CHARS:
        return None
    best: str | None = None
    best_d = max(2, len(word) // 3) + 1
    for cand in sorted(set(candidates)):
        if len(cand) > GUESS_MAX_CHARS or abs(len(cand) - len(word)) >= best_d:
            continue
        d = edit_distance(word.lower(), cand.lower())
        if d < best_d:
            best, best_d = cand, d
    return best
