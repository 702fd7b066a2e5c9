"""The code blocks of the README and the docs stay true: Python parses and every promptkit
name it uses exists; YAML is a valid part of a run config; each shell line runs a command
that exists with options it takes (the promptkit command, make targets, scripts, the
server's routes and request bodies)."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

import promptkit
from promptkit.cli import app
from promptkit.core.config import merged
from promptkit.runs.config import validate_config
from promptkit.serving.server import PredictRequest

REPOSITORY = Path(__file__).resolve().parents[1]
PAGES = [REPOSITORY / "README.md", *sorted((REPOSITORY / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
# What a YAML block is laid over: the smallest run config of its modality.
BASES = {
    "text": {
        "backbone": {"name": "model"},
        "template": "<x> It was [MASK].",
        "head": {"type": "verbalizer", "verbalizer": {"yes": ["good"], "no": ["bad"]}},
        "data": {"train": "train.jsonl"},
    },
    "vision": {
        "modality": "vision",
        "backbone": {"name": "model"},
        "data": {"source": "image_folder", "path": "images"},
    },
}
SERVER_ROUTES = {"/runs", "/tasks", "/predict", "/health", "/docs", "/openapi.json"}


def blocks(language: str) -> list[pytest.param]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text[: match.start()].count("\n") + 1
                where = f"{page.relative_to(REPOSITORY)}:{line}"
                found.append(pytest.param(match.group(2), id=where))
    return found


@pytest.mark.parametrize("code", blocks("python"))
def test_python_blocks_parse_and_name_what_exists(code):
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "promptkit":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "promptkit"
        ):
            assert hasattr(promptkit, node.attr), f"promptkit has no {node.attr}"


@pytest.mark.parametrize("code", blocks("yaml"))
def test_yaml_blocks_are_valid_run_configs(code):
    block = yaml.safe_load(code)
    validate_config(merged(BASES[block.get("modality", "text")], block))


def commands(code: str) -> list[list[str]]:
    joined = code.replace("\\\n", " ")
    words = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [[w for w in line if not re.fullmatch(r"[A-Z_]+=\S*", w)] for line in words if line]


@pytest.mark.parametrize("code", blocks("bash"))
def test_shell_lines_run_commands_that_exist(code):
    for words in commands(code):
        program, arguments = words[0], words[1:]
        if program == "promptkit":
            parsed(arguments)
        elif program == "accelerate":
            parsed(arguments[arguments.index("promptkit") + 1 :])
        elif program == "make":
            makefile = (REPOSITORY / "Makefile").read_text(encoding="utf-8")
            assert re.search(rf"^{re.escape(arguments[0])}:", makefile, re.M), arguments[0]
        elif program == "python":
            assert (REPOSITORY / arguments[0]).is_file(), arguments[0]
        elif program == "curl":
            checked_request(arguments)
        else:
            pytest.fail(f"a shell line runs {program}, which this test does not know")


def parsed(arguments: list[str]) -> None:
    """Parse a promptkit command line as the CLI would, without running it: an unknown
    command or option, or a missing argument, is an error."""
    command = typer.main.get_command(app)
    context = command.make_context("promptkit", [], resilient_parsing=True)
    while hasattr(command, "get_command"):  # a group: the first word names its command
        assert arguments, f"{command.name} needs a command"
        name, *arguments = arguments
        command = command.get_command(context, name)
        assert command is not None, f"promptkit has no command {name!r}"
    command.make_context(command.name, arguments, parent=context)


def checked_request(arguments: list[str]) -> None:
    url = next(a for a in arguments if "localhost" in a)
    assert "/" + url.split("/", 1)[1] in SERVER_ROUTES, url
    if "-d" in arguments:
        PredictRequest.model_validate(json.loads(arguments[arguments.index("-d") + 1]))
