"""The template language: parse a template into segments, render it over an example.

    "<x> It was [P1][P2] [MASK]."

- plain text: frozen anchor tokens;
- ``<x>``, ``<x2>``, ``<premise>``: input slots, filled from the example (only these are
  truncated when a sequence is too long);
- ``[P1]``: a soft slot, one trainable vector (the same name twice shares it);
  ``[P*n]``: n fresh soft slots; ``[P1:great]`` / ``[P*4:it was good]`` initialise from the
  embeddings of words (a single slot: their mean; n slots: one token each, cycled);
  ``[P1:@random]`` / ``[P1:@vocab]`` pick random or sampled-vocabulary initialisation;
- ``[MASK]``: where the answer is read;
- ``\\[``, ``\\]``, ``\\<``, ``\\>``, ``\\\\``: literal characters;
- Jinja (``{{ field }}``, ``{% if %}``) is rendered first over the example, in a sandbox with
  strict undefined variables; what it inserts is data: never markup, never special tokens.

A template is checked completely when it is compiled, before any model is loaded.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache

import jinja2
import jinja2.meta
from jinja2.compiler import CodeGenerator, Frame
from jinja2.nodes import FilterBlock
from jinja2.sandbox import SandboxedEnvironment

from promptkit import catalog
from promptkit.errors import TemplateError

_JINJA_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_JINJA_OPENING = re.compile(r"\{\{|\{%|\{#")
MAX_SOFT_SLOTS = 1024  # per template: more is a typo, not a prompt
_ESCAPABLE = "[]<>\\"
# While a template renders, what Jinja inserts is wrapped in two private-use characters, so
# that it is read as data: two that neither the template nor the example holds.
_PRIVATE_USE = (range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE))
_data_marks: ContextVar[tuple[str, str]] = ContextVar("_data_marks")
_MAX_RENDERED = 100_000  # characters a Jinja expression may build (a typo, not a prompt)
_INPUT = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")
_SOFT = re.compile(r"\[P(?:(\d+)|\*(\d+))(?::([^\]]*))?\]")
_MASK = "[MASK]"
_INIT_KEYWORDS = ("@random", "@vocab")


class SegmentKind(StrEnum):
    """What a piece of a rendered template is."""

    TEXT = "text"
    INPUT = "input"
    SOFT = "soft"
    MASK = "mask"


@dataclass(frozen=True)
class Segment:
    """One piece of a rendered template: anchor text, an input slot, a soft slot or the mask."""

    kind: SegmentKind
    text: str = ""
    name: str = ""
    slot: int = -1
    words: tuple[str, ...] | None = None  # an input given as pre-split words
    data: bool = False  # text that Jinja inserted from the example (tokenised as data)


@dataclass(frozen=True)
class SoftSlot:
    """One trainable vector. ``init`` is None (the run's default), a keyword or words."""

    name: str
    init: str | None = None
    piece: int | None = None  # for [P*n:words]: which token of the words this slot takes


@dataclass(frozen=True)
class _Parsed:
    segments: tuple[Segment, ...]
    slots: tuple[SoftSlot, ...]
    groups: tuple[int, ...]  # size of each [P*n] in order of appearance


@dataclass
class _Parser:
    """Splits template markup into segments. Positions are kept for error messages."""

    source: str
    template_name: str
    marks: tuple[str, str] | None = None  # around Jinja's data, in a rendered text
    slots: list[SoftSlot] = field(default_factory=list)
    by_name: dict[str, int] = field(default_factory=dict)
    groups: list[int] = field(default_factory=list)

    def error(self, pos: int, what: str, fix: str) -> TemplateError:
        line = self.source.count("\n", 0, pos) + 1
        start = self.source.rfind("\n", 0, pos) + 1
        end = self.source.find("\n", pos)
        text = self.source[start : end if end >= 0 else len(self.source)]
        column = pos - start + 1
        return TemplateError(
            f"{self.template_name}, line {line}, column {column}: {what}\n"
            f"    {text}\n    {' ' * (column - 1)}^\n{fix}"
        )

    def parse(self) -> _Parsed:
        segments: list[Segment] = []
        text: list[str] = []
        pos, src = 0, self.source

        def flush() -> None:
            if text:
                segments.append(Segment(SegmentKind.TEXT, "".join(text)))
                text.clear()

        while pos < len(src):
            ch = src[pos]
            if ch == "\\":
                if pos + 1 >= len(src) or src[pos + 1] not in _ESCAPABLE:
                    raise self.error(
                        pos,
                        "a backslash escapes nothing here",
                        "Escape only [ ] < > or \\ (write \\\\ for a backslash).",
                    )
                text.append(src[pos + 1])
                pos += 2
            elif ch == "<":
                match = _INPUT.match(src, pos)
                if not match:
                    raise self.error(
                        pos,
                        "'<' does not start an input slot",
                        "Input slots look like <x> or <premise>; write \\< for a literal '<'.",
                    )
                flush()
                segments.append(Segment(SegmentKind.INPUT, name=match[1]))
                pos = match.end()
            elif ch == "[":
                flush()
                pos = self._bracket(pos, segments)
            elif ch in "]>":
                raise self.error(pos, f"unmatched '{ch}'", f"Write \\{ch} for a literal '{ch}'.")
            elif self.marks and ch == self.marks[0]:
                flush()
                end = src.index(self.marks[1], pos)
                segments.append(Segment(SegmentKind.TEXT, src[pos + 1 : end], data=True))
                pos = end + 1
            else:
                text.append(ch)
                pos += 1
        flush()
        return _Parsed(tuple(segments), tuple(self.slots), tuple(self.groups))

    def _bracket(self, pos: int, segments: list[Segment]) -> int:
        src = self.source
        close = src.find("]", pos)
        if close < 0:
            raise self.error(
                pos,
                "'[' is never closed",
                "Close the slot with ']' or write \\[ for a literal '['.",
            )
        if src.startswith(_MASK, pos):
            if any(s.kind is SegmentKind.MASK for s in segments):
                raise self.error(
                    pos,
                    "a second [MASK]",
                    "A template reads its answer at one [MASK]; remove the others.",
                )
            segments.append(Segment(SegmentKind.MASK))
            return pos + len(_MASK)
        match = _SOFT.match(src, pos)
        if not match:
            raise self.error(
                pos,
                f"unknown slot {src[pos : close + 1]!r}",
                "Slots are [MASK], [P1], [P*n], [P1:word]; write \\[ for a literal '['.",
            )
        number, count, init = match.groups()
        init = self._check_init(init, match.start(3) if init is not None else pos)
        if number is not None:
            segments.append(Segment(SegmentKind.SOFT, slot=self._named(f"P{number}", init, pos)))
        else:
            n = int(count)
            if n < 1:
                raise self.error(pos, "[P*0] has no slots", "Use [P*n] with n >= 1.")
            if len(self.slots) + n > MAX_SOFT_SLOTS:
                raise self.error(
                    pos,
                    f"{len(self.slots) + n} soft slots, more than the {MAX_SOFT_SLOTS} a "
                    "template may have",
                    "Prompt tuning uses tens of slots, prefix tuning up to a few hundred: "
                    "check the number.",
                )
            base = len(self.slots)
            group = len(self.groups)
            self.groups.append(n)
            for i in range(n):
                piece = i if init is not None and init not in _INIT_KEYWORDS else None
                self.slots.append(SoftSlot(f"P*{group}.{i}", init, piece))
                segments.append(Segment(SegmentKind.SOFT, slot=base + i))
        return match.end()

    def _check_init(self, init: str | None, pos: int) -> str | None:
        if init is None:
            return None
        if not init.strip():
            raise self.error(
                pos,
                "empty initialisation after ':'",
                "Write [P1:word], [P1:@random] or [P1:@vocab], or drop the ':'.",
            )
        if init.startswith("@") and init not in _INIT_KEYWORDS:
            raise self.error(
                pos,
                f"unknown initialisation {init!r}",
                f"Use one of {', '.join(_INIT_KEYWORDS)} or words.",
            )
        return init.strip()

    def _named(self, name: str, init: str | None, pos: int) -> int:
        if name in self.by_name:
            index = self.by_name[name]
            previous = self.slots[index].init
            if init is not None and previous is not None and init != previous:
                raise self.error(
                    pos,
                    f"[{name}] is initialised twice ({previous!r}, {init!r})",
                    "A shared slot has one initialisation: give it once.",
                )
            if init is not None:
                self.slots[index] = SoftSlot(name, init)
            return index
        self.by_name[name] = len(self.slots)
        self.slots.append(SoftSlot(name, init))
        return self.by_name[name]


@jinja2.pass_context  # so Jinja calls it at render time only, when the marks are chosen
def _as_data(context: object, value: object) -> str:
    """Jinja finalizer: what ``{{ ... }}`` inserts (a text, or a number, list or mapping
    written out) is marked as data, which the parser takes as it is. Marks already in it
    are those of data Jinja built before (a ``{% set %}`` block, a macro)."""
    opening, closing = _data_marks.get()
    text = str(value).replace(opening, "").replace(closing, "")
    return opening + text + closing if text else ""


def _free_marks(source: str, example: Mapping[str, object]) -> tuple[str, str]:
    """Two private-use characters that neither the template nor the example holds."""
    used = set(source)
    _add_characters(example, used)
    free = (c for c in map(chr, itertools.chain(*_PRIVATE_USE)) if c not in used)
    marks = tuple(itertools.islice(free, 2))
    if len(marks) < 2:
        raise TemplateError("The example holds every private-use character: it is not text.")
    return marks


def _add_characters(value: object, into: set[str]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            _add_characters(key, into)
            _add_characters(item, into)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _add_characters(item, into)
    else:
        into.update(str(value))


class _FilterBlocksGiveData(CodeGenerator):
    """Jinja's code generator, with what a ``{% filter %}`` block outputs finalized as what
    ``{{ }}`` outputs is: text a filter builds is data, never markup."""

    def visit_FilterBlock(self, node: FilterBlock, frame: Frame) -> None:
        filter_frame = frame.inner()
        filter_frame.symbols.analyze_node(node)
        self.enter_frame(filter_frame)
        self.buffer(filter_frame)
        self.blockvisit(node.body, filter_frame)
        self.start_write(frame, node)
        self.write("environment.finalize(context, ")
        self.visit_Filter(node.filter, filter_frame)
        self.write(")")
        self.end_write(frame)
        self.leave_frame(filter_frame)


class _BoundedSandbox(SandboxedEnvironment):
    """Jinja's sandbox, with a bound on what ``*`` and ``**`` may build."""

    intercepted_binops = frozenset({"*", "**"})
    code_generator_class = _FilterBlocksGiveData

    def call_binop(self, context: object, operator: str, left: object, right: object) -> object:
        if operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise jinja2.sandbox.SecurityError(f"an exponent of {right} is more than allowed")
        if operator == "*":
            size, times = (left, right) if isinstance(right, int) else (right, left)
            repeats = isinstance(size, str | list | tuple) and isinstance(times, int)
            if repeats and len(size) * times > _MAX_RENDERED:
                raise jinja2.sandbox.SecurityError(
                    f"a repeat to {len(size) * times} items is more than allowed"
                )
        return super().call_binop(context, operator, left, right)


_JINJA = _BoundedSandbox(
    undefined=jinja2.StrictUndefined,
    finalize=_as_data,
    keep_trailing_newline=True,
    autoescape=False,
)


@lru_cache(maxsize=4096)
def _parse(source: str, name: str, marks: tuple[str, str] | None = None) -> _Parsed:
    return _Parser(source, name, marks).parse()


class Template:
    """A compiled template. Build it with ``Template(source)``; errors surface here.

    Args:
        source: the template text.
        name: how errors refer to it (a catalog name or a config key).
    """

    def __init__(self, source: str, name: str = "template") -> None:
        if not isinstance(source, str):
            raise TemplateError(f"{name} is a text, not a {type(source).__name__}.")
        source = source.replace("\r\n", "\n").replace("\r", "\n")  # one kind of line end
        self.source = source
        self.name = name
        self._jinja = _compile_jinja(source, name) if _JINJA_OPENING.search(source) else None
        # Jinja tags are blanked, not removed, so positions in errors stay those of the source.
        static = _JINJA_TAG.sub(lambda m: " " * len(m[0]), source)
        parsed = _parse(static, name)
        self.slots: tuple[SoftSlot, ...] = parsed.slots
        self._groups = parsed.groups
        self._static = parsed.segments
        self.inputs: tuple[str, ...] = tuple(
            dict.fromkeys(s.name for s in parsed.segments if s.kind is SegmentKind.INPUT)
        )
        self.has_mask = any(s.kind is SegmentKind.MASK for s in parsed.segments)
        self.space_before_mask = self._space_before_mask(parsed.segments)
        self._named_slots = {s.name: i for i, s in enumerate(self.slots)}

    @staticmethod
    def _space_before_mask(segments: tuple[Segment, ...]) -> bool:
        for before, seg in itertools.pairwise(segments):
            if seg.kind is SegmentKind.MASK:
                return before.kind is SegmentKind.TEXT and before.text[-1:].isspace()
        return False

    @property
    def uses_jinja(self) -> bool:
        """Whether the template has Jinja tags (which may bring the data in)."""
        return self._jinja is not None

    @property
    def jinja_fields(self) -> frozenset[str]:
        """The fields of an example that the template's Jinja tags read."""
        if self._jinja is None:
            return frozenset()
        return frozenset(jinja2.meta.find_undeclared_variables(_JINJA.parse(self.source)))

    @property
    def n_slots(self) -> int:
        """How many trainable vectors the template declares."""
        return len(self.slots)

    def segments(self) -> tuple[Segment, ...]:
        """The template's segments as written (Jinja tags blanked), for inspection."""
        return self._static

    def render(self, example: Mapping[str, object]) -> list[Segment]:
        """Render the template over one example: Jinja first, then input slots filled.

        Args:
            example: field values; input slot ``<x>`` reads ``example["x"]``.
        Returns:
            The segments, input segments carrying their text.
        """
        segments = self._static
        if self._jinja is not None:
            marks = _free_marks(self.source, example)
            rendered = self._render_jinja(example, marks)
            segments = self._relabel(_parse(rendered, f"{self.name} (rendered)", marks))
        missing = [
            s.name for s in segments if s.kind is SegmentKind.INPUT and s.name not in example
        ]
        if missing:
            raise TemplateError(
                f"{self.name}: the example has no value for input slot <{missing[0]}> "
                f"(fields: {', '.join(map(str, example)) or 'none'}). Map a data column to it "
                f"with `inputs: {{{missing[0]}: COLUMN}}`."
            )
        return [_filled(s, example[s.name]) if s.kind is SegmentKind.INPUT else s for s in segments]

    def text(self, example: Mapping[str, object]) -> str:
        """Render a template of text (and Jinja) only, such as a target, to its text."""
        segments = self.render(example)
        if any(s.kind is not SegmentKind.TEXT for s in segments):
            raise TemplateError(
                f"{self.name} is text and Jinja only: no <x>, soft slots or [MASK] (write "
                "\\[ for a literal '[')."
            )
        return "".join(s.text for s in segments)

    def _render_jinja(self, example: Mapping[str, object], marks: tuple[str, str]) -> str:
        token = _data_marks.set(marks)
        try:
            return self._jinja.render(example)
        except jinja2.UndefinedError as err:
            raise TemplateError(
                f"{self.name}: {err.message}; the example has the fields: "
                f"{', '.join(map(str, example)) or 'none'}."
            ) from err
        except jinja2.TemplateError as err:
            raise TemplateError(f"{self.name}: Jinja failed: {err}") from err
        except Exception as err:  # anything a Jinja expression can raise, e.g. 1/0
            raise TemplateError(
                f"{self.name}: Jinja failed on this example: {type(err).__name__}: {err}"
            ) from err
        finally:
            _data_marks.reset(token)

    def _relabel(self, parsed: _Parsed) -> tuple[Segment, ...]:
        """Map the soft slots of a rendered text onto the compiled template's slot ids."""
        if parsed.groups != self._groups[: len(parsed.groups)]:
            raise TemplateError(
                f"{self.name}: Jinja rendered [P*n] groups {list(parsed.groups)} but the template "
                f"declares {list(self._groups)}. Inside Jinja conditions or loops, use named slots "
                f"([P1][P2]...) instead of [P*n]."
            )
        ids = [
            self._named_slots[s.name] if not s.name.startswith("P*") else -1 for s in parsed.slots
        ]
        group_slots = iter(i for i, s in enumerate(self.slots) if s.name.startswith("P*"))
        ids = [i if i >= 0 else next(group_slots) for i in ids]
        return tuple(
            Segment(s.kind, s.text, s.name, ids[s.slot]) if s.kind is SegmentKind.SOFT else s
            for s in parsed.segments
        )

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _compile_jinja(source: str, name: str) -> jinja2.Template:
    try:
        return _JINJA.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise _Parser(source, name).error(
            _offset_of_line(source, err.lineno),
            f"Jinja syntax error: {err.message}",
            "Fix the Jinja tag on this line ({{ field }}, {% if %}...{% endif %}).",
        ) from err


def _offset_of_line(source: str, lineno: int) -> int:
    offset = 0
    for _ in range(lineno - 1):
        offset = source.index("\n", offset) + 1
    return offset


def _filled(segment: Segment, value: object) -> Segment:
    """An input segment with its value: text, or pre-split words (a list, e.g. NER tokens)."""
    if isinstance(value, list | tuple):
        words = tuple(map(str, value))
        return Segment(SegmentKind.INPUT, " ".join(words), segment.name, words=words)
    return Segment(SegmentKind.INPUT, str(value), segment.name)


def resolve_template(source: str) -> Template:
    """The catalog template of that name, else ``source`` itself, compiled."""
    if catalog.has("templates", source):
        return Template(catalog.entry("templates", source)["template"], name=source)
    return Template(source)


def check_input_slot(template: Template, source: str) -> None:
    """A template (``source``: as the user wrote it) must show the model the data: an empty
    one, or one without an input slot (a misspelt catalog name, often), is an error."""
    if not source.strip():
        raise TemplateError("the template is empty: write one, e.g. '<x> It was [MASK].'")
    if template.inputs or template.uses_jinja:
        return
    plain = not (template.slots or template.has_mask)
    hint = (
        f" No catalog template is named {source!r} either; known: "
        f"{', '.join(catalog.entries('templates'))}."
        if plain
        else ""
    )
    raise TemplateError(
        f"{template.name} has no input slot, so the model would never see the data: put "
        f"<x> where the input goes (and map it to a column with `inputs: {{x: COLUMN}}`)."
        f"{hint}"
    )
