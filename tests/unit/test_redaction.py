"""The kernel's scrubber (kernel/redaction.py), which connection helpers and the engine share."""

from __future__ import annotations

from shiftflow.kernel.redaction import MASK, MIN_SCRUBBED_LENGTH, encodings, scrubber, string_values


def test_every_form_of_a_value_is_hidden_longest_first():
    scrub = scrubber(["p@ss word/1", "p@ss word/1-and-more", "short"])
    text = 'a p@ss word/1-and-more b p%40ss%20word%2F1 c p%40ss+word%2F1 d "p@ss word/1" e short'
    assert scrub(text) == f'a {MASK} b {MASK} c {MASK} d "{MASK}" e short'
    assert len("short") < MIN_SCRUBBED_LENGTH
    assert scrub({"k p@ss word/1": ["p@ss word/1", 3, None]}) == {f"k {MASK}": [MASK, 3, None]}


def test_nothing_to_hide_is_the_identity_and_strings_are_found_at_any_depth():
    value = {"a": ["x"]}
    assert scrubber([])(value) is value
    assert sorted(string_values({"a": "1", "b": [{"c": "2"}, ("3",)], "d": 4})) == ["1", "2", "3"]
    assert "%2F" in "".join(encodings("a/b"))
