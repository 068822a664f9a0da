"""`policyctl lsp`, end to end: a real server subprocess (`python -m engine lsp`) driven
over stdio by pytest-lsp's client; policies and their catalog are real files in a
temporary directory. Also the command without pygls, through the real CLI.

One server serves the module; each test opens its own document (in a directory of its own
where it matters, since a document is checked with the other policies of its directory).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types as lsp
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig, LanguageClient

from engine.catalog.load import load_catalog
from engine.catalog.model import CAPABILITIES, Catalog
from engine.diagnostics import PolicyError
from engine.language import ast
from engine.language.checker import CLOSED_VALUES
from engine.language.loader import compile_sources
from engine.language.parser import parse
from engine.language.parser import unquote as parser_unquote
from engine.language.schema import PROMPT_FEATURES, REQUEST_FIELDS
from engine.lsp import knowledge
from engine.wire.features import COMPLEXITY_TERMS
from engine.wire.plugins import GROUP, Registry, using

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # the longest a test waits for the server's diagnostics
DESIGN_CATALOG = ROOT / "examples" / "policies" / "models.yaml"

# the async tests share the module's server, so its event loop
on_server = pytest.mark.asyncio(loop_scope="module")


def _env() -> dict[str, str]:
    """The server runs this checkout's code, with no operator state."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


@pytest_lsp.fixture(
    scope="module",
    config=ClientServerConfig(
        server_command=[sys.executable, "-m", "engine", "lsp", "--stdio"], server_env=_env()
    ),
)
async def client(lsp_client: LanguageClient):  # type: ignore[no-untyped-def]
    await lsp_client.initialize_session(
        lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), process_id=os.getpid())
    )
    yield
    await lsp_client.shutdown_session()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lsp")


def _folder(workdir: Path, name: str, files: dict[str, str]) -> Path:
    """A policy directory with the design's catalog beside its files."""
    folder = workdir / name
    folder.mkdir()
    shutil.copy(DESIGN_CATALOG, folder / "models.yaml")
    for file, text in files.items():
        (folder / file).write_text(textwrap.dedent(text), encoding="utf-8")
    return folder


async def _open(client: LanguageClient, path: Path, text: str | None = None) -> str:
    """Open `path` (with `text` as its unsaved buffer, else its content); its URI."""
    uri = from_fs_path(str(path))
    assert uri is not None
    shown = text if text is not None else path.read_text(encoding="utf-8")
    client.text_document_did_open(
        lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri=uri, language_id="policy", version=1, text=shown)
        )
    )
    await _diagnostics_for(client, uri)
    return uri


async def _diagnostics_for(client: LanguageClient, uri: str) -> None:
    """Wait (at most `WAIT_S`) until diagnostics for `uri` arrive; a sibling's may come
    first."""
    async with asyncio.timeout(WAIT_S):
        while uri not in client.diagnostics:
            await client.wait_for_notification(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)


async def _change(client: LanguageClient, uri: str, text: str, version: int) -> None:
    client.diagnostics.pop(uri, None)
    client.text_document_did_change(
        lsp.DidChangeTextDocumentParams(
            text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )
    await _diagnostics_for(client, uri)


def _at(text: str, needle: str, after: int = 0) -> lsp.Position:
    """The position `after` characters into the first occurrence of `needle`, counted in
    code points (UTF-16 code units when the line has no character beyond U+FFFF)."""
    offset = text.index(needle) + after
    line = text.count("\n", 0, offset)
    return lsp.Position(line=line, character=offset - (text.rfind("\n", 0, offset) + 1))


BROKEN = """\
catalog "models.yaml"

route cheap when request.max_cost <= 2s {
    prefer openai/gpt-3.5-turbo
}
"""
FIXED = BROKEN.replace("2s", "$0.01")


@on_server
async def test_diagnostics_on_open_then_cleared_by_a_change(
    client: LanguageClient, workdir: Path
) -> None:
    folder = _folder(workdir, "units", {"a.policy": BROKEN})
    uri = await _open(client, folder / "a.policy")
    (found,) = client.diagnostics[uri]
    assert found.code == "E0333"
    assert found.severity == lsp.DiagnosticSeverity.Error
    assert found.source == "policyctl"
    assert found.message.startswith("unit mismatch: `request.max_cost` is money")
    assert "help:" in found.message
    start = _at(BROKEN, "2s")
    assert found.range == lsp.Range(
        start=start, end=lsp.Position(line=start.line, character=start.character + 2)
    )

    await _change(client, uri, FIXED, 2)
    assert list(client.diagnostics[uri]) == []


@on_server
async def test_a_text_direction_control_is_an_error_at_the_character(
    client: LanguageClient, workdir: Path
) -> None:
    """E0016, as `check` says it: an unsaved buffer whose string holds a right-to-left
    override and whose comment a pop isolate, one diagnostic each, at the character."""
    text = FIXED.replace("<= $0.01", '<= $0.01 and request.user != "a\u202eb"').replace(
        "{\n", "{  # \u2069x\n", 1
    )
    folder = _folder(workdir, "bidi", {"b.policy": FIXED})
    uri = await _open(client, folder / "b.policy", text)
    found = sorted(
        client.diagnostics[uri], key=lambda d: (d.range.start.line, d.range.start.character)
    )
    assert [d.code for d in found] == ["E0016", "E0016"]
    assert found[0].message.startswith(
        "text direction control character `\\u202e` (RIGHT-TO-LEFT OVERRIDE)"
    )
    assert "remove it; write the text without direction overrides" in found[0].message
    assert found[1].message.startswith("text direction control character `\\u2069`")
    for diagnostic, ch in zip(found, "\u202e\u2069", strict=True):
        start = _at(text, ch)
        assert diagnostic.range == lsp.Range(
            start=start, end=lsp.Position(line=start.line, character=start.character + 1)
        )


@on_server
async def test_ranges_count_utf16_code_units(client: LanguageClient, workdir: Path) -> None:
    """The protocol's default position encoding: 😀 is two UTF-16 code units."""
    text = BROKEN.replace("when request", 'when request.user != "😀" and request')
    folder = _folder(workdir, "utf16", {"u.policy": text})
    uri = await _open(client, folder / "u.policy")
    (found,) = client.diagnostics[uri]
    start = _at(text, "2s")
    assert found.range.start == lsp.Position(line=start.line, character=start.character + 1)


@on_server
async def test_the_unsaved_buffer_is_checked_and_the_siblings_with_it(
    client: LanguageClient, workdir: Path
) -> None:
    """A route defined in a sibling file, and again in the buffer (not on disk): E0202,
    as `policyctl check DIR` would say once the buffer is saved."""
    folder = _folder(
        workdir,
        "siblings",
        {
            "a.policy": 'catalog "models.yaml"\nroute cheap { prefer openai/gpt-3.5-turbo }\n',
            "b.policy": "limit user 5 per 1m\n",
        },
    )
    buffer = "limit user 5 per 1m\nroute cheap { prefer openai/gpt-4o }\n"
    uri = await _open(client, folder / "b.policy", buffer)
    codes = [d.code for d in client.diagnostics[uri]]
    assert "E0202" in codes
    sibling = from_fs_path(str(folder / "a.policy"))
    assert sibling in client.diagnostics  # the sibling's list is published too


@on_server
async def test_closing_an_unsaved_buffer_checks_the_file_again(
    client: LanguageClient, workdir: Path
) -> None:
    folder = _folder(workdir, "close", {"c.policy": FIXED})
    uri = await _open(client, folder / "c.policy", BROKEN)
    assert [d.code for d in client.diagnostics[uri]] == ["E0333"]
    client.diagnostics.pop(uri)
    client.text_document_did_close(
        lsp.DidCloseTextDocumentParams(text_document=lsp.TextDocumentIdentifier(uri=uri))
    )
    await _diagnostics_for(client, uri)
    assert list(client.diagnostics[uri]) == []


@on_server
async def test_a_parse_error_has_its_code_and_place(client: LanguageClient, workdir: Path) -> None:
    text = 'catalog "models.yaml"\nroute r { prefer openai/gpt-4o weight }\n'
    folder = _folder(workdir, "parse", {"p.policy": text})
    uri = await _open(client, folder / "p.policy")
    (found,) = client.diagnostics[uri]
    assert found.code is not None and found.code.startswith("E0")
    assert found.range.start.line == 1


@on_server
async def test_completion_after_request_lists_the_request_fields(
    client: LanguageClient, workdir: Path
) -> None:
    text = 'catalog "models.yaml"\nroute r when request. {\n}\n'
    folder = _folder(workdir, "fields", {"f.policy": text})
    uri = await _open(client, folder / "f.policy")
    result = await client.text_document_completion_async(
        lsp.CompletionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=_at(text, "request.", len("request.")),
        )
    )
    assert isinstance(result, lsp.CompletionList)
    labels = {item.label for item in result.items}
    assert set(REQUEST_FIELDS) <= labels
    assert "route" not in labels  # fields, not keywords
    by_label = {item.label: item for item in result.items}
    assert by_label["max_cost"].detail == "money"
    assert by_label["requires_reasoning"].detail == "boolean"


@on_server
async def test_completion_after_prefer_lists_the_catalogs_models(
    client: LanguageClient, workdir: Path
) -> None:
    text = 'catalog "models.yaml"\nroute r {\n    prefer \n}\n'
    folder = _folder(workdir, "models", {"m.policy": text})
    uri = await _open(client, folder / "m.policy")
    result = await client.text_document_completion_async(
        lsp.CompletionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=_at(text, "prefer ", len("prefer ")),
        )
    )
    assert isinstance(result, lsp.CompletionList)
    labels = [item.label for item in result.items]
    # the design catalog's models (not the packaged catalog's)
    assert "claude/claude-3-haiku-20240307" in labels
    assert "openai/gpt-3.5-turbo" in labels
    assert "anthropic/claude-haiku-5-5" not in labels

    # after `provider/` and part of a name: that provider's models, replacing the part
    typed = text.replace("prefer ", "prefer openai/gpt-3")
    await _change(client, uri, typed, 2)
    cursor = _at(typed, "gpt-3", len("gpt-3"))
    result = await client.text_document_completion_async(
        lsp.CompletionParams(text_document=lsp.TextDocumentIdentifier(uri=uri), position=cursor)
    )
    assert isinstance(result, lsp.CompletionList)
    by_label = {item.label: item for item in result.items}
    assert list(by_label) == [m.id for m in _design().by_provider("openai")]
    edit = by_label["gpt-3.5-turbo"].text_edit
    assert isinstance(edit, lsp.TextEdit)
    assert edit.new_text == "gpt-3.5-turbo"
    assert edit.range == lsp.Range(start=_at(typed, "gpt-3"), end=cursor)


@on_server
async def test_completion_of_keywords_strategies_and_capabilities(
    client: LanguageClient, workdir: Path
) -> None:
    text = (
        'catalog "models.yaml"\nroute r {\n    strategy \n    require model.supports contains "\n'
        "    strategy weighted(latency: 50%, \n"
    )
    folder = _folder(workdir, "words", {"w.policy": text + "\n"})
    uri = await _open(client, folder / "w.policy")

    async def labels(position: lsp.Position) -> list[str]:
        result = await client.text_document_completion_async(
            lsp.CompletionParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri), position=position
            )
        )
        assert isinstance(result, lsp.CompletionList)
        return [item.label for item in result.items]

    assert "model-specific" in await labels(_at(text, "strategy ", len("strategy ")))
    assert await labels(_at(text, 'contains "', len('contains "'))) == list(CAPABILITIES)
    factors = await labels(_at(text, "50%, ", len("50%, ")))
    assert factors == ["cost", "success", "quality"]
    keywords = await labels(lsp.Position(line=1, character=0))
    assert {"route", "limit", "defaults", "prefer", "require", "when"} <= set(keywords)


@on_server
async def test_hover_on_a_model_shows_its_prices_and_capabilities(
    client: LanguageClient, workdir: Path
) -> None:
    text = (
        'catalog "models.yaml"\n'
        "route r when request.max_cost <= $0.01 {\n"
        "    prefer claude/claude-3-5-sonnet-20241022\n"
        "}\n"
    )
    folder = _folder(workdir, "hover", {"h.policy": text})
    uri = await _open(client, folder / "h.policy")
    result = await client.text_document_hover_async(
        lsp.HoverParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=_at(text, "claude-3-5-sonnet", 3),
        )
    )
    assert result is not None
    assert isinstance(result.contents, lsp.MarkupContent)
    shown = result.contents.value
    assert "claude/claude-3-5-sonnet-20241022" in shown
    assert "input $3, output $15" in shown  # models.yaml: pricing {input: 3.00, output: 15.00}
    assert "supports: streaming, tools, vision, json" in shown
    assert result.range is not None
    assert result.range.start == _at(text, "claude/claude-3-5")

    field = await client.text_document_hover_async(
        lsp.HoverParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=_at(text, "max_cost", 2),
        )
    )
    assert field is not None and isinstance(field.contents, lsp.MarkupContent)
    assert field.contents.value == "`request.max_cost`: money"


LLM_TRAFFIC = """\
catalog "models.yaml"

shadow limit user 100 per 1m
limit user 60 per 1m wait up to 5s
limit model "openai/gpt-4o" concurrent 8 lease 10m

route agents when request.priority > 0 {
    affinity by request.session for 30m
}
"""


@on_server
async def test_completion_and_hover_of_the_words_of_llm_traffic_limits(
    client: LanguageClient, workdir: Path
) -> None:
    """Typed in a real session: the limit's unit, what follows its window (`wait up to`,
    not on a shadow limit), `lease` after `concurrent N`, `affinity by request.… for`; and
    the hover of `wait up to`, `affinity … for` and `request.priority`."""
    typing = (
        'catalog "models.yaml"\n'
        "limit user \n"
        "limit user 10 per 1m \n"
        "shadow limit user 10 per 1m \n"
        'limit model "openai/gpt-4o" concurrent 8 \n'
        "limit user 10 per 1m wait \n"
        "shadow \n"
        "route r {\n"
        "    affinity \n"
        "    affinity by \n"
        "    affinity by request.session \n"
        "}\n"
    )
    folder = _folder(workdir, "traffic", {"t.policy": LLM_TRAFFIC, "typing.policy": typing})
    uri = await _open(client, folder / "typing.policy")

    async def items(line: int) -> list[lsp.CompletionItem]:
        end = len(typing.splitlines()[line])
        result = await client.text_document_completion_async(
            lsp.CompletionParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                position=lsp.Position(line=line, character=end),
            )
        )
        assert isinstance(result, lsp.CompletionList)
        return list(result.items)

    async def labels(line: int) -> list[str]:
        return [item.label for item in await items(line)]

    assert await labels(1) == ["requests", "tokens", "spend", "concurrent"]
    assert await labels(2) == ["burst", "wait up to", "when", "until"]
    assert await labels(3) == ["burst", "when", "until"]  # a shadow limit never waits
    assert await labels(4) == ["lease", "when", "until"]  # nor does an in-flight cap
    assert await labels(5) == ["up to"]
    assert await labels(6) == ["limit"]
    (by,) = await items(8)
    assert (by.label, by.text_edit.new_text) == ("by request.", "by request.")  # type: ignore[union-attr]
    assert await labels(9) == ["request."]
    assert await labels(10) == ["for"]

    traffic = await _open(client, folder / "t.policy")

    async def shown(needle: str, after: int) -> tuple[str, lsp.Range | None]:
        result = await client.text_document_hover_async(
            lsp.HoverParams(
                text_document=lsp.TextDocumentIdentifier(uri=traffic),
                position=_at(LLM_TRAFFIC, needle, after),
            )
        )
        assert result is not None and isinstance(result.contents, lsp.MarkupContent)
        return result.contents.value, result.range

    text, where = await shown("wait up to", len("wait u"))  # on `up`: the phrase's hover
    assert text.startswith("`limit … per D wait up to W`") and "E0422" in text
    assert where == lsp.Range(
        start=_at(LLM_TRAFFIC, "wait up to"), end=_at(LLM_TRAFFIC, "wait up to", 10)
    )
    text, _ = await shown("session for", len("session f"))
    assert text.startswith("`affinity by request.FIELD for DURATION`")
    text, _ = await shown("request.priority", len("request.pr"))
    assert text.startswith("`request.priority`: number; the order of the waiters")
    text, _ = await shown("concurrent 8", 2)
    assert text.startswith("`limit SCOPE concurrent N [lease D]`")
    text, _ = await shown("shadow limit", 2)
    assert text.startswith("`shadow limit SCOPE … per D`")


@on_server
async def test_definition_of_a_route_from_a_sibling_file(
    client: LanguageClient, workdir: Path
) -> None:
    routes = (
        'catalog "models.yaml"\n\n'
        "route  vision when request.requires_vision {\n"
        "    prefer claude/claude-3-opus\n"
        "}\n"
    )
    notes = "# images go to route vision first\nlimit user 5 per 1m\n"
    folder = _folder(workdir, "definition", {"routes.policy": routes, "notes.policy": notes})
    uri = await _open(client, folder / "notes.policy")
    result = await client.text_document_definition_async(
        lsp.DefinitionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=_at(notes, "vision", 2),
        )
    )
    assert isinstance(result, list)
    (place,) = result
    assert isinstance(place, lsp.Location)
    assert place.uri == from_fs_path(str(folder / "routes.policy"))
    start = _at(routes, "vision when")
    assert place.range == lsp.Range(
        start=start, end=lsp.Position(line=start.line, character=start.character + 6)
    )

    none = await client.text_document_definition_async(
        lsp.DefinitionParams(
            text_document=lsp.TextDocumentIdentifier(uri=uri),
            position=_at(notes, "images", 1),
        )
    )
    assert not none


@on_server
async def test_document_symbols_list_routes_and_limits(
    client: LanguageClient, workdir: Path
) -> None:
    text = (
        'catalog "models.yaml"\n'
        "route a { prefer openai/gpt-4o }\n"
        "route b { prefer openai/gpt-4o }\n"
        "limit user 5 per 1m\n"
    )
    folder = _folder(workdir, "symbols", {"s.policy": text})
    uri = await _open(client, folder / "s.policy")
    result = await client.text_document_document_symbol_async(
        lsp.DocumentSymbolParams(text_document=lsp.TextDocumentIdentifier(uri=uri))
    )
    assert result is not None
    assert [(s.name, s.detail) for s in result if isinstance(s, lsp.DocumentSymbol)] == [
        ("models.yaml", "catalog"),
        ("a", "route"),
        ("b", "route"),
        ("user", "limit"),
    ]


# ----------------------------------------------------------------------------- knowledge
# What the server answers, from `engine.lsp.knowledge` directly (no protocol): the cases
# the protocol tests above do not reach.


def _design() -> Catalog:
    return load_catalog(DESIGN_CATALOG, "models.yaml")


def _labels(text: str, catalog: Catalog | None = None) -> list[str]:
    return [c.label for c in knowledge.completions(text, len(text), catalog).items]


def test_keywords_are_the_grammars() -> None:
    words = set(knowledge.keywords())
    assert {"catalog", "defaults", "route", "limit", "prefer", "exclude", "require"} <= words
    assert {"fallback", "cooldown", "on_store_error", "per", "burst", "until"} <= words
    assert {"and", "or", "not", "in", "contains", "when", "true", "false", "null"} <= words
    grammar = (ROOT / "grammar" / "policy.lark").read_text(encoding="utf-8")
    assert all(f'"{w}"' in grammar for w in words)


@pytest.mark.parametrize(
    "model_id",
    ["gpt-4o", "gemini-1.5-flash-latest", "anthropic.claude-3-haiku-20240307-v1:0", "a/b", 'q"x'],
)
def test_a_completed_model_id_parses_back_to_itself(model_id: str) -> None:
    written = knowledge.written(model_id)
    policy = parse(f"route r {{ prefer bedrock/{written} }}", "t.policy")
    (route,) = policy.statements
    assert isinstance(route, ast.Route)
    (prefer,) = route.items
    assert isinstance(prefer, ast.Prefer) and prefer.ref.model is not None
    assert prefer.ref.model.text == model_id
    assert (written == model_id) == (
        "/" not in model_id and ":" not in model_id and '"' not in model_id
    )


def test_completion_after_a_provider_lists_its_models_only() -> None:
    catalog = _design()
    assert _labels("route r { prefer openai/", catalog) == [
        m.id for m in catalog.by_provider("openai")
    ]
    assert _labels("route r { exclude claude, gemini/", catalog) == [
        m.id for m in catalog.by_provider("gemini")
    ]
    # exclude and fallback may name a provider alone: providers first
    assert _labels("    fallback ", catalog)[:3] == ["claude", "gemini", "openai"]


@pytest.mark.parametrize(
    ("line", "typed"),
    [
        ("route r { prefer openai/gpt-3", "gpt-3"),
        ("route r { prefer gpt", "gpt"),
        ('route r { exclude "claude"/claude-3.', "claude-3."),
        ("route r when request.max_c", "max_c"),
        ("    strategy model-sp", "model-sp"),
        ('    require model.supports contains "vi', "vi"),
        ("rou", "rou"),
        ("route r {\n    ", ""),
    ],
)
def test_a_completion_replaces_what_was_typed_of_the_word(line: str, typed: str) -> None:
    """Names with `-`, `.` and `/` are one word to the server, whatever the editor thinks."""
    found = knowledge.completions(line, len(line), _design())
    assert line[found.start :] == typed
    assert found.items


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("limit user ", ["requests", "tokens", "spend", "concurrent"]),
        ('limit user "vip" to', ["requests", "tokens", "spend", "concurrent"]),
        ("limit team = request.metadata.team ", ["requests", "tokens", "spend", "concurrent"]),
        ("shadow limit ip ", ["requests", "tokens", "spend", "concurrent"]),
        ("limit user tokens 100k ", ["per"]),
        ("limit user spend $5 p", ["per"]),
        ("limit user 10 per 1m burst 2 ", ["wait up to", "when", "until"]),
        ("limit user 10 per 1m wait up to 2s ", ["when", "until"]),
        ("limit user concurrent 2 lease 5m ", ["when", "until"]),
        ("route r {\n    wait ", ["up to"]),
        ("route r {\n    shadow ", ["route"]),
        ("route r {\n    affinity by request.user ", ["for"]),
    ],
)
def test_completion_of_the_words_of_a_limit_and_affinity(line: str, expected: list[str]) -> None:
    assert _labels(line) == expected


def test_the_completed_limit_words_parse() -> None:
    """What the completions insert, joined, is a policy the parser accepts."""
    text = "".join(
        [
            "limit user ", "tokens", " 100k ", "per ", "1m ", "burst ", "10k ",
            "wait up to ", "2s\n", "route r {\n    affinity ", "by request.", "session ",
            "for ", "30m\n}\n", "shadow ", "limit ", "ip 5 per 1m\n",
        ]
    )  # fmt: skip
    policy = parse(text, "t.policy")
    assert len(policy.statements) == 3
    for typed, offered in [
        ("limit user ", "tokens"), ("limit user tokens 100k ", "per "),
        ("limit user tokens 100k per 1m ", "burst "),
        ("limit user tokens 100k per 1m burst 10k ", "wait up to "),
        ("route r {\n    affinity ", "by request."),
        ("route r {\n    affinity by request.session ", "for "),
        ("shadow ", "limit "),
    ]:  # fmt: skip
        found = knowledge.completions(typed, len(typed), None)
        assert offered in [item.insert for item in found.items], typed


def test_hover_on_the_words_of_a_phrase_shows_the_phrase() -> None:
    line = "limit user 60 per 1m wait up to 5s"
    for word in ("wait", "up", "to"):
        found = knowledge.hover(line, line.index(f" {word} ") + 2, None)
        assert found is not None and "a bounded queue per bucket key" in found.markdown
    assert knowledge.hover(line, line.index("5s"), None) is None
    affinity = "    affinity by request.session for 30m"
    found = knowledge.hover(affinity, affinity.index("for") + 1, None)
    assert found is not None and found.markdown.startswith("`affinity by request.FIELD")
    priority = knowledge.hover("route r when request.priority < 0 {", 20, None)
    assert priority is not None and "`X-Priority`" in priority.markdown


def test_completion_inside_weighted_lists_the_factors_not_yet_given() -> None:
    assert _labels("    strategy weighted(") == ["latency", "cost", "success", "quality"]
    assert _labels("    strategy weighted(latency: 40%, cost: 30%, q") == ["success", "quality"]
    found = knowledge.completions("strategy weighted(qu", 20, None)
    assert (found.start, found.items[-1].insert) == (18, "quality: ")
    assert _labels("    strategy cost(") == []  # takes no factors (E0211)
    assert "min_quality" in _labels("    min_q")
    assert "min_quality" in _labels("route r when request.min_q")


def test_no_completion_inside_a_comment_and_model_paths() -> None:
    assert _labels("route r {  # prefer ") == []
    attrs = _labels("    require model.")
    assert {"supports", "regions", "pricing", "quality", "context_window"} <= set(attrs)
    assert _labels("    require model.pricing.") == ["input", "output", "cached_input", "image"]
    assert _labels("route r when request.metadata.") == []


def test_hover_on_a_quoted_reference_and_a_family() -> None:
    catalog = _design()
    text = 'prefer "openai"/"gpt-4"'
    shown = knowledge.hover(text, text.index("gpt"), catalog)
    assert shown is not None and shown.markdown.startswith("**openai/gpt-4**")
    assert (shown.start, shown.end) == (text.index('"openai"'), len(text))
    assert knowledge.hover("prefer openai/no-such-model", 10, catalog) is None


@pytest.mark.parametrize("literal", ['"a\\"b"', '"C:\\\\x"', '"tab\\there"', '"two\\nlines"'])
def test_the_hover_reads_a_string_as_the_parser_does(literal: str) -> None:
    """The hover's reading of a quoted name is the parser's: `"a\\"b"` is `a"b`,
    `"C:\\\\x"` is `C:\\x`, and `\\t` a tab (its own copy made `"tab\\there"`
    `tabthere`); a bare name (`gpt-4o`) is itself."""
    (route,) = parse(f"route r when request.user == {literal} {{\n}}\n").statements
    assert isinstance(route, ast.Route) and isinstance(route.when, ast.Compare)
    assert isinstance(route.when.right, ast.Literal)
    assert knowledge.unquote(literal) == route.when.right.value
    assert knowledge.unquote("gpt-4o") == "gpt-4o"


def test_the_hover_and_the_parser_read_an_unknown_escape_alike() -> None:
    """`"\\u00e9"` is E0015 to the parser, which reads on as `u00e9`: so does the hover."""
    assert knowledge.unquote is parser_unquote
    assert parser_unquote('"\\u00e9"') == "u00e9"
    with pytest.raises(PolicyError) as info:
        parse('route r when request.user == "\\u00e9" {\n}\n')
    assert [d.code for d in info.value.diagnostics] == ["E0015"]


# ----------------------------------------------------------------------------- no extra

# Makes `import pygls` fail as it does when pygls is not installed: a finder ahead of all
# others that reports the module missing.
_BLOCK = """\
import sys


class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pygls", "lsprotocol"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _Missing())
"""


def test_without_pygls_lsp_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCK, encoding="utf-8")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join((str(blocker), env["PYTHONPATH"]))
    probe = subprocess.run(
        [sys.executable, "-c", "import pygls"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "No module named 'pygls'" in probe.stderr

    done = subprocess.run(
        [sys.executable, "-m", "engine", "lsp"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        "policyctl: error: the language server needs pygls, which is not installed:"
        " pip install 'policyctl[lsp]'"
    )

    helped = subprocess.run(
        [sys.executable, "-m", "engine", "lsp", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0
    assert "pip install 'policyctl[lsp]'" in helped.stdout


def test_completion_and_hover_of_the_prompt_features_and_complexity() -> None:
    labels = _labels("route r when request.")
    assert {"text", "complexity", "features", "metadata"} <= set(labels)
    found = knowledge.completions("route r when request.text.", 27, None).items
    by_label = {c.label: c.detail for c in found}
    assert list(by_label) == list(PROMPT_FEATURES)
    assert by_label["code"] == "boolean: a code block or code lines in the recent turns"
    assert by_label["script"].startswith("string: the last turn's dominant script")
    assert _labels("route r when request.text.co") == list(PROMPT_FEATURES)
    line = "route r when request.text.multi_step and request.complexity > 0.5 {"
    shown = knowledge.hover(line, line.index("multi_step"), None)
    assert shown is not None
    assert shown.markdown.startswith("`request.text.multi_step`: boolean, a prompt feature:")
    shown = knowledge.hover(line, line.index("complexity"), None)
    assert shown is not None and shown.markdown.startswith("`request.complexity`: number (0-1)")


def test_completion_of_the_complexity_terms_not_yet_given() -> None:
    assert _labels("    complexity(") == list(COMPLEXITY_TERMS)
    assert _labels("    complexity(code: 0.6, len") == [t for t in COMPLEXITY_TERMS if t != "code"]
    found = knowledge.completions("    complexity(ma", 17, None)
    assert found.start == 15
    assert "math: " in [c.insert for c in found.items]
    assert {c.detail for c in found.items if c.label == "length"} == {
        f"complexity term: {COMPLEXITY_TERMS['length'].doc}"
    }


def test_completion_and_hover_of_the_registered_plugins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lsp_plugins.py").write_text(
        "from engine.features import feature\n\n"
        "@feature(type=str, fallback='general')\n"
        "def topic(request):\n"
        '    """A coarse topic of the last message."""\n'
        "    return 'general'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        EntryPoint("topic", "lsp_plugins:topic", GROUP),
        EntryPoint("gone", "lsp_no_such_module:f", GROUP),
    ]
    with using(Registry(points)):
        found = knowledge.completions("route r when request.features.", 30, None).items
        by_label = {c.label: c.detail for c in found}
        assert list(by_label) == ["gone", "topic"]
        assert by_label["topic"] == (
            "string: A coarse topic of the last message. (plugin `lsp_plugins:topic`)"
        )
        assert by_label["gone"].startswith("cannot be used: ModuleNotFoundError")
        line = 'route r when request.features.topic == "law" {'
        shown = knowledge.hover(line, line.index("topic"), None)
        assert shown is not None and shown.markdown.startswith(
            "`request.features.topic`: string: A coarse topic"
        )
    sys.modules.pop("lsp_plugins", None)
    assert _labels("route r when request.features.") == []  # none installed here


@pytest.mark.parametrize(
    ("line", "field", "typed"),
    [
        ('route r when request.text.script == "cy', "request.text.script", "cy"),
        ('route r when request.text.script != "', "request.text.script", ""),
        ('route r when request.format in ["anthropic", "op', "request.format", "op"),
        ('route r when request.text.script not in ["', "request.text.script", ""),
    ],
)
def test_completion_of_a_closed_fields_values_lists_every_value_it_takes(
    line: str, field: str, typed: str
) -> None:
    """The values the checker accepts (E0344 refuses any other), from where the value
    being typed starts; each completed line compiles."""
    found = knowledge.completions(line, len(line), None)
    assert [c.label for c in found.items] == list(CLOSED_VALUES[field])
    assert found.start == len(line) - len(typed)
    for item in found.items:
        text = line[: found.start] + item.insert + '"' + ("]" if "[" in line else "") + " {\n}\n"
        compile_sources([("t.policy", text)])
