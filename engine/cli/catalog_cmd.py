"""`policyctl catalog import litellm|show|diff`: build a catalog from LiteLLM's price table,
look at one, compare two."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.catalog.litellm import (
    ImportResult,
    Table,
    bundled_table,
    convert,
    read_latency_priors,
    read_table,
    render_json,
    render_yaml,
)
from engine.catalog.load import load_catalog
from engine.catalog.model import CAPABILITIES, Catalog, CatalogError, Model
from engine.catalog.views import CatalogDiff, day, describe, diff, select
from engine.cli.common import (
    EXIT_OK,
    UsageError,
    add_format,
    add_policy,
    cli_clock,
    default_policy_path,
    dump_json,
    printable,
    render_table,
)
from engine.diagnostics import PolicyError, did_you_mean, render_all

EXAMPLE = """\
examples:
  policyctl catalog import litellm --output models.yaml
  policyctl catalog show --provider anthropic --supports vision
  policyctl catalog diff policies/models.yaml models.yaml
"""

IMPORT_EXAMPLE = """\
examples:
  policyctl catalog import litellm                         # the installed litellm's table
  policyctl catalog import litellm prices.json --providers openai,anthropic,gemini \\
      --output models.yaml
  policyctl catalog import litellm --output models.json    # JSON: the fastest to load

FILE is a LiteLLM model_prices_and_context_window.json; without it, the table bundled
with the installed litellm (read as a file, never fetched). Writes YAML (JSON when
--output ends in .json) to --output or standard output, and the report (models imported,
entries skipped and why, LiteLLM fields not mapped) to standard error.
--latency-priors FILE (YAML or JSON) overrides the per-provider latency priors:
  default: {p50: 1000, p95: 3000}
  providers: {openai: {p50: 800, p95: 2500}}
"""

SHOW_EXAMPLE = """\
examples:
  policyctl catalog show                          # the default policy's catalog
  policyctl catalog show models.yaml --provider openai --supports tools,json_schema
  policyctl catalog show --format json

Prices are USD per 1M tokens (per image for IMAGE); TIERS counts the price tiers by
input size; RETIRES is marked `(retired)` once the engine's clock is past it.
"""

DIFF_EXAMPLE = """\
examples:
  policyctl catalog diff policies/models.yaml new-models.yaml
  policyctl catalog diff old.json new.json --format json

Added and removed models (by provider/id), and for the others what changed: prices
(input, output, cached_input, cache_write, image, tiers), context_window, max_tokens and
the retirement date. Exit 0 whether or not they differ (1 means something broke, as for
every policyctl command); `--format json` is for scripts.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "catalog",
        help="import a model catalog from LiteLLM's price table, show one, compare two",
        description="Build, inspect and compare model catalogs.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    imp = actions.add_parser(
        "import",
        help="convert LiteLLM's model_prices_and_context_window table into a catalog",
        description="Convert a LiteLLM price table into a version-2 catalog.",
        epilog=IMPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("source", choices=("litellm",), help="where the table comes from")
    imp.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="a LiteLLM price table (default: the installed litellm's)",
    )
    imp.add_argument("--providers", metavar="A,B", help="only these litellm_provider names")
    imp.add_argument("--output", metavar="PATH", help="write here (default: standard output)")
    imp.add_argument(
        "--current",
        action="store_true",
        help="leave out models already retired (deprecation_date on or before today, by the"
        " engine clock: POLICYCTL_NOW when set)",
    )
    imp.add_argument(
        "--latency-priors", metavar="FILE", help="per-provider latency priors (YAML or JSON)"
    )
    imp.set_defaults(run=run_import)

    show = actions.add_parser(
        "show",
        help="a table of a catalog's models: context, prices, capabilities, retirement",
        description="Show a catalog's models, filtered by provider and capability.",
        epilog=SHOW_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    show.add_argument(
        "catalog",
        nargs="?",
        metavar="CATALOG",
        help="a catalog file (default: the catalog of the policy set, see --policy)",
    )
    add_policy(show)
    show.add_argument("--provider", help="only this provider's models")
    show.add_argument("--supports", metavar="CAP,CAP", help="only models with all of these")
    add_format(show, default="table")
    show.set_defaults(run=run_show)

    cmp = actions.add_parser(
        "diff",
        help="models added, removed and repriced between two catalogs",
        description="Compare two catalogs: what changed since the last import.",
        epilog=DIFF_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("old", metavar="OLD", help="the earlier catalog file")
    cmp.add_argument("new", metavar="NEW", help="the later catalog file")
    add_format(cmp, default="table")
    cmp.set_defaults(run=run_diff)


# ---------------------------------------------------------------- import


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{flag} needs at least one name")
    return names


def _header(table: Table, result: ImportResult, providers: list[str] | None) -> list[str]:
    generated = datetime.fromtimestamp(cli_clock()(), UTC).date().isoformat()
    origin = (
        f"from litellm {table.litellm_version} (its bundled price table)"
        if table.litellm_version is not None
        else f"from {Path(table.source).name}"
    )
    lines = [
        "policyctl model catalog, generated by `policyctl catalog import litellm`",
        f"{origin} on {generated}: {len(result.report.imported):,} models.",
    ]
    if providers:
        lines.append("providers: " + ", ".join(providers))
    lines.append("Regenerate it rather than edit it; see docs/catalog.md.")
    return lines


def _write(path: str, text: str) -> None:
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as `open` would have made it (mkstemp makes 0600)
        os.replace(tmp, target)
    except OSError as err:
        raise UsageError(f"cannot write `{path}`: {err.strerror or err}") from None


def run_import(args: argparse.Namespace) -> int:
    providers = _names(args.providers, "--providers")
    priors, default_prior = (
        read_latency_priors(args.latency_priors) if args.latency_priors else ({}, None)
    )
    table = read_table(args.file) if args.file is not None else bundled_table()
    today = datetime.fromtimestamp(cli_clock()(), UTC).date() if args.current else None
    result = convert(table.data, providers, priors, default_prior, today)
    if not result.report.imported:  # a catalog of no model routes nothing: write none
        print(f"{table.source}: " + "\n".join(result.report.lines()), file=sys.stderr)
        where = f" of {', '.join(providers)}" if providers else ""
        raise UsageError(
            f"`{table.source}`: no entry{where} could be imported, so nothing was written"
            " (see the reasons above)"
        )
    if args.output is not None and args.output.endswith(".json"):
        text = render_json(result.document, _header(table, result, providers))
    else:
        text = render_yaml(result.document, _header(table, result, providers))
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write(args.output, text)
    print(f"{table.source}: " + "\n".join(result.report.lines()), file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------- show


def _catalog_of_policy(path: str | None) -> Catalog:
    from engine.language.loader import load_policy  # only `show` without CATALOG needs it

    target = path if path is not None else default_policy_path()
    try:
        return load_policy(target).program.catalog
    except PolicyError as err:
        print(render_all(list(err.diagnostics)), file=sys.stderr)
        raise UsageError("the policy set has errors; give a CATALOG file") from None


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:g}"


def _row(m: Model, now: float) -> list[Any]:
    retires = day(m.retires_at)
    if retires is not None and m.retired(now):
        retires += " (retired)"
    return [
        m.provider,
        m.id,
        m.context_window,
        m.max_tokens,
        _money(m.input_price),
        _money(m.output_price),
        _money(m.cached_input_price),
        _money(m.cache_write_price),
        _money(m.image_price) if m.image_price else "-",
        len(m.tiers) or "-",
        ",".join(c for c in CAPABILITIES if c in m.supports) or "-",
        retires,
    ]


SHOW_HEADERS = (
    "provider", "id", "context", "max_out", "input", "output", "cached", "cache_write",
    "image", "tiers", "supports", "retires",
)  # fmt: skip


def run_show(args: argparse.Namespace) -> int:
    supports = _names(args.supports, "--supports") or []
    for name in supports:
        if name not in CAPABILITIES:
            guess = did_you_mean(name, CAPABILITIES)
            hint = f"did you mean `{guess}`? " if guess else ""
            raise UsageError(
                f"--supports: unknown capability `{printable(name)}`; {hint}use "
                + ", ".join(f"`{c}`" for c in CAPABILITIES)
            )
    if args.catalog is not None:
        catalog = load_catalog(args.catalog)
    else:
        catalog = _catalog_of_policy(args.policy)
    if args.provider is not None and args.provider not in catalog.providers:
        guess = did_you_mean(args.provider, catalog.providers)
        hint = f"; did you mean `{guess}`?" if guess else ""
        raise UsageError(
            f"--provider: no model of provider `{printable(args.provider)}` in"
            f" {catalog.source}{hint}"
        )
    rows = select(catalog, args.provider, supports)
    if args.format == "json":
        dump_json([describe(m) for m in rows])
        return EXIT_OK
    now = cli_clock()()
    print(render_table(SHOW_HEADERS, [_row(m, now) for m in rows]))
    shown = f"{len(rows):,} of {len(catalog.models):,} models" if rows else "no models"
    print(f"{shown} ({catalog.source}); prices in USD per 1M tokens")
    return EXIT_OK


# ---------------------------------------------------------------- diff


def _shown(field: str, value: Any) -> str:
    if value is None:
        return "-"
    if field == "tiers":
        return "[" + ", ".join(f">{t['above']:,}: ${t['input']:g}/${t['output']:g}"
                               for t in value) + "]"  # fmt: skip
    if field in ("input", "output", "cached_input", "cache_write", "image"):
        return f"${value:g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _diff_json(result: CatalogDiff) -> dict[str, Any]:
    return {
        "added": [describe(m) for m in result.added],
        "removed": [describe(m) for m in result.removed],
        "changed": [
            {
                "model": c.key,
                "changes": [{"field": x.field, "old": x.old, "new": x.new} for x in c.changes],
            }
            for c in result.changed
        ],
    }


def run_diff(args: argparse.Namespace) -> int:
    errors: list[str] = []
    catalogs: list[Catalog] = []
    for path in (args.old, args.new):
        try:
            catalogs.append(load_catalog(path))
        except CatalogError as err:
            errors.extend(err.messages)
    if errors:
        raise CatalogError(errors)
    old, new = catalogs
    result = diff(old, new)
    if args.format == "json":
        dump_json(_diff_json(result))
        return EXIT_OK
    for m in result.added:
        print(f"+ {printable(m.key)}  {_money(m.input_price)} in, {_money(m.output_price)} out")
    for m in result.removed:
        print(f"- {printable(m.key)}")
    for c in result.changed:
        what = "; ".join(
            f"{x.field} {_shown(x.field, x.old)} -> {_shown(x.field, x.new)}" for x in c.changes
        )
        print(f"~ {printable(c.key)}  {what}")
    repriced = sum(c.repriced for c in result.changed)
    print(
        f"{len(result.added)} added, {len(result.removed)} removed, {repriced} repriced,"
        f" {len(result.changed) - repriced} otherwise changed"
        f" ({len(old.models):,} models before, {len(new.models):,} after)"
    )
    return EXIT_OK
