"""`policyctl lsp`: the language server, on pygls, over stdio. The only pygls user.

Thin over `policy_set` (what `policyctl check` says about a document's policy set) and
`knowledge` (completion, hover, definition, outline); this module converts between their
code-point offsets and the protocol's positions (UTF-16 unless the client asks otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace import TextDocument

from engine.catalog.model import Catalog
from engine.diagnostics import Diagnostic, Source
from engine.lsp import knowledge
from engine.lsp.policy_set import Checked, check_document, texts_of

_SEVERITY = {
    "error": lsp.DiagnosticSeverity.Error,
    "warning": lsp.DiagnosticSeverity.Warning,
}
_COMPLETION_KIND = {
    "keyword": lsp.CompletionItemKind.Keyword,
    "field": lsp.CompletionItemKind.Field,
    "model": lsp.CompletionItemKind.Value,
    "provider": lsp.CompletionItemKind.Module,
    "strategy": lsp.CompletionItemKind.Function,
    "factor": lsp.CompletionItemKind.Property,
    "capability": lsp.CompletionItemKind.EnumMember,
    "scope": lsp.CompletionItemKind.EnumMember,
    "value": lsp.CompletionItemKind.EnumMember,
    "route": lsp.CompletionItemKind.Reference,
    "signal": lsp.CompletionItemKind.Function,
}
_SYMBOL_KIND = {
    "route": lsp.SymbolKind.Function,
    "limit": lsp.SymbolKind.Constant,
    "defaults": lsp.SymbolKind.Namespace,
    "catalog": lsp.SymbolKind.File,
    "require": lsp.SymbolKind.Property,
    "deny": lsp.SymbolKind.Event,
    "alert": lsp.SymbolKind.Event,
}


class PolicyServer(LanguageServer):
    """The server and what it remembers: the catalog each document last resolved (so
    completion and hover keep working while a buffer does not parse)."""

    def __init__(self, version: str) -> None:
        super().__init__("policyctl", version)
        self.catalogs: dict[Path, Catalog] = {}

    def path_of(self, uri: str) -> Path | None:
        fs = to_fs_path(uri)
        return Path(fs).resolve() if fs is not None else None

    def buffers(self) -> dict[Path, str]:
        """The open documents' texts, by file."""
        out: dict[Path, str] = {}
        for uri, doc in self.workspace.text_documents.items():
            path = self.path_of(uri)
            if path is not None:
                out[path] = doc.source
        return out

    # ------------------------------------------------------------- conversions

    def position(self, source: Source, offset: int) -> lsp.Position:
        """A code-point offset as the client counts: its line, and the code units (UTF-16
        unless negotiated otherwise) before it on that line."""
        line, col = source.line_col(offset)
        before = source.line_text(line)[: col - 1]
        units = self.workspace.position_codec.client_num_units(before)
        return lsp.Position(line=line - 1, character=units)

    def range(self, source: Source, start: int, end: int) -> lsp.Range:
        return lsp.Range(start=self.position(source, start), end=self.position(source, end))


def _diagnostic(ls: PolicyServer, d: Diagnostic) -> lsp.Diagnostic:
    if d.span is not None:
        where = ls.range(d.span.source, d.span.start, d.span.end)
        message = d.message
    else:  # no place in a policy text (a catalog file's problem): the document's top
        where = lsp.Range(
            start=lsp.Position(line=0, character=0), end=lsp.Position(line=0, character=0)
        )
        message = f"{d.file}: {d.message}" if d.file else d.message
    if d.help:
        message += f"\nhelp: {d.help}"
    return lsp.Diagnostic(
        range=where,
        message=message,
        severity=_SEVERITY.get(d.severity, lsp.DiagnosticSeverity.Information),
        code=d.code,
        source="policyctl",
    )


def _publish(ls: PolicyServer, checked: Checked) -> None:
    for path, found in checked.diagnostics.items():
        uri = from_fs_path(str(path))
        if uri is None:
            continue
        ls.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[_diagnostic(ls, d) for d in found])
        )


def _check(ls: PolicyServer, uri: str) -> None:
    path = ls.path_of(uri)
    if path is None:
        return
    checked = check_document(path, ls.buffers())
    if checked.catalog is not None:
        for p in checked.files:
            ls.catalogs[p] = checked.catalog
    _publish(ls, checked)


def did_open(ls: PolicyServer, params: lsp.DidOpenTextDocumentParams) -> None:
    _check(ls, params.text_document.uri)


def did_change(ls: PolicyServer, params: lsp.DidChangeTextDocumentParams) -> None:
    _check(ls, params.text_document.uri)


def did_save(ls: PolicyServer, params: lsp.DidSaveTextDocumentParams) -> None:
    _check(ls, params.text_document.uri)


def did_close(ls: PolicyServer, params: lsp.DidCloseTextDocumentParams) -> None:
    """The file on disk is what counts again: its set is checked without the buffer."""
    path = ls.path_of(params.text_document.uri)
    if path is not None and path.exists():
        _publish(ls, check_document(path, ls.buffers()))
    else:
        ls.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[])
        )


def _document(ls: PolicyServer, uri: str) -> tuple[TextDocument, Path] | None:
    path = ls.path_of(uri)
    if path is None:
        return None
    return ls.workspace.get_text_document(uri), path


def _catalog(ls: PolicyServer, path: Path) -> Catalog | None:
    if path not in ls.catalogs:
        _check(ls, from_fs_path(str(path)) or "")
    return ls.catalogs.get(path)


def completion(ls: PolicyServer, params: lsp.CompletionParams) -> lsp.CompletionList | None:
    found = _document(ls, params.text_document.uri)
    if found is None:
        return None
    doc, path = found
    offset = doc.offset_at_position(params.position)
    found = knowledge.completions(doc.source, offset, _catalog(ls, path))
    source = Source(path.name, doc.source)
    typed = ls.range(source, found.start, offset)
    items = [
        lsp.CompletionItem(
            label=c.label,
            kind=_COMPLETION_KIND[c.kind],
            detail=c.detail,
            text_edit=lsp.TextEdit(range=typed, new_text=c.insert),
            filter_text=c.insert,
            sort_text=f"{i:05d}",
        )
        for i, c in enumerate(found.items)
    ]
    return lsp.CompletionList(is_incomplete=False, items=items)


def hover(ls: PolicyServer, params: lsp.HoverParams) -> lsp.Hover | None:
    found = _document(ls, params.text_document.uri)
    if found is None:
        return None
    doc, path = found
    shown = knowledge.hover(doc.source, doc.offset_at_position(params.position), _catalog(ls, path))
    if shown is None:
        return None
    return lsp.Hover(
        contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=shown.markdown),
        range=ls.range(Source(path.name, doc.source), shown.start, shown.end),
    )


def definition(ls: PolicyServer, params: lsp.DefinitionParams) -> Sequence[lsp.Location] | None:
    found = _document(ls, params.text_document.uri)
    if found is None:
        return None
    doc, path = found
    texts = texts_of(path, ls.buffers())
    places = knowledge.definition(doc.source, doc.offset_at_position(params.position), texts)
    sources = {p.path: Source(p.path.name, texts[p.path]) for p in places}
    return [
        lsp.Location(uri=uri, range=ls.range(sources[p.path], p.start, p.end))
        for p in places
        if (uri := from_fs_path(str(p.path))) is not None
    ] or None


def document_symbol(
    ls: PolicyServer, params: lsp.DocumentSymbolParams
) -> Sequence[lsp.DocumentSymbol] | None:
    found = _document(ls, params.text_document.uri)
    if found is None:
        return None
    doc, path = found
    source = Source(path.name, doc.source)
    return [
        lsp.DocumentSymbol(
            name=s.name,
            kind=_SYMBOL_KIND[s.kind],
            range=ls.range(source, s.start, s.end),
            selection_range=ls.range(source, s.name_start, s.name_end),
            detail=s.kind,
        )
        for s in knowledge.symbols(path, doc.source)
    ]


# (the request or notification, its options, its handler)
_FEATURES = (
    (lsp.TEXT_DOCUMENT_DID_OPEN, None, did_open),
    (lsp.TEXT_DOCUMENT_DID_CHANGE, None, did_change),
    (lsp.TEXT_DOCUMENT_DID_SAVE, None, did_save),
    (lsp.TEXT_DOCUMENT_DID_CLOSE, None, did_close),
    (
        lsp.TEXT_DOCUMENT_COMPLETION,
        lsp.CompletionOptions(trigger_characters=[".", "/", " ", '"']),
        completion,
    ),
    (lsp.TEXT_DOCUMENT_HOVER, None, hover),
    (lsp.TEXT_DOCUMENT_DEFINITION, None, definition),
    (lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL, None, document_symbol),
)


def build(version: str) -> PolicyServer:
    """A server with every feature registered; `version` is policyctl's."""
    ls = PolicyServer(version)
    for name, options, handler in _FEATURES:
        ls.feature(name, options)(handler)
    return ls


def serve(version: str) -> None:
    """Serve one client over standard input and output until it exits."""
    build(version).start_io()
