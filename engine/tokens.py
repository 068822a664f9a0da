"""How many tokens a text is, estimated fast and without a tokenizer.

`estimate_text_tokens(text)` approximates what OpenAI's `o200k_base` encoding (gpt-4o,
gpt-4.1, gpt-5, o-series) counts: 8.4% off per prompt on average over English prose, code
in seven languages and prose in twenty-one others, where the four-characters-a-token rule is
27.6% off (and 50-60% for Chinese, Japanese or Korean). Figures per language, and how to
measure them again: `bench/README.md`, "`token_accuracy.py`".

How, in C-level passes only (no Python loop over characters, no regular expression, linear
in the length): the text's UTF-8 bytes go through one `bytes.translate` that deletes
continuation bytes and maps each lead byte to a class character, so a character's class is
the block its UTF-8 lead byte names: ASCII lower/upper letter, digit, space, newline, other
whitespace, punctuation; beyond ASCII, Latin-1, Latin Extended, combining marks, Greek,
Cyrillic, Armenian/Hebrew, Arabic, U+0800-0FFF (Indic scripts, Thai), U+1xxx (Vietnamese,
Georgian, ...), U+2xxx symbols and punctuation, CJK punctuation and kana, the CJK ideographs
in three parts, Hangul, fullwidth forms, and four-byte characters (emoji). A second
translate turns the class string into a bit string (letter, digit, punctuation, whitespace,
newline, capital), which read as one integer gives the runs with shifts, `&` and
`int.bit_count()`: words, numbers, punctuation runs, whitespace runs, letters deep in long
words, punctuation deep in long runs. `bytes.count` gives the characters of each class and
two scripts' marks (Thai; the letters only Ukrainian has). The estimate is `WEIGHTS ·
features(text)`, rounded, at least 1 for a non-empty text. Pure ASCII skips the first
translate and every per-script count.

The weights were fitted (`bench/token_fit.py`) by iteratively reweighted least squares
minimising the mean absolute percentage error against `litellm.token_counter(model=
"gpt-4o")` on a training corpus drawn like `bench/token_corpus.jsonl` but with another seed
and without the handwritten prompts, plus synthetic emoji prompts; the checked-in corpus is
held out and only measures. The fit keeps every weight but the constant non-negative, and
every feature only grows when text is appended, so appending text never lowers the
estimate.

Standard library only: the router calls this on every request.
"""

from __future__ import annotations

from operator import mul
from typing import Final

# ------------------------------------------------------------------ character classes

# the class byte of each UTF-8 byte (a lead byte stands for its whole character)
_ASCII_CLASSES: Final = {
    **{c: "a" for c in "abcdefghijklmnopqrstuvwxyz"},
    **{c: "A" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    **{c: "0" for c in "0123456789"},
    " ": " ",
    "\n": "\n",
    "\r": "\n",
    "\t": "\t",
    "\x0b": "\t",
    "\x0c": "\t",
}
# (first lead byte, last lead byte, class)
_LEAD_CLASSES: Final = (
    (0xC0, 0xC3, "L"),  # Latin-1 supplement: é à ñ ü ç, « » ©
    (0xC4, 0xCB, "l"),  # Latin Extended A/B, IPA: ł ą ğ ı ơ ư
    (0xCC, 0xCD, "M"),  # combining diacritical marks
    (0xCE, 0xCF, "G"),  # Greek
    (0xD0, 0xD4, "C"),  # Cyrillic
    (0xD5, 0xD7, "H"),  # Armenian, Hebrew
    (0xD8, 0xDF, "R"),  # Arabic, Syriac, Thaana
    (0xE0, 0xE0, "I"),  # U+0800-0FFF: Devanagari, Bengali, Tamil, ..., Thai, Lao, Tibetan
    (0xE1, 0xE1, "V"),  # U+1000-1FFF: Myanmar, Georgian, Hangul Jamo, Vietnamese, Greek ext.
    (0xE2, 0xE2, "P"),  # U+2000-2FFF: punctuation — “ ” …, symbols, arrows, ☀ ✅
    (0xE3, 0xE3, "K"),  # U+3000-3FFF: CJK punctuation 。「」, hiragana, katakana
    (0xE4, 0xE5, "Z"),  # U+4000-5FFF: CJK ideographs (first third)
    (0xE6, 0xE7, "z"),  # U+6000-7FFF: CJK ideographs
    (0xE8, 0xE9, "Y"),  # U+8000-9FFF: CJK ideographs
    (0xEA, 0xED, "B"),  # U+A000-DFFF: Hangul syllables
    (0xEE, 0xEF, "F"),  # U+E000-FFFF: private use, fullwidth forms ，！, variation selectors
    (0xF0, 0xFF, "E"),  # four-byte characters: emoji, rare ideographs
)
_LETTER_CLASSES: Final = "aALlMGCHRIVKZzYB"


def _class_table() -> bytes:
    """UTF-8 byte -> class character (ASCII letters, digits, whitespace keep their own)."""
    table = bytearray(b"." * 256)  # ASCII punctuation and control characters
    for char, cls in _ASCII_CLASSES.items():
        table[ord(char)] = ord(cls)
    for first, last, cls in _LEAD_CLASSES:
        table[first : last + 1] = cls.encode() * (last - first + 1)
    return bytes(table)


# the bits of a character's byte in the bit string: which kinds of character it is
_LETTER, _DIGIT, _PUNCT, _SPACE, _NEWLINE, _UPPER = (1 << k for k in range(6))


def _bits_table(classes: bytes) -> bytes:
    """UTF-8 byte (or class character) -> its bits."""
    table = bytearray(256)
    for byte in range(256):
        cls = chr(classes[byte])
        if cls in _LETTER_CLASSES:
            bits = _LETTER | (_UPPER if cls == "A" else 0)
        elif cls == "0":
            bits = _DIGIT
        elif cls in " \n\t":
            bits = _SPACE | (_NEWLINE if cls == "\n" else 0)
        else:
            bits = _PUNCT
        table[byte] = bits
    return bytes(table)


_CLASSES: Final = _class_table()
_CONTINUATION: Final = bytes(range(0x80, 0xC0))
_ASCII_BITS: Final = _bits_table(_CLASSES)  # for ASCII text, straight from its bytes
_CLASS_BITS: Final = _bits_table(bytes(range(256)))  # for a class string
_SCRIPT_CLASSES: Final = b"LlGCHRIPKZzYBFE"

# A bit string (one byte per character) read as one little-endian integer: byte i is bits
# 8i..8i+7, `x << 8` puts each character's bits on the next character, and `&` with a mask
# holding one bit in every byte then `int.bit_count()` counts the characters that have it.
# Masks are built for _CHUNK bytes; longer texts are read in chunks of that size.
_CHUNK: Final = 1 << 16


def _mask(bit: int) -> int:
    return int.from_bytes(bytes((bit,)) * _CHUNK, "little")


_M_LETTER, _M_DIGIT, _M_PUNCT, _M_SPACE, _M_NEWLINE, _M_UPPER = (
    _mask(bit) for bit in (_LETTER, _DIGIT, _PUNCT, _SPACE, _NEWLINE, _UPPER)
)


# ------------------------------------------------------------------ features and weights

ASCII_FEATURES: Final = (
    "one",  # the constant
    "chars",  # characters
    "newlines",
    "punctuation",  # punctuation and symbols among the first five of their run
    "punct_tail",  # punctuation and symbols past the fifth of their run (------ ######)
    "digits",
    "upper",  # ASCII capitals
    "words",  # runs of letters (any script)
    "numbers",  # runs of digits
    "punct_runs",  # runs of punctuation/symbols
    "space_runs",  # a whitespace run of k characters (newlines, tabs too) counts min(k-1, 2)
    "long_words",  # letters past the fifth of a run of letters
)
SCRIPT_FEATURES: Final = (
    # characters of each non-ASCII class but M (combining marks) and V (U+1xxx), which add
    # nothing measurable beyond `chars` and `words`
    *(f"class_{cls}" for cls in _SCRIPT_CLASSES.decode()),
    "thai",  # (also in class_I)
    "ukrainian",  # і ї є (also in class_C)
)
FEATURES: Final = (*ASCII_FEATURES, *SCRIPT_FEATURES)

# fitted by bench/token_fit.py (see the module docstring); one weight per FEATURES entry
# 1780 training prompts, training MAPE 8.07%
WEIGHTS: Final[tuple[float, ...]] = (
    0.0844,  # one
    0.0132,  # chars
    0.6268,  # newlines
    0.3953,  # punctuation
    0.0000,  # punct_tail
    0.2929,  # digits
    0.0788,  # upper
    0.8830,  # words
    0.9116,  # numbers
    0.1970,  # punct_runs
    0.3499,  # space_runs
    0.1950,  # long_words
    0.4973,  # class_L
    1.5289,  # class_l
    0.2079,  # class_G
    0.0887,  # class_C
    0.3180,  # class_H
    0.1669,  # class_R
    0.1969,  # class_I
    0.6177,  # class_P
    0.5034,  # class_K
    0.2867,  # class_Z
    0.7244,  # class_z
    1.2459,  # class_Y
    0.4482,  # class_B
    0.8859,  # class_F
    1.9114,  # class_E
    0.0739,  # thai
    1.2833,  # ukrainian
)

_ASCII_WEIGHTS: Final = WEIGHTS[: len(ASCII_FEATURES)]
(
    _W_ONE,
    _W_CHARS,
    _W_NEWLINES,
    _W_PUNCT,
    _W_PUNCT_TAIL,
    _W_DIGITS,
    _W_UPPER,
    _W_WORDS,
    _W_NUMBERS,
    _W_PUNCT_RUNS,
    _W_SPACE_RUNS,
    _W_LONG_WORDS,
) = _ASCII_WEIGHTS  # (named for the inline ASCII estimate; ASCII_FEATURES' order)
_NO_SCRIPT: Final = (0,) * len(SCRIPT_FEATURES)

# OpenAI's chat accounting, as litellm.token_counter(messages=...) and OpenAI's cookbook do
# it: each message costs 3 tokens of framing plus its role (`system`, `user`, `assistant`,
# `tool` are one token each), a `name` 1 more than the name's own text, and every request
# 3 for the reply's priming (<|start|>assistant<|message|>)
TOKENS_PER_MESSAGE: Final = 4  # framing 3 + role 1
TOKENS_PER_NAME: Final = 1
TOKENS_REPLY_PRIMING: Final = 3


def estimate_message_overhead(messages: int, names: int = 0) -> int:
    """The tokens a chat request adds beyond its texts (and its names' texts): `messages`
    messages, `names` of which carry a `name`, and the reply priming. No message, 0."""
    if messages <= 0:
        return 0
    return messages * TOKENS_PER_MESSAGE + names * TOKENS_PER_NAME + TOKENS_REPLY_PRIMING


def _ascii_features(bits: bytes) -> tuple[int, ...]:
    """ASCII_FEATURES of a bit string (see _bits_table)."""
    if len(bits) > _CHUNK:
        parts = [_ascii_features(bits[i : i + _CHUNK]) for i in range(0, len(bits), _CHUNK)]
        return (1, *(sum(values) for values in list(zip(*parts, strict=True))[1:]))
    x = int.from_bytes(bits, "little")
    before = x << 8  # each character's bits on the character after it
    starts = x & ~before  # the bits a character has and the one before it has not
    two = x & before  # the bits a character shares with the one before it
    four = two & (two << 16)  # ... with each of the three before it
    six = four & (four << 16)  # ... with each of the five before it
    punct = (x & _M_PUNCT).bit_count()
    punct_deep = (six & _M_PUNCT).bit_count()
    return (
        1,
        len(bits),
        (x & _M_NEWLINE).bit_count(),
        punct - punct_deep,
        punct_deep,
        (x & _M_DIGIT).bit_count(),
        (x & _M_UPPER).bit_count(),
        (starts & _M_LETTER).bit_count(),
        (starts & _M_DIGIT).bit_count(),
        (starts & _M_PUNCT).bit_count(),
        (two & _M_SPACE).bit_count() - (four & _M_SPACE).bit_count(),
        (six & _M_LETTER).bit_count(),
    )


def features(text: str) -> tuple[int, ...]:
    """The FEATURES of `text`, in order (what the weights multiply)."""
    if text.isascii():
        return (*_ascii_features(text.encode().translate(_ASCII_BITS)), *_NO_SCRIPT)
    raw = text.encode("utf-8", "surrogatepass")
    c = raw.translate(_CLASSES, _CONTINUATION)
    return (
        *_ascii_features(c.translate(_CLASS_BITS)),
        *(c.count(cls) for cls in _SCRIPT_CLASSES),
        raw.count(b"\xe0\xb8") + raw.count(b"\xe0\xb9"),
        raw.count(b"\xd1\x96") + raw.count(b"\xd1\x97") + raw.count(b"\xd1\x94"),
    )


def estimate_text_tokens(text: str) -> int:
    """About as many tokens as `o200k_base` counts in `text` (0 for an empty text)."""
    if not text:
        return 0
    if not text.isascii():
        return max(1, int(sum(map(mul, WEIGHTS, features(text))) + 0.5))
    if len(text) > _CHUNK:
        bits = text.encode().translate(_ASCII_BITS)
        return max(1, int(sum(map(mul, _ASCII_WEIGHTS, _ascii_features(bits))) + 0.5))
    # (the usual case, inline: `_ascii_features` dotted with the weights, term by term in
    # the order `sum` adds them, without the features' tuple; a test holds the two equal)
    bits = text.encode().translate(_ASCII_BITS)
    # (big-endian, the default: a character's byte sits above the next one's, so `x >> 8`
    # puts each character's bits on the character after it, as `x << 8` does little-endian)
    x = int.from_bytes(bits)
    two = x & (x >> 8)
    starts = x ^ two  # (x & ~(x >> 8): the bits a character has and the one before it has not)
    four = two & (two >> 16)
    six = four & (four >> 16)
    # (an ASCII character's bit byte is one value per class, so a class's characters are
    # those with its bit: one `&` and `bit_count`, cheaper than a `bytes.count` call; `six`
    # is within `four`, within `two`, within `x`, so `a ^ b` is the bits of `a` not in `b`:
    # the shallow punctuation and the space runs' count are one `bit_count` each)
    total = (
        _W_ONE  # (`sum` starts at 0: 0 + w is w)
        + _W_CHARS * len(text)
        + _W_NEWLINES * (x & _M_NEWLINE).bit_count()
        + _W_PUNCT * ((x ^ six) & _M_PUNCT).bit_count()
        # (punct_tail's weight is 0.0: its term adds 0.0 and is left out; the test holding
        # this sum to the weighted features fails if a fit gives it a weight)
        + _W_DIGITS * (x & _M_DIGIT).bit_count()
        + _W_UPPER * (x & _M_UPPER).bit_count()
        + _W_WORDS * (starts & _M_LETTER).bit_count()
        + _W_NUMBERS * (starts & _M_DIGIT).bit_count()
        + _W_PUNCT_RUNS * (starts & _M_PUNCT).bit_count()
        + _W_SPACE_RUNS * ((two ^ four) & _M_SPACE).bit_count()
        + _W_LONG_WORDS * (six & _M_LETTER).bit_count()
    )
    count = int(total + 0.5)
    return count if count > 1 else 1  # (max(1, count) without the call)
