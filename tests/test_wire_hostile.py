"""Hostile wire bodies and inputs, through the real `policyctl eval` (a subprocess) and the
real HTTP service: each is refused with the field it is about (exit 2, a 422), never a
traceback, and the other lines of a JSONL file are still decided."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def eval_cli(
    path: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "--dry-run", *args, str(path)],
        capture_output=True, input=stdin, env=env, timeout=120, check=False, cwd=path.parent,
    )  # fmt: skip
    out = subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_malformed_routing_fields_are_refused_by_line_and_field(tmp_path: Path) -> None:
    """A content part whose `type` is a list or an object (it crashed the format detection),
    and a Gemini output budget past a float (it crashed the conversion) or past the range
    every other format has, are errors naming the field; the good lines are decided."""
    gemini = {"contents": [{"parts": [{"text": "hi"}]}]}
    bodies = [
        CHAT,
        {**CHAT, "messages": [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}]},
        {**CHAT, "messages": [{"role": "user", "content": [{"type": {}, "text": "hi"}]}]},
        {**gemini, "generationConfig": {"maxOutputTokens": 10**400}},
        {**gemini, "generationConfig": {"maxOutputTokens": 10**20}},
        {**gemini, "generation_config": {"max_output_tokens": 0}},
        {**gemini, "generationConfig": {"maxOutputTokens": 512}},
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(body) for body in bodies) + "\n")
    out = eval_cli(path, "--model", "gemini-2.5-flash")
    assert out.returncode == 2, out.stderr
    found = lines(out.stdout)
    assert [d.get("line") for d in found] == [None, None, None, 4, 5, 6, None]
    assert all(d["allowed"] for d in (found[0], found[1], found[2], found[6]))
    assert found[1]["input_format"] == "openai-chat"  # an unknown part type is ignored
    budget = "expected a whole number from 1 to 1,000,000,000,000,000"
    assert found[3]["error"] == f"field `generationConfig.maxOutputTokens`: {budget}"
    assert found[4]["error"] == f"field `generationConfig.maxOutputTokens`: {budget}"
    assert found[5]["error"] == f"field `generationConfig.max_output_tokens`: {budget}"
    assert f"requests.jsonl:4: field `generationConfig.maxOutputTokens`: {budget}" in out.stderr


def test_http_service_refuses_them_with_a_422(tmp_path: Path) -> None:
    from test_service import serving

    with serving(tmp_path) as server, server.client() as client:
        typed = {**CHAT, "messages": [{"role": "user", "content": [{"type": ["x"]}]}]}
        answer = client.post("/v1/eval?dry_run=true", json=typed)
        assert answer.status_code == 200, answer.text
        huge = '{"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {%s}}'
        answer = client.post(
            "/v1/eval?dry_run=true&model=gemini-2.5-flash",
            content=huge % f'"maxOutputTokens": 1{"0" * 400}',
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["field"] == "generationConfig.maxOutputTokens"


def test_a_utf8_byte_order_mark_is_read_as_the_service_reads_it(tmp_path: Path) -> None:
    """Windows editors start a file with a BOM; the service takes such a body, so eval does,
    from a file, JSONL and stdin. A byte that is not UTF-8 is still named by its offset in
    the file (the BOM counted)."""
    bom = b"\xef\xbb\xbf"
    one = tmp_path / "one.json"
    one.write_bytes(bom + json.dumps(CHAT).encode())
    out = eval_cli(one)
    assert out.returncode == 0, out.stderr
    assert lines(out.stdout)[0]["input_format"] == "openai-chat"
    many = tmp_path / "many.jsonl"
    many.write_bytes(bom + b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n')
    out = eval_cli(many)
    assert out.returncode == 0, out.stderr
    assert [d["request_id"] for d in lines(out.stdout)] == ["a", "b"]
    out = eval_cli(Path("-"), stdin=bom + json.dumps(CHAT).encode())
    assert out.returncode == 0, out.stderr
    out = eval_cli(Path("-"), stdin=bom + b'{"id": "a", "prompt": "\xff"}')
    assert out.returncode == 2
    assert "is not UTF-8 text (byte 26)" in out.stderr


def test_an_empty_model_or_request_id_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT))
    for flag, what in (("--model", "a model name"), ("--request-id", "an id")):
        for empty in ("", "  "):
            out = eval_cli(path, flag, empty)
            assert out.returncode == 2, out.stdout
            assert out.stdout == ""
            assert f"policyctl: error: {flag} is empty: give {what}" in out.stderr


POLICY = """\
route streamed when request.model == "gpt-4o" and request.stream {
    strategy cost
}
route rest {
    strategy cost
}
"""


def test_model_and_stream_options_fill_a_native_request(tmp_path: Path) -> None:
    """`--model` and `--stream` were dropped without a word for a native body: they fill
    what it leaves out (as `--request-id` fills its id); a body that sets them keeps its own."""
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.policy").write_text(POLICY)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"prompt": "hi"}))
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"prompt": "hi", "model": "gpt-5", "stream": False}))
    routes = []
    for path, args in ((bare, ()), (bare, ("--model", "gpt-4o", "--stream")),
                       (own, ("--model", "gpt-4o", "--stream"))):  # fmt: skip
        out = eval_cli(path, *args)
        assert out.returncode == 0, out.stderr
        routes.append(lines(out.stdout)[0]["route"])
    assert routes == ["rest", "streamed", "rest"]


def test_jsonl_on_stdin_is_read_line_by_line(tmp_path: Path) -> None:
    """`cat requests.jsonl | policyctl eval -` (the documented batch) was refused whole past
    1 MiB ('request is larger than 1 MiB': the limit is per request), and a broken first
    line made the input one broken document: no other line was decided."""
    prompt = "word " * 800
    batch = "".join(json.dumps({"id": f"r{i}", "prompt": prompt}) + "\n" for i in range(300))
    assert len(batch) > 1 << 20
    out = eval_cli(Path("-"), stdin=batch.encode())
    assert out.returncode == 0, out.stderr
    assert [d["request_id"] for d in lines(out.stdout)] == [f"r{i}" for i in range(300)]
    broken = '{"id": "a", "prompt": "x"\n{"id": "b", "prompt": "y"}\n\n{"id": "c", "prompt": "z"}\n'
    out = eval_cli(Path("-"), stdin=broken.encode())
    assert out.returncode == 2
    found = lines(out.stdout)
    assert [d.get("request_id", d.get("line")) for d in found] == [1, "b", "c"]
    assert "<stdin>:1:26: error[E0600]: invalid JSON: expecting ',' delimiter" in out.stderr
    # one pretty-printed document with a mistake is still one error, at its place
    pretty = '{\n  "id": "a",\n  "prompt": "x"\n  "user": "u"\n}\n'
    out = eval_cli(Path("-"), stdin=pretty.encode())
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.startswith("<stdin>:4:3: error[E0600]: invalid JSON: expecting ','")
    single = tmp_path / "big.json"
    single.write_text(json.dumps({"id": "a", "prompt": "x" * (1 << 20)}, indent=2))
    out = eval_cli(single)
    assert (out.returncode, out.stdout) == (2, "")
    assert "big.json: request is larger than 1 MiB" in out.stderr


def test_one_request_id_is_not_given_to_every_line_of_a_batch(tmp_path: Path) -> None:
    """`--request-id X` on JSONL gave every line the id X (one id, many decisions in the
    log): a usage error before anything is decided, as /v1/eval/batch does not read one."""
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps({**CHAT, "user": "bob"}) + "\n")
    out = eval_cli(path, "--request-id", "X")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.startswith(f"policyctl: error: --request-id names one request, and {path}")
    out = eval_cli(path)
    assert out.returncode == 0, out.stderr
    ids = [d["request_id"] for d in lines(out.stdout)]
    assert len(set(ids)) == 2 and all(i.startswith("sha256:") for i in ids)


def test_explain_is_kept_for_a_batch_in_a_table(tmp_path: Path) -> None:
    """`--explain --format table` on JSONL printed the one-row-per-decision table: every
    trace was dropped. Each decision is shown whole instead, a blank line between two."""
    path = tmp_path / "two.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps({**CHAT, "user": "bob"}) + "\n")
    out = eval_cli(path, "--explain", "--format", "table")
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.rstrip("\n").split("\n\n")
    assert len(blocks) == 2
    for block in blocks:
        assert block.startswith("request         sha256:")
        assert "\nderived         model = gpt-4o ← model\n" in block
        assert "\ntrace           route default: matched\n" in block
    assert "derived         user = bob ← user" in blocks[1]
    plain = eval_cli(path, "--format", "table")
    assert plain.stdout.startswith("REQUEST ") and len(plain.stdout.splitlines()) == 3
