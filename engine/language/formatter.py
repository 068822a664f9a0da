"""Policy text -> the one canonical layout (`policyctl fmt`). docs/fmt.md describes it.

The formatter prints the AST again, with the comments the parser collected put back where
they were: an own-line comment stays before the statement it precedes (or at the end of
its block), a trailing comment stays at the end of its line. A comment inside something
printed on one line (a `fallback` list, a comparison) moves to its own line before it. The
output parses to the same AST (spans aside), so it compiles to the same program; and
formatting it again changes nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, replace

from engine.language import ast
from engine.language.parser import parse_with_comments, written

WIDTH = 100  # a condition whose line would be longer is broken before each `and` / `or`
INDENT = "    "
_COMMENT_GAP = 2  # spaces between code and a trailing comment, at the least
_COLUMN_GAP = 2  # spaces before an aligned column (`weight`, a limit's amount)


@dataclass(frozen=True, slots=True)
class _Line:
    """One output line: code (with an optional trailing comment), a comment, or blank."""

    depth: int = 0
    code: str = ""
    comment: str | None = None
    # an aligned line: `code` is `cells[0] + " " + cells[1]`, and consecutive lines of the
    # same `align` kind and depth put `cells[1]` in one column; a line of that kind without
    # cells (`prefer x` with no weight, a limit keyed by `= path`) sits among them unaligned
    cells: tuple[str, str] | None = None
    align: str | None = None

    @property
    def blank(self) -> bool:
        return not self.code and self.comment is None

    @property
    def own_comment(self) -> bool:
        return not self.code and self.comment is not None


_BLANK = _Line()


def format_text(text: str, name: str = "<policy>") -> str:
    """The canonical layout of a policy text. Raises PolicyError if it does not parse."""
    policy, comments = parse_with_comments(text, name)
    return format_policy(policy, comments)


def format_policy(policy: ast.PolicyFile, comments: tuple[ast.Comment, ...]) -> str:
    """The canonical layout of a parsed policy and its comments."""
    printer = _Printer(policy.span.source.text, comments)
    lines: list[_Line] = []
    printer.region(lines, policy.statements, 0, len(printer.text), 0, top=True)
    return _render(lines)


# ---------------------------------------------------------------- expressions


def _flat(e: ast.Expr) -> str:
    """An expression on one line, with the parentheses its structure needs and no others."""
    if isinstance(e, ast.Literal):
        return e.text
    if isinstance(e, ast.Path):
        return e.dotted
    if isinstance(e, ast.ListLit):
        return "[" + ", ".join(_flat(item) for item in e.items) + "]"
    if isinstance(e, ast.Compare):
        return f"{_comparand(e.left)} {e.op} {_comparand(e.right)}"
    if isinstance(e, ast.Not):
        inner = _flat(e.operand)
        return f"not ({inner})" if isinstance(e.operand, ast.BoolOp) else f"not {inner}"
    return f" {e.op} ".join(_boolean_operand(o) for o in e.operands)


def _comparand(e: ast.Expr) -> str:
    """A side of a comparison: a condition there is parenthesised."""
    return f"({_flat(e)})" if isinstance(e, ast.BoolOp | ast.Not | ast.Compare) else _flat(e)


def _boolean_operand(operand: ast.Expr) -> str:
    """An `and` / `or` inside another is parenthesised: `a or (b and c)` (where `and` binds
    tighter anyway: the reader need not know it) and `a and (b and c)` (so that the output
    parses to the same tree)."""
    return f"({_flat(operand)})" if isinstance(operand, ast.BoolOp) else _flat(operand)


def _fits(depth: int, code: str) -> bool:
    return len(INDENT) * depth + len(code) <= WIDTH


# ---------------------------------------------------------------- statements


def _ref(ref: ast.ModelRef) -> str:
    provider = written(ref.provider.text)
    return provider if ref.model is None else f"{provider}/{written(ref.model.text)}"


def _refs(refs: tuple[ast.ModelRef, ...]) -> str:
    return ", ".join(_ref(r) for r in refs)


def _alert(alert: ast.Alert) -> str:
    signal = alert.signal.name.dotted
    if alert.signal.subject is not None:
        signal += f"({_ref(alert.signal.subject)})"
    code = f"alert {alert.name.text} when {signal} {alert.op} {alert.threshold.text}"
    if alert.window is not None:
        code += f" {alert.window_word} {alert.window.text}"
    if alert.hold is not None:
        code += f" for {alert.hold.text}"
    if alert.webhook is not None:
        code += f" to {alert.webhook.text}"
    return code


def _one_line(item: ast.RouteItem | ast.CatalogStmt | ast.Arm | ast.Alert) -> _Line:
    """A statement or block item that is always one line (all but `require`)."""
    if isinstance(item, ast.Alert):
        return _Line(code=_alert(item))
    if isinstance(item, ast.CatalogStmt):
        return _Line(code=f"catalog {item.path.text}")
    if isinstance(item, ast.StrategySetting):
        factors = ", ".join(f"{f.name.text}: {f.weight.text}" for f in item.factors)
        return _Line(code=f"strategy {item.name.text}" + (f"({factors})" if factors else ""))
    if isinstance(item, ast.ValueSetting):
        return _Line(code=f"{item.key.text} {item.value.text}")
    if isinstance(item, ast.FallbackSetting):
        return _Line(code=f"fallback {_refs(item.refs)}")
    if isinstance(item, ast.CooldownSetting):
        word = "failure" if item.failures.text == "1" else "failures"
        return _Line(code=f"cooldown after {item.failures.text} {word} for {item.duration.text}")
    if isinstance(item, ast.StoreErrorSetting):
        return _Line(code=f"on_store_error {item.mode.text}")
    if isinstance(item, ast.ExploreSetting):
        code = f"explore {item.share.text}"
        if item.budget is not None and item.window is not None:
            code += f" budget {item.budget.text} per {item.window.text}"
        return _Line(code=code)
    if isinstance(item, ast.WaitSetting):
        return _Line(code=f"wait up to {item.duration.text}")
    if isinstance(item, ast.ComplexitySetting):
        weights = ", ".join(f"{f.name.text}: {f.weight.text}" for f in item.weights)
        return _Line(code=f"complexity({weights})")
    if isinstance(item, ast.AffinitySetting):
        return _Line(code=f"affinity by {item.key.dotted} for {item.duration.text}")
    if isinstance(item, ast.Exclude):
        return _Line(code=f"exclude {_refs(item.refs)}")
    if isinstance(item, ast.Prefer):
        head = f"prefer {_ref(item.ref)}"
        if item.weight is None:
            return _Line(code=head, align="prefer")
        cells = (head, f"weight {item.weight.text}")
        return _Line(code=" ".join(cells), cells=cells, align="prefer")
    if isinstance(item, ast.Shadow):
        return _Line(code=f"shadow route {item.route.text}")
    if isinstance(item, ast.Arm):
        return _Line(code=f"{item.share.text}: route {item.route.text}")
    raise AssertionError(f"not a one-line item: {type(item).__name__}")  # pragma: no cover


def _limit_parts(limit: ast.Limit) -> tuple[str, str]:
    """`limit user "vip"` and `100 per 1m burst 10`: the head, and what its column holds."""
    head = f"{'shadow ' if limit.shadow else ''}limit {limit.scope.text}"
    if limit.key_expr is not None:
        head += f" = {limit.key_expr.dotted}"
    if limit.key is not None:
        head += f" {limit.key.text}"
    if limit.unit is not None:
        head += f" {limit.unit.text}"
    rest = limit.amount.text
    if limit.lease is not None:  # `concurrent 8 lease 10m`
        rest += f" lease {limit.lease.text}"
    if limit.window is not None:  # absent only for `concurrent`
        rest += f" per {limit.window.text}"
    if limit.burst is not None:
        rest += f" burst {limit.burst.text}"
    if limit.wait is not None:
        rest += f" wait up to {limit.wait.text}"
    return head, rest


def one_line(
    node: ast.Expr | ast.RouteItem | ast.Arm | ast.Limit | ast.PolicyRequire | ast.Deny | ast.Alert,
) -> str:
    """A node in the canonical layout on one line, without comments: what it says, with
    nothing of how it was written (spacing, line breaks, comments, redundant parentheses,
    quotes a name does not need). `policyctl diff` compares statements by it."""
    if isinstance(node, ast.Literal | ast.ListLit | ast.Path | ast.Compare | ast.BoolOp | ast.Not):
        return _flat(node)
    if isinstance(node, ast.Require):
        return f"require {_flat(node.condition)}"
    if isinstance(node, ast.DegradedSetting):
        return f"degraded when {_flat(node.condition)}"
    if isinstance(node, ast.PolicyRequire):
        when = "" if node.when is None else f" when {_flat(node.when)}"
        return f"require {_flat(node.condition)}{when}"
    if isinstance(node, ast.Deny):
        when = "" if node.when is None else f" when {_flat(node.when)}"
        return f"deny {node.reason.text}{when}"
    if isinstance(node, ast.Split):
        arms = " ".join(one_line(arm) for arm in node.arms)
        return (
            f"split by {node.key.dotted} {{ {arms} }}"
            if arms
            else f"split by {node.key.dotted} {{}}"
        )
    if isinstance(node, ast.Limit):
        return f"{_limit_parts(node)[0]} {limit_terms(node)}"
    return _one_line(node).code


def limit_terms(limit: ast.Limit) -> str:
    """A limit's terms after what it limits, on one line: `100 per 1m burst 10 when …`."""
    code = _limit_parts(limit)[1]
    if limit.when is not None:
        code += f" when {_flat(limit.when)}"
    if limit.until is not None:
        code += f" until {limit.until.text}"
    return code


class _Printer:
    """Prints statements into lines, taking each comment once from the pool it holds."""

    def __init__(self, text: str, comments: tuple[ast.Comment, ...]) -> None:
        self.text = text
        self.pool = list(comments)  # in source order, not yet placed
        self.starts = [c.span.start for c in self.pool]

    # comments ----------------------------------------------------------------

    def take(self, lo: int, hi: int) -> list[ast.Comment]:
        """The comments starting in [lo, hi), removed from the pool."""
        i, j = bisect_left(self.starts, lo), bisect_left(self.starts, hi)
        taken = self.pool[i:j]
        if taken:
            del self.pool[i:j], self.starts[i:j]
        return taken

    def any_in(self, lo: int, hi: int) -> bool:
        return bisect_left(self.starts, lo) < bisect_left(self.starts, hi)

    def own_line(self, c: ast.Comment) -> bool:
        """Nothing but whitespace before the comment on its line."""
        line_start = self.text.rfind("\n", 0, c.span.start) + 1
        return not self.text[line_start : c.span.start].strip()

    def gap(self, lo: int, hi: int) -> bool:
        """A blank line between two places of the source."""
        return self.text.count("\n", lo, hi) >= 2

    def brace_after(self, pos: int) -> int:
        """The `{` that opens a block, after its header (skipping `)` and comments)."""
        while self.text[pos] != "{":
            pos = self.text.index("\n", pos) if self.text[pos] == "#" else pos + 1
        return pos

    @staticmethod
    def attach(lines: list[_Line], c: ast.Comment, depth: int) -> None:
        """A trailing comment onto the last code line (a line has one: two are joined)."""
        if lines and lines[-1].code:
            last = lines[-1]
            text = c.text if last.comment is None else f"{last.comment} {c.text}"
            lines[-1] = replace(last, comment=text)
        else:
            lines.append(_Line(depth, comment=c.text))

    def hoisted(self, lo: int, hi: int, depth: int) -> list[_Line]:
        """Comments inside something printed on one line, as lines to put before it."""
        return [_Line(depth, comment=c.text) for c in self.take(lo, hi)]

    # sequences of statements -------------------------------------------------

    def region(
        self,
        out: list[_Line],
        items: tuple[ast.Statement, ...] | tuple[ast.RouteItem, ...] | tuple[ast.Arm, ...],
        lo: int,
        hi: int,
        depth: int,
        *,
        top: bool = False,
    ) -> None:
        """The statements of a file (`top`) or the items of a block, with the comments
        between them. Blank lines: one where the source had one or more, none at the start
        or the end, and always one between a block and the statement beside it (top)."""
        pos = lo
        first = True
        previous: ast.Statement | ast.RouteItem | ast.Arm | None = None
        for item in items:
            block = isinstance(item, ast.Route | ast.Defaults)
            blank_due = top and previous is not None and (block or _is_block(previous))
            pos, first, blank_due = self.between(out, pos, item.span.start, depth, first, blank_due)
            if blank_due or (not first and self.gap(pos, item.span.start)):
                out.append(_BLANK)
            self.statement(out, item, depth)
            pos, first, previous = item.span.end, False, item
        self.between(out, pos, hi, depth, first, False)

    def between(
        self, out: list[_Line], pos: int, hi: int, depth: int, first: bool, blank_due: bool
    ) -> tuple[int, bool, bool]:
        """The comments in [pos, hi): trailing ones onto the line before, own-line ones as
        lines. Returns where the source now is, and whether a line is still to come first
        and a blank line still due."""
        for c in self.take(pos, hi):
            if out and not self.own_line(c):  # after a statement, or a block's `{`
                self.attach(out, c, depth)
            else:
                if blank_due or (not first and self.gap(pos, c.span.start)):
                    out.append(_BLANK)
                out.append(_Line(depth, comment=c.text))
                first, blank_due = False, False
            pos = c.span.end
        return pos, first, blank_due

    def statement(
        self, out: list[_Line], item: ast.Statement | ast.RouteItem | ast.Arm, depth: int
    ) -> None:
        lines: list[_Line] = []
        if isinstance(item, ast.Route | ast.Defaults):
            self.block(lines, item, depth)
        elif isinstance(item, ast.Limit):
            self.limit(lines, item, depth)
        elif isinstance(item, ast.Require | ast.DegradedSetting):
            self.require(lines, item, depth)
        elif isinstance(item, ast.PolicyRequire | ast.Deny):
            self.policy_rule(lines, item, depth)
        elif isinstance(item, ast.Split):
            self.split(lines, item, depth)
        else:
            lines.append(replace(_one_line(item), depth=depth))
        # comments the statement's parts did not place (inside a one-line part) go before
        out.extend(self.hoisted(item.span.start, item.span.end, depth))
        out.extend(lines)

    def block(self, lines: list[_Line], item: ast.Route | ast.Defaults, depth: int) -> None:
        if isinstance(item, ast.Defaults):
            brace = self.brace_after(item.span.start + len("defaults"))
            lines.append(_Line(depth, "defaults {"))
            body: tuple[ast.RouteItem, ...] = item.settings
        else:
            self.route_header(lines, item, depth)
            brace = self.brace_after(
                item.name.span.end if item.when is None else item.when.span.end
            )
            body = item.items
        close = item.span.end - 1
        assert self.text[close] == "}", "a block's span ends at its `}`"
        if not body and not self.any_in(brace + 1, close):
            lines[-1] = replace(lines[-1], code=lines[-1].code + "}")
            return
        self.region(lines, body, brace + 1, close, depth + 1)
        lines.append(_Line(depth, "}"))

    def split(self, lines: list[_Line], item: ast.Split, depth: int) -> None:
        """`split by request.KEY {` and its arms, one a line."""
        brace = self.brace_after(item.key.span.end)
        lines.append(_Line(depth, f"split by {item.key.dotted} {{"))
        close = item.span.end - 1
        assert self.text[close] == "}", "a split's span ends at its `}`"
        if not item.arms and not self.any_in(brace + 1, close):
            lines[-1] = replace(lines[-1], code=lines[-1].code + "}")
            return
        self.region(lines, item.arms, brace + 1, close, depth + 1)
        lines.append(_Line(depth, "}"))

    def route_header(self, lines: list[_Line], route: ast.Route, depth: int) -> None:
        name = route.name.text
        if route.when is None:
            lines.append(_Line(depth, f"route {name} {{"))
            return  # comments before the `{` are hoisted above the route
        brace = self.brace_after(route.when.span.end)
        flat = f"route {name} when {_flat(route.when)} {{"
        if _fits(depth, flat) and not self.any_in(route.name.span.end, brace):
            lines.append(_Line(depth, flat))
            return
        lines.append(_Line(depth, f"route {name}"))
        lines.extend(self.condition(route.when, route.name.span.end, brace, depth + 1, "when "))
        lines.append(_Line(depth, "{"))

    def require(
        self, lines: list[_Line], item: ast.Require | ast.DegradedSetting, depth: int
    ) -> None:
        """`require …` and `degraded when …`: a keyword and a condition."""
        lead = "require " if isinstance(item, ast.Require) else "degraded when "
        self.keyword_condition(lines, lead, item.condition, item.span.start, item.span.end, depth)

    def policy_rule(
        self, lines: list[_Line], item: ast.PolicyRequire | ast.Deny, depth: int
    ) -> None:
        """`require … [when …]` and `deny "…" when …` outside any block: one line when it
        fits, else the head (a `require`'s condition broken as in a route) and the `when`
        one level in."""
        when = item.when
        if isinstance(item, ast.Deny):
            head, head_end = f"deny {item.reason.text}", item.reason.span.end
        else:
            head, head_end = f"require {_flat(item.condition)}", item.condition.span.end
        flat = head if when is None else f"{head} when {_flat(when)}"
        if _fits(depth, flat) and not self.any_in(item.span.start, item.span.end):
            lines.append(_Line(depth, flat))
            return
        if isinstance(item, ast.Deny):
            lines.extend(self.hoisted(item.span.start, head_end, depth))
            lines.append(_Line(depth, head))
        else:
            self.keyword_condition(
                lines, "require ", item.condition, item.span.start, head_end, depth
            )
        if when is not None:
            for c in self.take(head_end, when.span.start):  # a comment after the head
                if self.own_line(c):
                    lines.append(_Line(depth + 1, comment=c.text))
                else:
                    self.attach(lines, c, depth)
            lines.extend(self.condition(when, when.span.start, item.span.end, depth + 1, "when "))

    def keyword_condition(
        self, lines: list[_Line], lead: str, condition: ast.Expr, start: int, hi: int, depth: int
    ) -> None:
        """A keyword and a condition (`require …`, `degraded when …`) from `start` to `hi`."""
        # the comments that would come before the condition's first line go above the keyword
        lines.extend(self.hoisted(start, _first_leaf_end(condition), depth))
        lo = condition.span.start
        flat = f"{lead}{_flat(condition)}"
        if _fits(depth, flat) and not self.any_in(lo, hi):
            lines.append(_Line(depth, flat))
            return
        # `require` first (with the group its first operand opens, if it does), the lines
        # that continue it one level in
        broken = self.condition(condition, lo, hi, depth + 1, lead)
        last = next(i for i, line in enumerate(broken) if line.code)
        if broken[last].code.endswith("("):
            last = next(i for i in range(last + 1, len(broken)) if broken[i].code == ")"
                        and broken[i].depth == depth + 1)  # fmt: skip
        for i in range(last + 1):
            broken[i] = replace(broken[i], depth=broken[i].depth - 1)
        lines.extend(broken)

    def limit(self, lines: list[_Line], limit: ast.Limit, depth: int) -> None:
        head, rest = _limit_parts(limit)
        until = "" if limit.until is None else f"until {limit.until.text}"
        if limit.when is None:
            cells = (head, f"{rest} {until}".rstrip())
            lines.append(_aligned_limit(depth, cells, limit))
            return
        lo = (limit.burst or limit.window or limit.lease or limit.amount).span.end
        hi = limit.span.end if limit.until is None else limit.until.span.start
        cells = (head, f"{rest} when {_flat(limit.when)} {until}".rstrip())
        if _fits(depth, " ".join(cells)) and not self.any_in(lo, hi):
            lines.append(_aligned_limit(depth, cells, limit))
            return
        lines.append(_Line(depth, f"{head} {rest}"))
        lines.extend(self.condition(limit.when, lo, hi, depth + 1, "when "))
        if until:
            lines.append(_Line(depth + 1, until))

    # conditions broken over lines --------------------------------------------

    def condition(self, e: ast.Expr, lo: int, hi: int, depth: int, prefix: str) -> list[_Line]:
        """A condition over lines: one line per operand of its `and` / `or`, each after the
        first led by the operator; an operand that does not fit (or holds a comment) and is
        itself an `and` / `or` is broken the same way inside parentheses. The comments in
        [lo, hi) stay with the operand whose line they were on."""
        lines: list[_Line] = []
        if not isinstance(e, ast.BoolOp):
            lines.extend(self.hoisted(lo, e.span.end, depth))
            lines.append(_Line(depth, prefix + _flat(e)))
            self.after(lines, e.span.end, hi, depth)
            return lines
        previous_end = lo
        for i, operand in enumerate(e.operands):
            lead = prefix if i == 0 else f"{e.op} "
            for c in self.take(previous_end, operand.span.start):
                if i > 0 and not self.own_line(c):
                    self.attach(lines, c, depth)
                else:
                    lines.append(_Line(depth, comment=c.text))
            start, end = operand.span.start, operand.span.end
            # comments before the operand's first line, wherever it is broken, go above it
            lines.extend(self.hoisted(start, _first_leaf_end(operand), depth))
            code = lead + _boolean_operand(operand)
            if _fits(depth, code) and not self.any_in(start, end):
                lines.append(_Line(depth, code))
            elif isinstance(operand, ast.BoolOp):
                lines.append(_Line(depth, lead + "("))
                lines.extend(self.condition(operand, start, end, depth + 1, ""))
                lines.append(_Line(depth, ")"))
            else:
                lines.append(_Line(depth, code))
            previous_end = end
        self.after(lines, previous_end, hi, depth)
        return lines

    def after(self, lines: list[_Line], lo: int, hi: int, depth: int) -> None:
        """Comments after a condition's last operand, before what follows it."""
        for c in self.take(lo, hi):
            if self.own_line(c):
                lines.append(_Line(depth, comment=c.text))
            else:
                self.attach(lines, c, depth)


def _aligned_limit(depth: int, cells: tuple[str, str], limit: ast.Limit) -> _Line:
    """A one-line limit; one keyed by a path (`limit team = request.metadata.team …`) is
    long and unlike the others, so it keeps one space and leaves the column alone."""
    if limit.key_expr is not None:
        return _Line(depth, " ".join(cells), align="limit")
    return _Line(depth, " ".join(cells), cells=cells, align="limit")


def _first_leaf_end(e: ast.Expr) -> int:
    """Where the first operand that is not an `and` / `or` ends: a comment before it is put
    above the first line of `e`, however `e` is broken."""
    while isinstance(e, ast.BoolOp):
        e = e.operands[0]
    return e.span.end


def _is_block(item: ast.Statement | ast.RouteItem | ast.Arm) -> bool:
    return isinstance(item, ast.Route | ast.Defaults)


# ---------------------------------------------------------------- output


def _align_columns(lines: list[_Line]) -> list[_Line]:
    """Consecutive lines of one `align` kind at one depth put their second cell in one
    column, two spaces past the longest first cell; a line alone keeps one space."""
    out = list(lines)
    i = 0
    while i < len(out):
        line = out[i]
        j = i + 1
        if line.align is not None:
            while j < len(out) and out[j].align == line.align and out[j].depth == line.depth:
                j += 1
            run = [k for k in range(i, j) if out[k].cells is not None]
            if len(run) > 1:
                width = max(len(out[k].cells[0]) for k in run) + _COLUMN_GAP  # type: ignore[index]
                for k in run:
                    left, right = out[k].cells  # type: ignore[misc]
                    out[k] = replace(out[k], code=left.ljust(width) + right)
        i = j
    return out


def _render(lines: list[_Line]) -> str:
    lines = _align_columns(lines)
    texts: list[str] = []
    i = 0
    while i < len(lines):
        # a run of consecutive code lines with trailing comments: one comment column
        j = i
        while j < len(lines) and lines[j].code and lines[j].comment is not None:
            j += 1
        if j > i:
            width = max(len(INDENT * line.depth + line.code) for line in lines[i:j])
            for line in lines[i:j]:
                code = INDENT * line.depth + line.code
                texts.append(code.ljust(width + _COMMENT_GAP) + str(line.comment))
            i = j
            continue
        line = lines[i]
        if line.blank:
            texts.append("")
        elif line.own_comment:
            texts.append(INDENT * line.depth + str(line.comment))
        else:
            texts.append(INDENT * line.depth + line.code)
        i += 1
    return "".join(text.rstrip() + "\n" for text in texts)
