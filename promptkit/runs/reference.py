"""The configuration reference, written from the config schemas themselves (every key, its
type, default and description), so that the documentation cannot drift from the code."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from promptkit.modalities import MODALITIES


def reference() -> str:
    """The reference as Markdown: a section per modality's run config, then one per nested
    section, each a table of its keys."""
    lines = ["# Configuration reference", ""]
    seen: set[type[BaseModel]] = set()
    for modality in MODALITIES.values():
        schema = modality.run_schema()
        lines += [f"## {modality.name} runs", ""]
        for path, model in _sections(schema, "", seen):
            lines += _table(path, model)
    return "\n".join(lines).rstrip() + "\n"


def _sections(model: type[BaseModel], path: str, seen: set) -> Iterator[tuple[str, type]]:
    """``model`` and every section below it, each once, with the key path that reaches it."""
    if model in seen:
        return
    seen.add(model)
    yield path or "(top level)", model
    for name, field in model.model_fields.items():
        for member in _models_in(field.annotation):
            tag = _tag(member)
            yield from _sections(member, f"{path}{'.' if path else ''}{name}{tag}", seen)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections a field's type holds (through unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _tag(model: type[BaseModel]) -> str:
    """`` (type: classifier)`` for a member of a tagged section."""
    for key in ("type", "placement", "method", "modality"):
        field = model.model_fields.get(key)
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            return f" ({key}: {field.default})"
    return ""


def _table(path: str, model: type[BaseModel]) -> list[str]:
    rows = [f"### `{path}`", "", _doc(model), "", "| key | type | default | description |"]
    rows.append("|---|---|---|---|")
    for name, field in model.model_fields.items():
        what = field.description or ("selects this section" if _is_tag(field) else "")
        cells = (f"`{name}`", _type(field.annotation), _default(field), what)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return [*rows, ""]


def undescribed(schema: type[BaseModel]) -> list[str]:
    """The keys of ``schema`` and its sections that have no description (a tag that selects
    a section needs none)."""
    return [
        f"{path}.{name}"
        for path, model in _sections(schema, "", set())
        for name, field in model.model_fields.items()
        if not field.description and not _is_tag(field)
    ]


def _is_tag(field: FieldInfo) -> bool:
    return (
        typing.get_origin(field.annotation) is typing.Literal
        and len(typing.get_args(field.annotation)) == 1
    )


def _doc(model: type[BaseModel]) -> str:
    return " ".join((model.__doc__ or "").split())


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"section{_tag(annotation)}"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return f"the section's defaults{_tag(type(value))}"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
