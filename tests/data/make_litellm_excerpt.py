"""Write tests/data/litellm_excerpt.json: a few hundred entries of LiteLLM's price table,
chosen by rule (not by hand) so that every case the importer handles is in it.

    python tests/data/make_litellm_excerpt.py [TABLE] [--output PATH]

TABLE defaults to the table bundled with the installed litellm (read as a file: litellm is
not imported). The choice is deterministic: keys are taken in sorted order, so the same
table gives the same excerpt. tests/test_catalog_import.py pins the report on it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from engine.catalog.litellm import bundled_table, read_table  # noqa: E402

Entry = dict[str, Any]
TIER = re.compile(r"_above_\d+k?_tokens$")
CHAT = ("chat", "responses")


def _chat(e: Entry) -> bool:
    return e.get("mode") in CHAT


# (what the rule covers, how many entries, the rule)
# fmt: off
RULES: list[tuple[str, int, Callable[[str, Entry], bool]]] = [
    ("every mode that is skipped", 2, lambda k, e: False),  # handled by mode below
    ("wildcard keys", 2, lambda k, e: "*" in k),
    (
        "per-second prices",
        3,
        lambda k, e: _chat(e) and "input_cost_per_second" in e and "*" not in k,
    ),
    ("per-request prices", 2, lambda k, e: _chat(e) and "input_cost_per_request" in e),
    ("per-character prices", 6, lambda k, e: _chat(e) and "input_cost_per_character" in e),
    (
        "no token price",
        3,
        lambda k, e: _chat(e) and "input_cost_per_token" not in e and "tiered_pricing" not in e,
    ),
    (
        "no max_input_tokens",
        3,
        lambda k, e: _chat(e) and "input_cost_per_token" in e and "max_input_tokens" not in e,
    ),
    (
        "no output limit",
        3,
        lambda k, e: (
            _chat(e)
            and "max_input_tokens" in e
            and "max_output_tokens" not in e
            and "max_tokens" not in e
        ),
    ),
    ("a zero limit", 1, lambda k, e: _chat(e) and e.get("max_input_tokens") == 0),
    ("ids starting with @", 3, lambda k, e: _chat(e) and k.split("/", 1)[-1].startswith("@")),
    ("ids with @", 4, lambda k, e: _chat(e) and "@" in k.split("/", 1)[-1][1:]),
    ("ids with :", 6, lambda k, e: _chat(e) and ":" in k),
    ("ids with two /", 6, lambda k, e: _chat(e) and k.count("/") >= 2),
    (
        "xai tiers (inclusive thresholds)",
        6,
        lambda k, e: (
            _chat(e) and e.get("litellm_provider") == "xai" and any(TIER.search(f) for f in e)
        ),
    ),
    (
        "other _above_ tiers",
        30,
        lambda k, e: (
            _chat(e) and e.get("litellm_provider") != "xai" and any(TIER.search(f) for f in e)
        ),
    ),
    (
        "tier with its own cache write",
        4,
        lambda k, e: (
            _chat(e)
            and any(
                f.startswith("cache_creation_input_token_cost_above_")
                and f.endswith("k_tokens")
                and "hr" not in f
                for f in e
            )
        ),
    ),
    (
        "several tiers",
        4,
        lambda k, e: _chat(e) and len({TIER.search(f).group(0) for f in e if TIER.search(f)}) >= 2,
    ),
    ("tiered_pricing ranges", 6, lambda k, e: _chat(e) and "tiered_pricing" in e),
    (
        "cache read and write prices",
        12,
        lambda k, e: (
            _chat(e)
            and "cache_creation_input_token_cost" in e
            and "cache_read_input_token_cost" in e
        ),
    ),
    (
        "fireworks without a cache price",
        5,
        lambda k, e: (
            _chat(e)
            and e.get("litellm_provider") == "fireworks_ai"
            and "cache_read_input_token_cost" not in e
        ),
    ),
    ("per-image input price", 6, lambda k, e: _chat(e) and "input_cost_per_image" in e),
    ("deprecation dates", 12, lambda k, e: _chat(e) and "deprecation_date" in e),
    ("supported_regions", 3, lambda k, e: _chat(e) and "supported_regions" in e),
    (
        "not natively streaming",
        4,
        lambda k, e: _chat(e) and e.get("supports_native_streaming") is False,
    ),
    ("off-peak prices", 2, lambda k, e: _chat(e) and "off_peak_pricing" in e),
    ("batch/priority/flex prices", 6, lambda k, e: _chat(e) and "input_cost_per_token_flex" in e),
    ("responses mode", 6, lambda k, e: e.get("mode") == "responses"),
    ("free models", 3, lambda k, e: _chat(e) and e.get("input_cost_per_token") == 0),
]
# fmt: on
# the major providers' models, the most of the excerpt
# fmt: off
PROVIDERS = {
    "anthropic": 14, "openai": 24, "gemini": 14, "vertex_ai-language-models": 6,
    "vertex_ai-anthropic_models": 6, "bedrock": 8, "bedrock_converse": 8, "azure": 10,
    "mistral": 8, "groq": 6, "deepseek": 16, "xai": 6, "together_ai": 6, "fireworks_ai": 6,
    "dashscope": 4, "cohere_chat": 3, "perplexity": 4, "ollama": 3, "github_copilot": 3,
    "openrouter": 4, "cerebras": 3, "ai21": 2, "amazon_nova": 2, "anyscale": 2,
}
# fmt: on


def excerpt(table: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(k for k, v in table.items() if isinstance(v, dict))
    chosen: set[str] = set()

    def take(n: int, rule: Callable[[str, Entry], bool]) -> None:
        found = [k for k in keys if k not in chosen and rule(k, table[k])]
        chosen.update(found[:n])

    modes = sorted({str(table[k].get("mode")) for k in keys} - set(CHAT))
    for mode in modes:
        take(2, lambda k, e, mode=mode: str(e.get("mode")) == mode)
    for _, n, rule in RULES[1:]:
        take(n, rule)
    for provider, n in PROVIDERS.items():
        take(n, lambda k, e, p=provider: _chat(e) and e.get("litellm_provider") == p)
    # alias rows (`alias_of`), with the entries they name
    for k in [k for k in keys if "alias_of" in table[k]][:6]:
        chosen.update((k, table[k]["alias_of"]))
    # both keys of a duplicate pair (`<provider>/<id>` and `<id>`)
    for k in keys:
        e = table[k]
        p = e.get("litellm_provider")
        if _chat(e) and isinstance(p, str) and not k.startswith(f"{p}/") and f"{p}/{k}" in table:
            chosen.update((k, f"{p}/{k}"))
    return {k: table[k] for k in sorted(chosen)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", help="a LiteLLM price table (default: installed)")
    parser.add_argument("--output", default=str(Path(__file__).with_name("litellm_excerpt.json")))
    args = parser.parse_args()
    source = read_table(args.table) if args.table else bundled_table()
    chosen = excerpt(source.data)
    lines = ",\n".join(
        f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in chosen.items()
    )
    Path(args.output).write_text("{\n" + lines + "\n}\n", encoding="utf-8")
    print(f"{len(chosen)} of {len(source.data)} entries ({source.source}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
