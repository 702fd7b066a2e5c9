"""Building blocks of the config schemas: strict models and unions tagged by a key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag


class Strict(BaseModel):
    """A config section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def absolute_if_local(value: str | None) -> str | None:
    """A local path as an absolute one, so a saved run loads from anywhere; else unchanged."""
    return str(Path(value).resolve()) if value and Path(value).exists() else value


def tagged_union(members: Sequence[type[BaseModel]], key: str, default: str) -> Any:
    """A pydantic union of config sections told apart by ``key`` (``default`` when absent).

    Each member declares ``key`` as a ``Literal`` of its one tag."""

    def tag_of(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get(key, default)
        return getattr(value, key, None)

    tagged = tuple(Annotated[m, Tag(tag(m, key))] for m in members)
    return Annotated[Union[tagged], Discriminator(tag_of)]  # noqa: UP007 (a runtime tuple)


def tag(member: type[BaseModel], key: str) -> str:
    """The tag a member of a tagged union answers to."""
    return member.model_fields[key].default
