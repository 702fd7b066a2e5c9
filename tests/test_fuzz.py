"""Property-based tests: whatever a user writes (templates, data, configs, data files, --set
values), promptkit answers with its own error and a message, or works; never another
exception, never a hang. And data is data: text in an input slot is tokenised as the text it
is, whatever markup or special tokens it looks like."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import yaml
from conftest import make_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptkit.core.data import as_examples, validate_rows
from promptkit.core.readers import read_rows
from promptkit.errors import PromptkitError
from promptkit.runs.config import load_config, validate_config
from promptkit.text.encoding import PromptTokenizer
from promptkit.text.template import SegmentKind, Template

FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
MARKUP = ["<x>", "<y>", "[P1]", "[P*3]", "[P*99999]", "[MASK]", "[P1:great]", "\\", "[", "]"]
MARKUP += ["<", ">", "{{", "}}", "{%", "%}", "{#", "#}", "{{ x }}", "{{ 1/0 }}", "{% if x %}"]
MARKUP += ["{% endif %}", "[SEP]", "[CLS]", "<s>", "[/]", "[bold]", "\n", " ", "x", "great"]
pieces = st.lists(st.sampled_from(MARKUP) | st.text(max_size=5), max_size=12).map("".join)
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | pieces,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@FAST
@given(source=pieces, example=st.dictionaries(st.sampled_from(["x", "y", "z"]), values))
def test_templates_compile_and_render_or_say_why(source, example):
    try:
        template = Template(source)
    except PromptkitError as err:
        assert str(err)
        return
    try:
        segments = template.render(example)
    except PromptkitError as err:
        assert str(err)
        return
    assert sum(s.kind is SegmentKind.MASK for s in segments) <= 1


@FAST
@given(text=pieces | st.text())
def test_input_text_is_data_never_markup_or_special_tokens(text):
    tokenizer = make_tokenizer(masked=True)
    template = Template("<x> it was [P1] [MASK].")
    rendered = template.render({"x": text})
    assert [s.kind for s in rendered] == [
        SegmentKind.INPUT,
        SegmentKind.TEXT,
        SegmentKind.SOFT,
        SegmentKind.TEXT,
        SegmentKind.MASK,
        SegmentKind.TEXT,
    ]
    assert rendered[0].text == text
    if not text.strip():
        return
    encoded = PromptTokenizer(template, tokenizer, max_length=10_000)([{"x": text}])[0]
    words = [i for i, w in zip(encoded.input_ids, encoded.word_ids, strict=True) if w >= 0]
    expected = tokenizer(" " + text, add_special_tokens=False, split_special_tokens=True)
    assert words == expected["input_ids"]
    assert tokenizer.mask_token_id not in words and tokenizer.sep_token_id not in words


characters = st.sampled_from("\ue000\ue001\ue002\U000f0000") | st.characters(
    exclude_characters="{\r"
)


@FAST
@given(text=st.lists(characters, max_size=12).map("".join), jinja=st.booleans())
def test_any_character_in_a_template_or_its_data_is_text(text, jinja):
    escaped = "".join("\\" + c if c in "[]<>\\" else c for c in text)
    template = Template(("{{ v }}" if jinja else "") + escaped + " <x> [MASK]")
    rendered = template.render({"v": text, "x": text})
    texts = [s.text for s in rendered if s.kind is not SegmentKind.MASK]
    assert "".join(texts) == (text if jinja else "") + text + " " + text + " "


@FAST
@given(value=values)
def test_jinja_output_is_data(value):
    rendered = Template("{{ v }} <x> [MASK]").render({"v": value, "x": "a"})
    assert [s.kind for s in rendered].count(SegmentKind.MASK) == 1
    assert not any(s.kind is SegmentKind.SOFT for s in rendered)


KEYS = ["backbone", "name", "template", "data", "train", "head", "type", "verbalizer", "prompts"]
KEYS += ["placement", "layers", "trainer", "epochs", "lr", "prompts", "preset", "modality"]
KEYS += ["vpt", "tokens", "trainable", "max_length", "inputs", "x", "classes", "pool", "seed"]
configs = st.recursive(
    values | st.sampled_from(["vision", "text", "prefix", "deep", "all", "ptuning_v2", "nope"]),
    lambda inner: (
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=5)
        | st.lists(inner, max_size=3)
    ),
    max_leaves=12,
)


@FAST
@given(config=configs)
def test_configs_validate_or_name_the_problem(config):
    try:
        validate_config(config)
    except PromptkitError as err:
        assert str(err)


@settings(FAST, max_examples=80)
@given(override=st.text(max_size=30), key=st.sampled_from(["trainer.epochs", "a.b", "template"]))
def test_set_values_parse_or_name_the_problem(tmp_path_factory, override, key):
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(yaml.safe_dump({"backbone": {"name": "m"}, "template": "<x>", "data": {}}))
    try:
        load_config(path, [f"{key}={override}", override])
    except PromptkitError as err:
        assert str(err)


file_bodies = st.binary(max_size=200) | st.text(max_size=200).map(str.encode)
file_bodies |= st.lists(
    st.sampled_from(['{"x": "a", "label": "p"}', '{"x": null}', "x,label", "a,p", ",", "", "[1]"]),
    max_size=6,
).map(lambda lines: "\n".join(lines).encode())


@settings(FAST, max_examples=200)
@given(body=file_bodies, suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv", ".conll"]))
def test_data_files_read_or_name_the_problem(tmp_path_factory, body, suffix):
    path = tmp_path_factory.mktemp("data") / f"data{suffix}"
    path.write_bytes(body)
    try:
        rows = read_rows(str(path))
        rows = validate_rows(rows, str(path), ["x"], "label", "error")
        as_examples(rows, {}, ["x"])
    except PromptkitError as err:
        assert str(err)


@pytest.mark.parametrize("text", ["[MASK]", "<x>", "{{ y }}", "[P1]", "\\[", "[bold red]x[/]"])
def test_markup_in_data_reaches_the_model_as_text(text):
    template = Template("<x> [MASK]")
    assert template.render({"x": text})[0].text == text


def test_printable_text_never_breaks_the_template_check_command():
    from typer.testing import CliRunner

    from promptkit.cli import app

    for source in ["[bold]x[/] <x>", "\\[red\\] <x> [MASK]", "<x> {{ 1/0 }}", string.printable]:
        result = CliRunner().invoke(app, ["template", "check", source])
        assert result.exit_code in (0, 2)
        assert "Traceback" not in result.output
    shown = CliRunner().invoke(app, ["template", "check", "\\[bold\\]x\\[/\\] <x>"])
    assert "[bold]x[/]" in shown.output


def test_nothing_heavy_loads_for_help_catalog_and_template_check(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from promptkit.cli import app\n"
        "for args in (['--help'], ['catalog'], ['methods'], ['template', 'check', '<x> [MASK]']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "heavy = [m for m in ('torch', 'transformers', 'timm', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_file_of_other_bytes_is_named(tmp_path):
    path = Path(tmp_path / "latin1.csv")
    path.write_bytes("x,label\ncaf\xe9,p\n".encode("latin-1"))
    with pytest.raises(PromptkitError, match=r"latin1.csv: not UTF-8 text \(byte 11"):
        read_rows(str(path))


def test_what_jinja_inserts_is_tokenised_as_data():
    tokenizer = make_tokenizer(masked=True)
    template = Template("{{ x }} it was [MASK].")
    text = "[SEP] [MASK] great"
    encoded = PromptTokenizer(template, tokenizer)([{"x": text}])[0]
    inserted = encoded.input_ids[1 : encoded.input_ids.index(tokenizer.mask_token_id)]
    split = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert inserted[: len(split)] == split
    assert tokenizer.sep_token_id not in inserted and tokenizer.mask_token_id not in inserted


@pytest.mark.parametrize("source", ["{{ 'a' * 10**9 }} <x>", "{{ [1] * 10**8 }} <x>"])
def test_jinja_cannot_build_huge_values(source):
    with pytest.raises(PromptkitError, match="more than allowed"):
        Template(source).render({"x": "a"})
