"""What a plain `policyctl eval` loads and does per request, counted (never timed): a
second run on an unchanged policy builds no parser, validates no catalog and imports no
storage, schema, validation-model or network module it does not use (neither pydantic nor
Lark); a body the fast path cannot take still gets pydantic's messages; each decision is
encoded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.routing import decision as decision_module

REPO = Path(__file__).resolve().parent.parent

# modules a plain `policyctl eval` on the memory state never needs
NOT_NEEDED = (
    "duckdb",
    "yaml",
    "engine.catalog.load",
    "engine.routing.decision_schema",
    "urllib.request",
    "http.client",
    "subprocess",
    "redis",
    "starlette",
    "uvicorn",
    "engine.service",
    "engine.simulate",
    "engine.replay",
    "pydantic",
    "engine.routing.request_model",
    "lark",
    "engine.language.parser",
)

PROBE = """\
import contextlib, json, os, sys
from engine.cli import main
with contextlib.redirect_stdout(open(os.devnull, "w")):
    code = main(["eval", sys.argv[1]])
loaded = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
from engine.language import parser  # (after: what the run loaded is read first)
print(json.dumps({
    "code": code,
    "loaded": loaded,
    "parser built": parser._lark.cache_info().misses,
}))
"""


def _probe(tmp_path: Path, probe: str, *args: str) -> dict[str, object]:
    """`probe` run by a fresh interpreter in `tmp_path` (its own policyctl cache): the JSON
    it prints."""
    done = subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "POLICYCTL_CACHE_DIR": str(tmp_path / "cache"),
             "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _eval_in_subprocess(tmp_path: Path, request: Path) -> dict[str, object]:
    return _probe(tmp_path, PROBE, str(request), json.dumps(NOT_NEEDED))


def test_a_second_eval_loads_only_what_it_uses(tmp_path: Path) -> None:
    request = tmp_path / "r.jsonl"
    request.write_text(json.dumps({"id": "a", "prompt": "hello", "user": "u"}) + "\n")
    first = _eval_in_subprocess(tmp_path, request)
    # the first run parses and validates: the cache is empty
    assert first["code"] == 0 and first["parser built"] == 1
    assert "engine.catalog.load" in first["loaded"]  # type: ignore[operator]
    assert "lark" in first["loaded"]  # type: ignore[operator]
    second = _eval_in_subprocess(tmp_path, request)
    assert second == {"code": 0, "loaded": [], "parser built": 0}


BAD_BODY_PROBE = """\
import contextlib, io, json, os, sys
from engine.cli import main
err = io.StringIO()
with contextlib.redirect_stdout(open(os.devnull, "w")), contextlib.redirect_stderr(err):
    code = main(["eval", sys.argv[1]])
print(json.dumps({"code": code, "stderr": err.getvalue(), "pydantic": "pydantic" in sys.modules}))
"""


def _bad_body_in_subprocess(tmp_path: Path, lines: list[object]) -> dict[str, object]:
    request = tmp_path / "r.jsonl"
    request.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return _probe(tmp_path, BAD_BODY_PROBE, request.name)


def test_pydantic_is_imported_for_a_body_the_fast_path_cannot_take(tmp_path: Path) -> None:
    """Plain requests never load pydantic (the catalog cached by a first run); a bad body
    loads it and gets its messages."""
    good = {"id": "a", "prompt": "hello", "user": "u"}
    _bad_body_in_subprocess(tmp_path, [good])
    assert _bad_body_in_subprocess(tmp_path, [good, good]) == {
        "code": 0,
        "stderr": "",
        "pydantic": False,
    }
    bad = _bad_body_in_subprocess(tmp_path, [good, {"id": 7, "promt": "x"}])
    assert bad["code"] == 2 and bad["pydantic"] is True
    assert bad["stderr"] == (
        "r.jsonl:2: field `id`: input should be a valid string\n"
        "r.jsonl:2: unknown field `promt` (did you mean `prompt`?)\n"
    )


def _count_encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    encode = decision_module._encode

    def counted(value: object) -> bytes:
        calls[0] += 1
        return encode(value)

    monkeypatch.setattr(decision_module, "_encode", counted)
    return calls


@pytest.mark.parametrize(("flags", "per_decision"), [((), 1), (("--explain",), 2)])
def test_each_decision_is_encoded_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    flags: tuple[str, ...],
    per_decision: int,
) -> None:
    """One msgspec encode per decision (with `--explain`, the trace first: it is looked at
    for integral floats, then embedded as it is), none for the spacing, one write."""
    lines = [{"id": f"r{i}", "prompt": "hello", "user": f"u{i}"} for i in range(5)]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(r) + "\n" for r in lines))
    calls = _count_encodes(monkeypatch)
    assert main(["eval", *flags, str(batch)]) == 0
    out = capsysbinary.readouterr().out.splitlines()
    assert [json.loads(line)["request_id"] for line in out] == [r["id"] for r in lines]
    assert calls[0] == per_decision * len(lines)
