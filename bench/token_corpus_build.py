"""Rebuild `bench/token_corpus.jsonl` from text already on this machine (no network).

    python bench/token_corpus_build.py            # writes bench/token_corpus.jsonl

Where each kind of prompt comes from (and the licences) is in `bench/token_corpus.md`. The
draw is seeded and the files are read in sorted order, so on the same machine image the
output is the same; on another machine the files differ and so does the corpus, which is why
the corpus itself is checked in and this script is only its provenance.
"""

from __future__ import annotations

import argparse
import gettext
import json
import math
import random
import re
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCALE = Path("/usr/share/locale")
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
SITE = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    / "site-packages"
)

# corpus language -> gettext locale directory, and a pattern every kept translation must match
# (so an untranslated msgstr, a copy of the English msgid, is left out)
LANGUAGES: dict[str, tuple[str, str]] = {
    "zh": ("zh_CN", r"[\u4e00-\u9fff]"),
    "zh-TW": ("zh_TW", r"[\u4e00-\u9fff]"),
    "ja": ("ja", r"[\u3040-\u30ff]"),
    "ko": ("ko", r"[\uac00-\ud7a3]"),
    "ru": ("ru", r"[\u0400-\u04ff]"),
    "uk": ("uk", r"[\u0400-\u04ff]"),
    "ar": ("ar", r"[\u0600-\u06ff]"),
    "fa": ("fa", r"[\u0600-\u06ff]"),
    "he": ("he", r"[\u0590-\u05ff]"),
    "hi": ("hi", r"[\u0900-\u097f]"),
    "bn": ("bn", r"[\u0980-\u09ff]"),
    "th": ("th", r"[\u0e00-\u0e7f]"),
    "el": ("el", r"[\u0370-\u03ff]"),
    "es": ("es", r"[áéíóúñ]"),
    "fr": ("fr", r"[éèàçê]"),
    "de": ("de", r"[äöüß]"),
    "pt": ("pt_BR", r"[ãõçáé]"),
    "it": ("it", r"[àèéìòù]"),
    "pl": ("pl", r"[ąćęłńóśźż]"),
    "vi": ("vi", r"[\u1ea0-\u1ef9]"),
    "tr": ("tr", r"[ğışçöü]"),
}

CODE_SOURCES: dict[str, list[Path]] = {
    "python": sorted(STDLIB.glob("*.py")),
    "javascript": sorted(
        p
        for p in (SITE / "matplotlib").rglob("*.js")
        if not p.name.endswith(".min.js") and p.stat().st_size > 2000
    ),
    "json": sorted(
        p
        for p in list((SITE / "jsonschema_specifications").rglob("*.json"))
        + list((SITE / "litellm").glob("*.json"))
        if p.stat().st_size > 1500
    ),
    "sql": sorted(Path("/usr/share/postgresql").rglob("*.sql")),
    "c": sorted(p for p in Path("/usr/include").glob("*.h") if p.stat().st_size > 3000),
    "go": sorted(Path("/usr/share/doc/git/contrib").rglob("*.go")),
}


def _is_shell(path: Path) -> bool:
    try:
        head = path.read_bytes()[:64]
    except OSError:
        return False
    return head.startswith(b"#!") and (b"sh" in head.split(b"\n")[0])


CODE_SOURCES["shell"] = sorted(  # after the others, as in the seeded draw
    p
    for p in Path("/usr/bin").iterdir()
    if p.is_file() and p.stat().st_size > 1500 and _is_shell(p)
)


def target_lengths(rng: random.Random, count: int) -> Iterator[int]:
    """Log-uniform lengths between 10 and 4000 characters."""
    for _ in range(count):
        yield int(math.exp(rng.uniform(math.log(10), math.log(4000))))


def catalog_messages(locale: str, must: str) -> list[str]:
    """Every translated message of the gettext catalogs of `locale`, de-duplicated."""
    keep = re.compile(must, re.IGNORECASE)
    seen: dict[str, None] = {}
    for mo in sorted((LOCALE / locale / "LC_MESSAGES").glob("*.mo")):
        try:
            with mo.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except Exception:
            continue
        for key, value in catalog.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                continue
            value = value.strip()
            if len(value) >= 4 and keep.search(value) and value != key:
                seen[value] = None
    return list(seen)


def english_messages() -> list[str]:
    """The English source strings (msgids) of the German catalogs."""
    seen: dict[str, None] = {}
    for mo in sorted((LOCALE / "de" / "LC_MESSAGES").glob("*.mo")):
        try:
            with mo.open("rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except Exception:
            continue
        for key in catalog:
            if isinstance(key, str) and len(key.strip()) >= 4:
                seen[key.strip()] = None
    return list(seen)


def english_prose() -> list[str]:
    """Paragraphs of the long descriptions (README text) in installed packages' METADATA."""
    paragraphs: list[str] = []
    for meta in sorted(SITE.glob("*.dist-info/METADATA")):
        text = meta.read_text(encoding="utf-8", errors="replace")
        _, _, body = text.partition("\n\n")
        for para in re.split(r"\n\s*\n", body):
            para = para.strip()
            if len(para) > 60 and not para.startswith(("```", "|", "<", "[![", "..")):
                paragraphs.append(para)
    return paragraphs


def assemble(rng: random.Random, pool: list[str], length: int, joiner: str) -> str:
    """Messages drawn from `pool` and joined until the text reaches about `length` characters;
    a single message longer than a short target is cut at a space or after `length` chars."""
    parts: list[str] = []
    size = 0
    while size < length:
        piece = rng.choice(pool)
        if not parts and len(piece) > length * 1.5:
            cut = piece.rfind(" ", 0, length)
            piece = piece[: cut if cut > length // 2 else length]
        parts.append(piece)
        size += len(piece) + len(joiner)
    return _cap(joiner.join(parts), length)


def _cap(text: str, length: int) -> str:
    """`text` cut to at most 1.25 x `length` + 40 characters (a long last piece or line)."""
    limit = int(length * 1.25) + 40
    return text if len(text) <= limit else text[:limit]


def code_excerpt(rng: random.Random, files: list[Path], length: int) -> str:
    """Whole lines from a random place in a random file, about `length` characters."""
    for _ in range(50):
        path = rng.choice(files)
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (UnicodeDecodeError, OSError):
            continue
        if len(lines) < 3:
            continue
        start = rng.randrange(len(lines))
        out: list[str] = []
        size = 0
        for line in lines[start:]:
            if size + len(line) > length and out:
                break
            out.append(line)
            size += len(line)
        text = _cap("".join(out), length).rstrip("\n")
        if len(text.strip()) >= 10:
            return text
    raise RuntimeError(f"no usable file among {len(files)}")


def build(seed: int, per_language: int, handwritten_rows: bool) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []

    english_pool = english_messages()
    prose = english_prose()
    for length in target_lengths(rng, per_language):
        rows.append(
            {"lang": "en", "kind": "prose", "text": assemble(rng, english_pool, length, " ")}
        )
    for length in target_lengths(rng, per_language):
        rows.append({"lang": "en", "kind": "prose", "text": assemble(rng, prose, length, "\n\n")})

    for lang, (locale, must) in LANGUAGES.items():
        pool = catalog_messages(locale, must)
        if len(pool) < 50:
            raise RuntimeError(f"{locale}: only {len(pool)} messages")
        for i, length in enumerate(target_lengths(rng, per_language)):
            joiner = "\n" if i % 3 == 0 else " "
            rows.append(
                {"lang": lang, "kind": "prose", "text": assemble(rng, pool, length, joiner)}
            )

    for lang, files in CODE_SOURCES.items():
        if not files:
            raise RuntimeError(f"no {lang} files found")
        for length in target_lengths(rng, per_language * 2 // 3):
            rows.append({"lang": lang, "kind": "code", "text": code_excerpt(rng, files, length)})

    if handwritten_rows:
        rows.extend(handwritten())
    return rows


def handwritten() -> list[dict[str, str]]:
    path = HERE / "token_corpus_handwritten.jsonl"
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--per-language", type=int, default=24, help="prompts per natural language")
    parser.add_argument(
        "--no-handwritten", action="store_true", help="leave out token_corpus_handwritten.jsonl"
    )
    parser.add_argument("--output", type=Path, default=HERE / "token_corpus.jsonl")
    args = parser.parse_args()
    rows = build(args.seed, args.per_language, not args.no_handwritten)
    with args.output.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} prompts -> {args.output}")


if __name__ == "__main__":
    main()
