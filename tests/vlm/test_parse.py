"""The answer parser: fences, truncation, malformed objects, garbage."""

from __future__ import annotations

import logging

from transferkit.vlm.parse import parse_response, strip_fences


def boxes(parsed):
    return [(list(o.bbox), o.desc) for o in parsed.objects]


def test_clean_list():
    p = parse_response('[{"bbox_2d": [1, 2, 3, 4], "desc": "red circle/small/visible"}]')
    assert boxes(p) == [([1, 2, 3, 4], "red circle/small/visible")]
    assert not p.failed and not p.repaired and p.dropped == 0


def test_code_fences_are_stripped_closed_or_open():
    body = '[{"bbox_2d": [1, 2, 3, 4], "desc": "a"}, {"bbox_2d": [5, 6, 7, 8], "desc": "b"}]'
    for text in (f"```json\n{body}\n```", f"Here you go:\n```\n{body}\n```\nDone.", f"```json\n{body}"):
        p = parse_response(text)
        assert boxes(p) == [([1, 2, 3, 4], "a"), ([5, 6, 7, 8], "b")], text
        assert not p.failed and not p.repaired
    assert strip_fences("no fence") == "no fence"


def test_truncated_list_keeps_complete_objects(caplog):
    text = '```json\n[{"bbox_2d": [1, 2, 3, 4], "desc": "a"}, {"bbox_2d": [5, 6, 7'
    with caplog.at_level(logging.WARNING, logger="transferkit.vlm.parse"):
        p = parse_response(text)
    assert boxes(p) == [([1, 2, 3, 4], "a")]
    assert p.repaired and not p.failed and p.dropped == 0
    assert "cut off" in caplog.text
    # cut right after a complete object, and inside a string
    assert boxes(parse_response('[{"bbox_2d": [1, 2, 3, 4], "desc": "a"},')) == [([1, 2, 3, 4], "a")]
    p = parse_response('[{"bbox_2d": [1, 2, 3, 4], "desc": "a"}, {"bbox_2d": [5, 6, 7, 8], "desc": "bl')
    assert boxes(p) == [([1, 2, 3, 4], "a")] and p.repaired


def test_malformed_objects_are_dropped_with_a_warning(caplog):
    text = (
        '[{"bbox_2d": [1, 2, 3, 4], "desc": "a"}, {"bbox_2d": [5, 6, 7], "desc": "three numbers"}, '
        '{bbox_2d: [1, 1, 2, 2]}, {"bbox_2d": [9, 9, 1, 1], "desc": "inverted"}, 42, '
        '{"bbox_2d": [0, 0, 9, 9], "label": "qwen zero-shot key"}]'
    )
    with caplog.at_level(logging.WARNING, logger="transferkit.vlm.parse"):
        p = parse_response(text)
    assert boxes(p) == [([1, 2, 3, 4], "a"), ([0, 0, 9, 9], "qwen zero-shot key")]
    assert p.dropped == 4 and not p.failed and not p.repaired
    assert len(p.errors) == 4
    assert "dropped" in caplog.text


def test_garbage_and_empty():
    for text in ("I see a red circle.", "", "```\n```"):
        p = parse_response(text, warn=False)
        assert p.failed and p.objects == [], text
    p = parse_response("[]")
    assert not p.failed and p.objects == [] and not p.repaired
    p = parse_response("[5, 6, 7]", warn=False)  # a list, but of no objects
    assert not p.failed and p.objects == [] and p.dropped == 3


def test_bare_object_and_text_before_the_list():
    assert boxes(parse_response('{"bbox_2d": [1, 2, 3, 4], "desc": "a"}')) == [([1, 2, 3, 4], "a")]
    p = parse_response('Objects [see below]: [{"bbox_2d": [1, 2, 3, 4], "desc": "a"}]', warn=False)
    assert boxes(p) == [([1, 2, 3, 4], "a")]
