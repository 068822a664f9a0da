"""`engine.yaml_positions`: the line and column of every key, item and value by key path."""

from __future__ import annotations

import pytest

from engine.yaml_positions import Place, YamlSyntaxError, load_positioned

TEXT = """\
tests:
  - name: first
    expect: {route: vision, model: [a, b]}
  - name: second
"""


def test_keys_items_and_values_have_their_places() -> None:
    data, positions = load_positioned(TEXT, "t.yaml")
    assert data["tests"][1] == {"name": "second"}
    assert positions.at["tests"] == (1, 1)
    assert positions.at["tests[0]"] == (2, 5)
    assert positions.at["tests[1].name"] == (4, 5)
    assert positions.key("tests[0].expect.route") == Place(3, 14, 3, 19)
    assert positions.value("tests[0].expect.route") == Place(3, 21, 3, 27)
    assert positions.value("tests[0].expect.model[1]") == Place(3, 40, 3, 41)
    assert positions.key("tests[0].nothing") is None
    assert positions.duplicates == []


def test_a_repeated_key_is_listed_once_per_repeat() -> None:
    _, positions = load_positioned("a: 1\nb: {c: 1, c: 2}\na: 3\n", "t.yaml")
    assert positions.duplicates == [("b.c", Place(2, 11, 2, 12)), ("a", Place(3, 1, 3, 2))]


def test_an_alias_is_walked_once() -> None:
    # each level doubles what a naive walk would visit: 2**40 paths
    lines = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 41)]
    data, positions = load_positioned("\n".join(lines) + "\n", "t.yaml")
    assert len(data) == 41
    assert len(positions.at) < 200


@pytest.mark.parametrize("fast", [False, True])
def test_a_syntax_error_has_its_place(fast: bool) -> None:
    with pytest.raises(YamlSyntaxError) as err:
        load_positioned('a: "open\nb: 1\n', "t.yaml", fast=fast)
    assert str(err.value).startswith("t.yaml:3:1: invalid YAML: ")
    assert (err.value.line, err.value.col) == (3, 1)


def test_an_empty_document_is_none() -> None:
    assert load_positioned("", "t.yaml")[0] is None
