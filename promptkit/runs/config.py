"""Reading a run config: YAML (a key given twice is an error), ``--set`` overrides, a method
preset underneath, and validation by the schema of the config's modality."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from promptkit import catalog
from promptkit.core.config import merged, validate
from promptkit.errors import ConfigError
from promptkit.modalities import modality_of


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Read, override (``a.b=value``, value parsed as YAML) and validate a run config."""
    if not isinstance(path, str | Path):
        fix = ": validate a mapping with validate_config." if isinstance(path, dict) else "."
        raise ConfigError(f"load_config takes a YAML file's path, not a {type(path).__name__}{fix}")
    if not isinstance(overrides, list | tuple) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(
            f"overrides is a list of 'KEY=VALUE' strings, e.g. ['trainer.epochs=5'], not "
            f"{overrides!r}."
        )
    path = Path(path)
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder: give the config's YAML file.") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}): save it as UTF-8.") from None
    if data is None:
        raise ConfigError(f"{path} is empty: a config needs at least backbone, template, data.")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config is a mapping of keys to values, not a {type(data).__name__}."
        )
    for item in overrides:
        _apply_override(data, item)
    return validate_config(data, str(path))


def validate_config(data: dict[str, Any], source: str = "config") -> Any:
    """Validate a run config mapping of any modality; errors name each bad key and suggest
    the fix. ``preset: NAME`` starts from a method of the modality's catalog
    (``promptkit methods``): the config's own keys win."""
    modality = modality_of(data)
    rates = _rates_given(data)
    if "preset" in data:
        data = dict(data)
        preset = catalog.entry(modality.presets, str(data.pop("preset")))["config"]
        data = merged(preset, data)
    config = validate(modality.run_schema(), data, source)
    idle = sorted(set(rates) - set(config.trainable))
    if idle:
        raise ConfigError(
            f"{source}: trainer.lr sets a rate for {idle}, but trainable {config.trainable} "
            "does not train them: add them to trainable, or drop their rates."
        )
    return config


def _rates_given(data: dict[str, Any]) -> list[str]:
    """The groups a config's own ``trainer.lr`` names (a preset's are not checked)."""
    trainer = data.get("trainer")
    rates = trainer.get("lr") if isinstance(trainer, dict) else None
    return list(rates) if isinstance(rates, dict) else []


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, where a key given twice in one mapping is an error (not the last
    one silently winning)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first[key].line + 1}): keep one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                first[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """YAML text, read safely; a key given twice in one mapping is an error."""
    return yaml.load(text, Loader=_UniqueKeys)  # a SafeLoader


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. trainer.epochs=5")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
    try:
        node[leaf] = read_yaml(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or err
        raise ConfigError(
            f"--set {item!r}: the value is not valid YAML ({problem}); quote text that holds "
            """':', '#' or brackets, in YAML's single quotes where it holds a backslash, """
            """e.g. --set "template='<x> \\[note\\] [MASK]'"."""
        ) from None
