"""Golden files for `policyctl check`: every error and warning a user can cause, exactly.

Each case is `tests/golden/check/<case>.policy` with the exact rendered output beside it in
`<case>.expected` (like OPA's `testfiles`): the errors as `str(PolicyError)` (sorted, a blank
line between them, "N errors occurred" when there are several), or the warnings of a policy
that loads, each rendered and separated by a blank line. A clean case has an empty
`.expected`. Policies are loaded with the working directory set to the golden directory, so
file names render as `<case>.policy`.

A few inputs are too big to commit (a file over the size limit, 5,000-deep nesting); they are
generated here (`GENERATED`) into a temporary directory under the same name, and only their
`.expected` lives in the golden directory.

To regenerate the expected files after an intended change of wording, run

    UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

and read every changed `.expected` before committing it: the caret must sit under the
offending text, the message must be lowercase with user input in backticks, and the help
must be right. With `CI` set, `UPDATE_GOLDEN=1` fails every case instead (tests/_golden.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from _golden import REFUSED_IN_CI, update_requested

from engine.diagnostics import PolicyError
from engine.language.loader import compile_sources, load_policy

GOLDEN = Path(__file__).parent / "golden" / "check"


def _too_large() -> str:
    line = "# padding: a comment line that only makes the file bigger than the limit\n"
    return 'catalog "models.yaml"\n' + line * ((2 << 20) // len(line) + 1)


def _deep_not() -> str:
    return "route deep when " + "not " * 5000 + "request.stream {\n    strategy cost\n}\n"


def _deep_parens() -> str:
    return (
        "route deep when "
        + "(" * 5000
        + "request.stream"
        + ")" * 5000
        + " {\n    strategy cost\n}\n"
    )


def _deep_list() -> str:
    return "route deep when request.region in " + "[" * 5000 + "]" * 5000 + " {\n}\n"


def _crlf() -> str:
    return 'route eu_only when request.regoin == "eu" {\r\n    strategy cost\r\n}\r\n'


def _bom() -> str:
    """A UTF-8 byte order mark, as Windows editors write one: no part of the text, so the
    columns of line 1 are what the editor shows."""
    return '\ufeffroute eu_only when request.regoin == "eu" {\n    strategy cost\n}\n'


def _control_characters() -> str:
    """An escape sequence, a bell and a NUL in a string: the excerpt shows their pictures
    (`␛`, `␇`, `␀`), so the sequence does not act on the terminal or the CI log."""
    return (
        'route clear when request.metadata.x == "\x1b[2J\x07\x00" and request.regoin == "eu" {}\n'
    )


def _text_direction() -> str:
    """ "Trojan Source" (CVE-2021-42574): direction controls make the string look closed and
    the rest of line 1 look like a comment; a right-to-left mark in a comment of a route that
    is otherwise fine. Each is E0016, shown as `�` in the source line."""
    return (
        'route admins when request.metadata.role == "user\u202e \u2066# admins only'
        '\u2069 \u2066" {\n'
        "    strategy cost\n"
        "}\n"
        "route rest {\n"
        "    strategy cost  # \u200fcheapest\n"
        "}\n"
    )


def _text_direction_many() -> str:
    """25 direction controls: the first 20 are reported, the 20th says how many more."""
    return "# " + "\u2067x" * 25 + "\nroute rest {\n    strategy cost\n}\n"


GENERATED: dict[str, Callable[[], str]] = {
    "e0001_too_large": _too_large,
    "e0002_not_nesting": _deep_not,
    "e0002_paren_nesting": _deep_parens,  # checks clean: parentheses only group
    "e0002_list_nesting": _deep_list,
    "e0324_crlf_line_endings": _crlf,  # generated so that git cannot change the line endings
    "e0324_byte_order_mark": _bom,  # generated so that no editor drops the mark
    "e0324_control_characters": _control_characters,  # generated: no raw escapes committed
    "e0016_text_direction": _text_direction,  # generated: no raw direction controls committed
    "e0016_text_direction_many": _text_direction_many,
}

CASES = sorted([p.stem for p in GOLDEN.glob("*.policy")] + list(GENERATED))


def render(path: Path) -> str:
    """What `policyctl check` shows for one file: its errors, else its warnings.

    The path is absolute and the working directory is its folder: every diagnostic must
    still name the file as `<case>.policy`, as the user would type it.
    """
    try:
        loaded = load_policy(path)
    except PolicyError as err:
        return str(err) + "\n"
    if not loaded.warnings:
        return ""
    return "\n\n".join(d.render() for d in loaded.warnings) + "\n"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case in GENERATED:
        for f in GOLDEN.glob("*.yaml"):  # catalogs the generated case may name
            (tmp_path / f.name).write_bytes(f.read_bytes())
        (tmp_path / f"{case}.policy").write_text(GENERATED[case](), encoding="utf-8", newline="")
        monkeypatch.chdir(tmp_path)
        got = render(tmp_path / f"{case}.policy")
    else:
        monkeypatch.chdir(GOLDEN)
        got = render(GOLDEN / f"{case}.policy")
    expected_path = GOLDEN / f"{case}.expected"
    if update_requested():
        expected_path.write_text(got, encoding="utf-8")
        return
    assert expected_path.exists(), f"missing {expected_path.name}: run with UPDATE_GOLDEN=1"
    assert got == expected_path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("env", "update"),
    [
        ({}, False),
        ({"CI": "true"}, False),
        ({"UPDATE_GOLDEN": "0", "CI": "true"}, False),
        ({"UPDATE_GOLDEN": "1"}, True),
        ({"UPDATE_GOLDEN": "1", "CI": ""}, True),
    ],
)
def test_update_golden_outside_ci(env: dict[str, str], update: bool) -> None:
    assert update_requested(env) is update


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_update_golden_is_refused_in_ci(ci: str) -> None:
    with pytest.raises(pytest.fail.Exception) as refused:
        update_requested({"UPDATE_GOLDEN": "1", "CI": ci})
    assert str(refused.value) == REFUSED_IN_CI


def test_every_expected_file_has_a_case() -> None:
    stale = sorted(p.stem for p in GOLDEN.glob("*.expected") if p.stem not in CASES)
    assert stale == []


def test_generated_cases_are_not_committed() -> None:
    assert [name for name in GENERATED if (GOLDEN / f"{name}.policy").exists()] == []


def test_the_spec_example_checks_clean() -> None:
    """SPEC §2's example, copied verbatim, with the design's catalog beside it (SPEC §2 names
    its models)."""
    assert (GOLDEN / "spec_example.expected").read_text(encoding="utf-8") == ""
    packaged = Path(__file__).parents[1] / "examples" / "policies" / "models.yaml"
    assert (GOLDEN / "models.yaml").read_bytes() == packaged.read_bytes()


def test_crlf_text_renders_without_carriage_returns() -> None:
    """Text given directly (`PolicyEngine.from_text`) is not newline-translated like a file."""
    expected = (GOLDEN / "e0324_crlf_line_endings.expected").read_text(encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        compile_sources([("e0324_crlf_line_endings.policy", _crlf())])
    assert str(info.value) + "\n" == expected
