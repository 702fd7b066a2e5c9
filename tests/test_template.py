"""The template language: what parses, what it means, and the errors with their positions."""

import pytest

from promptkit.errors import TemplateError
from promptkit.text.template import SegmentKind, Template


def kinds(template: Template) -> list[tuple[str, str]]:
    out = []
    for s in template.segments():
        value = {SegmentKind.TEXT: s.text, SegmentKind.INPUT: s.name}.get(s.kind, str(s.slot))
        out.append((str(s.kind), value))
    return out


def test_anchors_inputs_soft_slots_and_mask():
    t = Template("<x> It was [P1][P2] [MASK].")
    assert kinds(t) == [
        ("input", "x"),
        ("text", " It was "),
        ("soft", "0"),
        ("soft", "1"),
        ("text", " "),
        ("mask", "-1"),
        ("text", "."),
    ]
    assert t.inputs == ("x",)
    assert t.n_slots == 2
    assert t.has_mask and t.space_before_mask


def test_same_name_shares_a_vector():
    t = Template("[P1] <x> [P2] <x2> [P1]")
    soft = [s.slot for s in t.segments() if s.kind is SegmentKind.SOFT]
    assert soft == [0, 1, 0]
    assert t.n_slots == 2
    assert t.inputs == ("x", "x2")


def test_star_slots_are_fresh_each_time():
    t = Template("[P*3] <x> [P*2][MASK]")
    soft = [s.slot for s in t.segments() if s.kind is SegmentKind.SOFT]
    assert soft == [0, 1, 2, 3, 4]
    assert not t.space_before_mask


def test_initialisation_per_slot():
    t = Template("[P1:great] [P2:@random] [P3:@vocab] [P*2:it was] [P4]")
    inits = [(s.init, s.piece) for s in t.slots]
    assert inits == [
        ("great", None),
        ("@random", None),
        ("@vocab", None),
        ("it was", 0),
        ("it was", 1),
        (None, None),
    ]


def test_init_given_once_applies_to_every_use():
    t = Template("[P1] <x> [P1:good]")
    assert t.slots[0].init == "good"


def test_escapes_are_literal():
    t = Template(r"\[Topic\] \<x\> a\\b <x>")
    assert kinds(t) == [("text", "[Topic] <x> a\\b "), ("input", "x")]


def test_jinja_renders_first_and_inserts_data_not_markup():
    t = Template("{% if title %}{{ title }}: {% endif %}<x> [MASK]")
    rendered = t.render({"x": "body", "title": "[MASK] <y>"})
    assert [s.kind for s in rendered] == ["text", "text", "input", "text", "mask"]
    assert rendered[0].text == "[MASK] <y>" and rendered[0].data  # what Jinja inserts is data
    assert rendered[1].text == ": " and not rendered[1].data
    no_title = t.render({"x": "body", "title": ""})
    assert [s.kind for s in no_title] == ["input", "text", "mask"]


def test_private_use_characters_are_text_in_templates_and_data():
    plain = Template("<x> \ue000 \ue001 [MASK]").render({"x": "a\ue000"})
    assert [(s.kind, s.text) for s in plain] == [
        ("input", "a\ue000"),
        ("text", " \ue000 \ue001 "),
        ("mask", ""),
    ]
    jinja = Template("{{ v }} \ue000 [MASK]").render({"v": "b\ue001\ue000"})
    assert [(s.text, s.data) for s in jinja[:2]] == [("b\ue001\ue000", True), (" \ue000 ", False)]


def test_what_a_jinja_filter_block_builds_is_data():
    t = Template('{% filter replace("x", "[P9]") %}x{% endfilter %} [P1] <x> [MASK]')
    rendered = t.render({"x": "a"})
    assert [(s.kind, s.text) for s in rendered[:2]] == [("text", "[P9]"), ("text", " ")]
    assert rendered[0].data and [s.slot for s in rendered if s.kind == "soft"] == [0]


def test_jinja_named_slots_keep_their_ids():
    t = Template("{% if a %}[P1]{% endif %}[P2] <x>")
    rendered = t.render({"x": "v", "a": False})
    assert [s.slot for s in rendered if s.kind is SegmentKind.SOFT] == [1]


def test_render_fills_inputs():
    t = Template("<premise>? [MASK], <hypothesis>")
    segs = t.render({"premise": "a", "hypothesis": "b"})
    assert [(s.kind, s.text) for s in segs if s.kind is SegmentKind.INPUT] == [
        ("input", "a"),
        ("input", "b"),
    ]


@pytest.mark.parametrize(
    ("source", "line", "column", "words"),
    [
        ("<x> It was [FOO].", 1, 12, "unknown slot '[FOO]'"),
        ("<x> It was [MASK", 1, 12, "never closed"),
        ("<x> a ] b", 1, 7, "unmatched ']'"),
        ("<x> a > b", 1, 7, "unmatched '>'"),
        ("a < b <x>", 1, 3, "does not start an input slot"),
        ("<x> \\n", 1, 5, "escapes nothing"),
        ("<x> [MASK] [MASK]", 1, 12, "second [MASK]"),
        ("[P*0] <x>", 1, 1, "[P*0] has no slots"),
        ("[P1:good] <x> [P1:bad]", 1, 15, "initialised twice"),
        ("[P1:] <x>", 1, 5, "empty initialisation"),
        ("[P1:@zeros] <x>", 1, 5, "unknown initialisation"),
        ("line one\n<x> [P1 and more", 2, 5, "never closed"),
        ("<>", 1, 1, "does not start an input slot"),
    ],
)
def test_errors_name_line_column_and_fix(source, line, column, words):
    with pytest.raises(TemplateError) as info:
        Template(source, name="demo")
    message = str(info.value)
    assert f"demo, line {line}, column {column}" in message
    assert words in message
    caret_line = message.splitlines()[2]
    assert caret_line.index("^") == 4 + column - 1


def test_jinja_syntax_error_names_the_line():
    with pytest.raises(TemplateError, match="line 2.*Jinja syntax error"):
        Template("ok\n{% if x %} <x>")


def test_jinja_undefined_variable_is_an_error():
    t = Template("{{ title }} <x>")
    with pytest.raises(TemplateError, match="'title' is undefined.*fields: x"):
        t.render({"x": "a"})


def test_missing_input_value_names_the_slot():
    t = Template("<x> [MASK]")
    with pytest.raises(TemplateError, match="no value for input slot <x>"):
        t.render({"sentence": "a"})


def test_jinja_star_groups_must_match():
    t = Template("{% if a %}[P*2]{% endif %}[P*3] <x>")
    with pytest.raises(TemplateError, match="use named slots"):
        t.render({"x": "v", "a": False})
