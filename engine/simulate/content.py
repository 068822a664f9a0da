"""Prompt content for traffic templates: generated conversations with the features they claim.

A template's `content` (ContentSpec) says what its prompts are like — code, math,
multi-step wording, a system prompt asking for reasoning or JSON, a tool's result, the
script of the last turn, the number of turns and the last turn's length — and
`bodies(spec, key)` writes `VARIANTS` native `messages` lists that have exactly those
features, seeded (the same key gives the same text), from the word banks below: no
download, no model. Each body is checked against the engine's own feature derivation
(`engine.wire.features`) before it is used: a body that does not have what it claims is
never sent (`ContentError`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.errors import PolicyctlError
from engine.tokens import estimate_text_tokens
from engine.wire import NATIVE
from engine.wire.features import Conversation

VARIANTS = 16  # bodies per template; each arrival of the template takes one, drawn
MAX_CONTENT_TOKENS = 100_000
MAX_CONTENT_TURNS = 50
SCRIPTS = ("latin", "cyrillic", "cjk")
FLAGS = ("code", "math", "multi_step", "system_reasoning", "system_json", "tool_results")
Message = dict[str, str]
Body = tuple[Message, ...]


class ContentError(PolicyctlError, ValueError):
    """No body with the claimed features could be written (a claim the word banks cannot
    meet, such as CJK prose that must outweigh a long code block in a few tokens)."""


class ContentSpec(BaseModel):
    """What a template's prompts are like (every feature not claimed is absent)."""

    model_config = ConfigDict(extra="forbid")
    tokens: Annotated[int, Field(ge=1, le=MAX_CONTENT_TOKENS, strict=True)] = 30
    turns: Annotated[int, Field(ge=1, le=MAX_CONTENT_TURNS, strict=True)] = 1
    script: Literal["latin", "cyrillic", "cjk"] = "latin"
    code: Annotated[bool, Field(strict=True)] = False
    math: Annotated[bool, Field(strict=True)] = False
    multi_step: Annotated[bool, Field(strict=True)] = False
    system: Literal["none", "reasoning", "json"] = "none"
    tool_results: Annotated[bool, Field(strict=True)] = False

    @model_validator(mode="after")
    def _tool_turn(self) -> ContentSpec:
        if self.tool_results and self.turns < 2:
            raise ValueError("`tool_results` needs `turns` of 2 or more (the tool's result is one)")
        return self

    def claims(self) -> dict[str, Any]:
        """The prompt features (`request.text.NAME`) every body has, by name."""
        return {
            "turns": self.turns,
            "script": self.script,
            "code": self.code,
            "math": self.math,
            "multi_step": self.multi_step,
            "system_reasoning": self.system == "reasoning",
            "system_json": self.system == "json",
            "tool_results": self.tool_results,
        }


# ---------------------------------------------------------------- word banks
# Neutral sentences: no code line, no math, no multi-step or reasoning wording, no `json`.

_FILLER: Mapping[str, tuple[str, ...]] = {
    "latin": (
        "The museum opens at nine on weekdays and at ten on Sundays.",
        "My sister moved to a small town near the coast last spring.",
        "We had soup, fresh bread and a green salad for lunch.",
        "The train to the city leaves every half hour from platform two.",
        "Our garden has roses, tulips and a young apple tree.",
        "The library lends books, films and board games for three weeks.",
        "It rained all morning, but the afternoon was bright and warm.",
        "A friend of mine plays the violin in a local orchestra.",
        "The bakery on the corner sells cakes with seasonal fruit.",
        "Most shops in the old town close early on Saturdays.",
        "The children walked to the park after school with their dog.",
        "There is a quiet beach a short drive north of the harbour.",
    ),
    "cyrillic": (
        "Музей открывается в девять утра по будним дням.",
        "Моя сестра весной переехала в маленький город у моря.",
        "На обед у нас был суп, свежий хлеб и зелёный салат.",
        "Поезд в город уходит каждые полчаса со второй платформы.",
        "В нашем саду растут розы, тюльпаны и молодая яблоня.",
        "Библиотека выдаёт книги и фильмы на три недели.",
        "Всё утро шёл дождь, но днём стало тепло и солнечно.",
        "Мой друг играет на скрипке в городском оркестре.",
        "Пекарня на углу продаёт пироги с сезонными ягодами.",
        "Дети после школы гуляли в парке со своей собакой.",
    ),
    "cjk": (
        "博物馆在工作日早上九点开门。",
        "我的姐姐去年春天搬到了海边的小镇。",
        "我们午饭吃了汤、新鲜的面包和绿色沙拉。",
        "去市中心的火车每半小时从二号站台出发。",
        "我们的花园里有玫瑰、郁金香和一棵小苹果树。",
        "图书馆的书和电影可以借三个星期。",
        "早上一直在下雨，但是下午天气晴朗又暖和。",
        "我的朋友在本地的乐团里拉小提琴。",
        "街角的面包店卖当季水果做的蛋糕。",
        "孩子们放学后带着小狗去公园散步。",
    ),
}
_QUESTIONS: Mapping[str, tuple[str, ...]] = {
    "latin": (
        "What is the capital of Portugal?",
        "Which month has the longest days in Norway?",
        "How tall is the tallest tree in the world?",
        "Who painted the ceiling of the Sistine Chapel?",
        "What is a good name for a grey cat?",
    ),
    "cyrillic": (
        "Какая столица у Португалии?",
        "Кто написал роман «Война и мир»?",
        "Как назвать серого котёнка?",
        "Сколько дней в високосном году?",
    ),
    "cjk": (
        "葡萄牙的首都是哪里？",
        "世界上最高的树有多高？",
        "灰色的小猫叫什么名字好？",
        "闰年有多少天？",
    ),
}
_CODE = (
    "```python\ndef total(items):\n    return sum(item.price for item in items)\n```",
    "```js\nconst names = users.map((u) => u.name);\nconsole.log(names.length);\n```",
    "```sql\nSELECT name, city FROM customers WHERE city = 'Lisbon';\n```",
    "```go\nfunc add(a int, b int) int {\n    return a + b\n}\n```",
)
_CODE_ASK: Mapping[str, tuple[str, ...]] = {
    "latin": ("What does this code return for an empty list?", "Is this code correct?"),
    "cyrillic": ("Что вернёт этот код для пустого списка?", "Этот код правильный?"),
    "cjk": ("这段代码对空列表返回什么？", "这段代码正确吗？"),
}
_MATH: Mapping[str, str] = {  # an equation: `3x + 2 = 11`
    "latin": "Solve {a}x + {b} = {c} for x.",
    "cyrillic": "Найди x: {a}x + {b} = {c}.",
    "cjk": "求 x 的值： {a}x + {b} = {c} 。",
}
_MULTI: Mapping[str, tuple[str, ...]] = {
    "latin": (
        "Compare and contrast the two options, and walk me through the trade-offs.",
        "Prove that the sum of two even numbers is always even.",
        "Design a weekly schedule for the team, and justify each choice.",
    ),
    "cyrillic": (
        "Нужно доказать, что сумма двух чётных чисел всегда чётна.",
        "Предложи алгоритм, который сортирует список книг по автору.",
    ),
    "cjk": ("请证明两个偶数的和总是偶数。", "请设计一个团队的每周安排。"),
}
_SYSTEM: Mapping[str, str] = {
    "reasoning": "You are a careful assistant. Think step by step before you answer.",
    "json": "You are an assistant. Answer in JSON with the keys answer and source.",
}
_TOOL = '{"temperature": 21, "unit": "C", "city": "Lisbon"}'
_REPLY: Mapping[str, str] = {
    "latin": "Sure, here is what I found.",
    "cyrillic": "Конечно, вот что я нашёл.",
    "cjk": "好的，这是我找到的内容。",
}
_JOIN = {"latin": " ", "cyrillic": " ", "cjk": ""}


def _last_turn(spec: ContentSpec, rng: random.Random, extra: int) -> str:
    """The last (user) turn: the claimed snippets, then neutral sentences until it has at
    least `spec.tokens` tokens (and `extra` sentences more)."""
    script = spec.script
    parts: list[str] = []
    if spec.multi_step:
        parts.append(rng.choice(_MULTI[script]))
    if spec.math:
        a, b = rng.randint(2, 9), rng.randint(1, 20)
        parts.append(_MATH[script].format(a=a, b=b, c=a * rng.randint(2, 12) + b))
    if spec.code:
        parts.append(rng.choice(_CODE_ASK[script]))
    if not parts:
        parts.append(rng.choice(_QUESTIONS[script]))
    join = _JOIN[script]
    prose = join.join(parts)
    filler = _FILLER[script]
    while True:
        text = prose if not spec.code else f"{prose}\n\n{rng.choice(_CODE)}"
        if estimate_text_tokens(text) >= spec.tokens and extra <= 0:
            return text
        if estimate_text_tokens(text) >= spec.tokens:
            extra -= 1
        prose = join.join((rng.choice(filler), prose))


def _body(spec: ContentSpec, rng: random.Random, extra: int) -> Body:
    script = spec.script
    messages: list[Message] = []
    if spec.system != "none":
        messages.append({"role": "system", "content": _SYSTEM[spec.system]})
    earlier = spec.turns - 1  # before the last turn, which is the user's
    roles = ["assistant" if (earlier - k) % 2 else "user" for k in range(earlier)]
    if spec.tool_results:
        roles[-1] = "tool"
    for role in roles:
        if role == "tool":
            messages.append({"role": "tool", "content": _TOOL})
        elif role == "assistant":
            messages.append({"role": "assistant", "content": _REPLY[script]})
        else:
            messages.append({"role": "user", "content": rng.choice(_FILLER[script])})
    messages.append({"role": "user", "content": _last_turn(spec, rng, extra)})
    return tuple(messages)


def derived(body: Body) -> dict[str, Any]:
    """The prompt features the engine derives from a native `messages` body, by name."""
    conv = Conversation(NATIVE, {"messages": list(body)})
    names = ("tokens", "last_tokens", "turns", "script", *FLAGS)
    return {name: conv.feature(name) for name in names}


def mismatches(spec: ContentSpec, body: Body) -> list[str]:
    """The claims of `spec` that `body` does not meet (`name: claimed X, derived Y`)."""
    found = derived(body)
    out = [
        f"{name}: claimed {want!r}, derived {found[name]!r}"
        for name, want in spec.claims().items()
        if found[name] != want
    ]
    if found["last_tokens"] < spec.tokens:
        out.append(f"tokens: claimed at least {spec.tokens}, derived {found['last_tokens']}")
    return out


def bodies(spec: ContentSpec, key: str, count: int = VARIANTS) -> tuple[Body, ...]:
    """`count` bodies with the features `spec` claims; body i from a generator seeded with
    `KEY:content:i`. A body whose script comes out wrong (a code block's Latin letters
    outweigh short CJK prose) gets more prose, up to 20 sentences; ContentError when a
    claim still fails."""
    out: list[Body] = []
    for i in range(count):
        problems: list[str] = []
        for extra in range(21):
            body = _body(spec, random.Random(f"{key}:content:{i}"), extra)
            problems = mismatches(spec, body)
            if not problems or any(not p.startswith("script:") for p in problems):
                break
        if problems:
            raise ContentError("; ".join(problems))
        out.append(body)
    return tuple(out)
