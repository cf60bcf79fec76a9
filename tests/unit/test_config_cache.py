"""Parsed configs are kept by row id for as long as the row, and answer only for the text
they were parsed from."""

from __future__ import annotations

from crictl.reconciler.configs import ConfigCache


def cache(limit: int = 100) -> tuple[ConfigCache[list[str]], list[str]]:
    parsed: list[str] = []

    def parse(text: str) -> list[str]:
        parsed.append(text)
        return [text]

    return ConfigCache(parse, limit), parsed


def test_one_parse_per_row_and_text() -> None:
    c, parsed = cache()
    first = c.get("a", '{"x": 1}')
    assert c.get("a", '{"x": 1}') is first
    assert c.get("b", '{"x": 1}') == first  # another row, parsed for itself
    assert parsed == ['{"x": 1}', '{"x": 1}']


def test_a_changed_config_is_parsed_again() -> None:
    # UpdateContainerResources writes the new resources into the row's config
    c, parsed = cache()
    c.get("a", '{"cpu": 1}')
    assert c.get("a", '{"cpu": 2}') == ['{"cpu": 2}']
    assert c.get("a", '{"cpu": 2}') == ['{"cpu": 2}']
    assert parsed == ['{"cpu": 1}', '{"cpu": 2}']
    assert len(c) == 1


def test_a_removed_row_is_forgotten() -> None:
    c, parsed = cache()
    c.get("a", "{}")
    c.forget("a")
    c.forget("never-there")
    assert "a" not in c and len(c) == 0
    c.get("a", "{}")
    assert parsed == ["{}", "{}"]


def test_a_missed_removal_cannot_grow_it_past_its_limit() -> None:
    c, _ = cache(limit=3)
    for rid in "abcdefg":
        c.get(rid, "{}")
        assert len(c) <= 3
    assert "g" in c
