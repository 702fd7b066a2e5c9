"""The run folder: every file a trained prompt is made of, written atomically.

    prompt.safetensors   the trained parameters only (prompt encoders collapsed)
    promptkit.json       the recipe (template, head, method), classes, backbone id and
                         fingerprint
    config.yaml          the full config of the run
    metrics.jsonl        one line per evaluation
    train.log            progress, evaluations, stops and resumes, as plain lines
    demonstrations.jsonl the training examples shown before each query (runs with
                         demonstrations only): an example and its class per line
    resume/state.pt      optimizer, scheduler, uncollapsed encoders, progress: to resume
    .promptkit-run       the marker that says the folder is a promptkit run, and its status
    .promptkit-lock      held while a process writes the run

Every file is replaced atomically (a temporary file, then a rename), so a crash never leaves
a half-written file; the temporary file of a killed save is removed when the folder is next
prepared for a fit. promptkit writes only into a folder that is new, empty, or a run of its
own, and ``clear`` removes only the files above.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import safetensors
import torch
import yaml
from safetensors.torch import load_file, save_file

from promptkit.backbone.loading import FINGERPRINT_SCHEME
from promptkit.errors import ConfigError, TrainingError

FORMAT_VERSION = 2
# What a resumed run may change: how fast it learns from here, and what it shows.
RESUMABLE = (
    "trainer.lr",
    "trainer.progress",
    "trainer.log_every",
    "trainer.eval_batch_size",
    "output_dir",
)
TEMP_SUFFIX = ".promptkit-tmp"
ENSEMBLE_FILE = "ensemble.json"  # what makes a folder a saved ensemble of runs
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _writes(method: _Method) -> _Method:
    """A RunFolder method that writes: a no-op in a process that does not write."""

    @functools.wraps(method)
    def write(self: RunFolder, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs) if self.writer else None

    return write  # type: ignore[return-value]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a file through ``write(tmp_path)`` then rename it into place. The temporary file
    is ``.NAME.RANDOM.promptkit-tmp`` beside it (what a killed save leaves: a run folder
    removes its own when it is next prepared)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: Path, option: str, folder: bool) -> None:
    """That ``path`` can be written as a folder (``folder``) or a file; else a ConfigError
    that names ``option``."""
    want, other = ("a folder", "a file") if folder else ("a file", "a folder")
    if path.exists() and path.is_dir() != folder:
        raise ConfigError(f"{option} {path} is {other}: give the path of {want}.")
    start = path if folder else path.parent
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"{option} {path}: {existing} is a file, so nothing can be written under it; "
            f"choose another {option}."
        )
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{option} {path}: {existing} is not writable; choose another {option}.")


def atomic_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def is_ensemble(folder: str | Path) -> bool:
    """Whether a folder holds a saved ensemble of runs (``promptkit.RunEnsemble.save``)."""
    return (Path(folder) / ENSEMBLE_FILE).is_file()


class RunFolder:
    """One run folder: its file names, and reading and writing each of them.

    Args:
        path: the folder (it need not exist yet).
        writer: whether this process writes (under ``accelerate launch`` only the main
            process does; the others read).
    """

    PROMPT = "prompt.safetensors"
    RECIPE = "promptkit.json"
    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    LOG = "train.log"
    DEMONSTRATIONS = "demonstrations.jsonl"
    RESUME = "resume/state.pt"
    MARKER = ".promptkit-run"
    LOCK = ".promptkit-lock"
    # the run's own files (besides its lock and resume folder)
    FILES = (PROMPT, RECIPE, CONFIG, METRICS, LOG, DEMONSTRATIONS, MARKER)

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """The path of one of the run's files."""
        return self.path / name

    # -- what the folder is ---------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder holds a promptkit run: its marker, or (a run of an older
        promptkit that wrote none) a promptkit.json that promptkit wrote."""
        return self.file(self.MARKER).is_file() or self._has_own_recipe()

    def _has_own_recipe(self) -> bool:
        """Whether promptkit.json is a recipe document of promptkit (not a user's file)."""
        try:
            self.read_recipe()
        except ConfigError:
            return False
        return True

    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is one of the run's own files (or inside its resume folder)."""
        target = Path(path).resolve()
        own = {self.file(n).resolve() for n in (*self.FILES, self.LOCK)}
        return target in own or self.file(self.RESUME).parent.resolve() in target.parents

    def is_empty(self) -> bool:
        """Whether the folder does not exist or holds nothing (but promptkit's lock and the
        temporary files of killed saves)."""
        if not self.path.exists():
            return True
        leftovers = set(self.leftover_temps())
        return all(p.name == self.LOCK or p in leftovers for p in self.path.iterdir())

    def leftover_temps(self) -> list[Path]:
        """The temporary files that saves of the run's own files left when their process was
        killed (``atomic_write``'s, named after the file they were to replace)."""
        return [
            temp
            for name in (*self.FILES, self.RESUME)
            for temp in self.file(name).parent.glob(
                f".{glob.escape(Path(name).name)}.*{TEMP_SUFFIX}"
            )
        ]

    def check(self, resume: bool, overwrite: bool) -> None:
        """Whether a fit may write here: to continue its run (``resume``), to replace its run
        (``overwrite``), or to start in a new or empty folder. Anything else is an error, so a
        fit never writes into a folder of other files."""
        check_writable(self.path, "output_dir", folder=True)
        if resume and overwrite:
            raise ConfigError(
                "--resume continues the run and --overwrite replaces it: give one of them."
            )
        if resume:
            if self.read_resume() is None:
                raise TrainingError(
                    f"{self.path} has no resume state to continue from: train without --resume."
                )
            if self.status() == "finished":
                raise TrainingError(
                    f"{self.path} holds a finished run: there is nothing to resume. Train "
                    "again with --overwrite, or choose another --output."
                )
        elif self.is_run():
            if not overwrite:
                raise ConfigError(
                    f"{self.path} holds an earlier run: continue it with --resume, replace it "
                    "with --overwrite, or choose another --output."
                )
        elif not self.is_empty():
            raise ConfigError(
                f"{self.path} is not empty and holds no promptkit run: promptkit writes only "
                "into a new or empty folder, or a run of its own. Choose another --output."
            )

    @_writes
    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Check the folder (see ``check``), then clear an earlier run when replacing it,
        remove what killed saves left, and mark the folder as a run in training."""
        self.check(resume, overwrite)
        if not resume and self.is_run():
            self.clear()
        for temp in self.leftover_temps():  # a save that was killed
            temp.unlink(missing_ok=True)
        self.mark("training")

    def status(self) -> str | None:
        """ "training" or "finished" (None: no marker)."""
        marker = self.file(self.MARKER)
        if not marker.is_file():
            return None
        try:
            status = json.loads(marker.read_text(encoding="utf-8")).get("status")
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            status = None
        if status not in ("training", "finished"):
            raise ConfigError(
                f"{marker} is damaged (it says no status): train the run again with --overwrite."
            )
        return status

    @_writes
    def mark(self, status: str) -> None:
        """Record the run's status in its marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_text(
            self.file(self.MARKER),
            json.dumps({"promptkit_run": FORMAT_VERSION, "status": status}) + "\n",
        )

    @_writes
    def clear(self) -> None:
        """Remove the run's own files (nothing else the folder holds): the resume folder
        goes only if nothing else is left in it."""
        for name in (*self.FILES, self.RESUME):
            self.file(name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # absent, or holds the user's files
            self.file(self.RESUME).parent.rmdir()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock: a second process that asks for it is refused."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(self.LOCK), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(
                    f"{self.path} is being written by another promptkit process: wait for it "
                    "to end, or choose another --output."
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- files ----------------------------------------------------------------------------

    @_writes
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Save the full config of the run."""
        atomic_text(self.file(self.CONFIG), yaml.safe_dump(dict(config), sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """The saved config of the run ({} if it has none)."""
        path = self.file(self.CONFIG)
        if not path.is_file():
            return {}
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path} is damaged ({err}): train the run again.") from None
        if not isinstance(config, dict):
            raise ConfigError(
                f"{path} is damaged (a {type(config).__name__}, not a mapping of keys to "
                "values): train the run again."
            )
        return config

    def check_resumed_config(self, config: Mapping[str, Any]) -> None:
        """A resumed run continues the config it started with: only the keys of
        ``RESUMABLE`` may change (a run of an older promptkit without config.yaml is not
        compared)."""
        saved = self.read_config()
        if not saved:
            return
        before = _flat(saved)
        after = _flat(yaml.safe_load(yaml.safe_dump(dict(config))))
        changed = [
            key
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key) and not _resumable(key)
        ]
        if changed:
            raise ConfigError(
                f"--resume continues the run with its own config, but these keys differ from "
                f"its {self.CONFIG}: {', '.join(changed)}. Resume with the config it started "
                f"with (only {', '.join(RESUMABLE)} may change), or train a new run."
            )

    @_writes
    def save_prompt(self, state: Mapping[str, torch.Tensor], document: Mapping[str, Any]) -> None:
        """Save the trained parameters, then the recipe document that describes them."""
        tensors = {k: v.contiguous().cpu() for k, v in state.items()}
        atomic_write(self.file(self.PROMPT), lambda p: save_file(tensors, str(p)))
        document = {"format": FORMAT_VERSION, **document}
        atomic_text(self.file(self.RECIPE), json.dumps(document, indent=2))

    def save_model(
        self,
        model: Any,
        recipe: Any,
        fingerprint: str,
        info: Mapping[str, Any] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Save a model's trained parameters (``state``: its ``trained_state()``, when the
        caller has it already) with its recipe, classes and the fingerprint of the backbone
        they belong to; returns the promptkit.json document."""
        state = model.trained_state() if state is None else state
        document = {
            "recipe": recipe.model_dump(mode="json"),
            "task": model.task.name,
            "classes": model.classes,
            "backbone": {
                "name": recipe.backbone.name,
                "fingerprint": fingerprint,
                "fingerprint_scheme": FINGERPRINT_SCHEME,
            },
            "trained_parameters": sum(v.numel() for v in state.values()),
            **(info or {}),
        }
        self.save_prompt(state, document)
        return {"format": FORMAT_VERSION, **document}

    def read_prompt(self) -> dict[str, torch.Tensor]:
        """The saved trained parameters."""
        path = self.file(self.PROMPT)
        try:
            return load_file(str(path))
        except (OSError, safetensors.SafetensorError) as err:
            raise ConfigError(
                f"{path} cannot be read ({err}): the run folder is incomplete or damaged; "
                "train it again."
            ) from None

    def read_recipe(self) -> dict[str, Any]:
        """The parsed promptkit.json of the run."""
        path = self.file(self.RECIPE)
        if not path.is_file():
            raise ConfigError(f"{self.path} is not a promptkit run: it has no {self.RECIPE}.")
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is damaged ({err}): train the run again.") from None
        if not _recipe_shaped(document):
            raise ConfigError(
                f"{path} is damaged (it lacks a recipe, classes, or a backbone with its name "
                "and fingerprint): train the run again."
            )
        return document

    @_writes
    def save_demonstrations(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Save the demonstrations' pool, one JSON record a line."""
        text = "".join(json.dumps(dict(r)) + "\n" for r in records)
        atomic_text(self.file(self.DEMONSTRATIONS), text)

    def read_demonstrations(self) -> list[dict[str, Any]]:
        """The saved demonstrations' pool (a run whose recipe has demonstrations has it)."""
        path = self.file(self.DEMONSTRATIONS)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{path} cannot be read ({err}), and the run shows its queries demonstrations "
                "from it: the run folder is incomplete or damaged; train it again."
            ) from None
        if not all(isinstance(r, dict) and {"example", "label"} <= r.keys() for r in records):
            raise ConfigError(
                f"{path} is damaged (a line lacks its example or label): train the run again."
            )
        return records

    @_writes
    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Add one line to metrics.jsonl (the file is replaced whole, atomically)."""
        lines = [*self.read_metrics(), dict(record)]
        atomic_text(self.file(self.METRICS), "".join(json.dumps(r) + "\n" for r in lines))

    @_writes
    def keep_metrics(self, count: int) -> None:
        """Keep the first ``count`` lines of metrics.jsonl (what a resume state accounts for)."""
        lines = self.read_metrics()[:count]
        atomic_text(self.file(self.METRICS), "".join(json.dumps(r) + "\n" for r in lines))

    @_writes
    def log(self, message: str) -> None:
        """Add a time-stamped line to train.log."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.file(self.LOG), "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {message}\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The lines of metrics.jsonl so far."""
        path = self.file(self.METRICS)
        if not path.is_file():
            return []
        try:
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{path} is damaged ({err}): train the run again with --overwrite."
            ) from None
        return lines

    @_writes
    def save_resume(self, state: Mapping[str, Any]) -> None:
        """Save the resume state."""
        atomic_write(self.file(self.RESUME), lambda p: torch.save(dict(state), p))

    def read_resume(self) -> dict[str, Any] | None:
        """The resume state of the run, or None if it has none."""
        path = self.file(self.RESUME)
        if not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=False)
        except Exception as err:  # torch.load raises many kinds on a damaged file
            raise TrainingError(
                f"{path} cannot be read ({type(err).__name__}): the resume state is damaged; "
                "train again with --overwrite."
            ) from None


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _resumable(key: str) -> bool:
    return any(key == r or key.startswith(f"{r}.") for r in RESUMABLE)


def _recipe_shaped(document: Any) -> bool:
    """Whether a parsed promptkit.json has the parts promptkit writes."""
    if not isinstance(document, dict):
        return False
    backbone = document.get("backbone")
    return (
        isinstance(document.get("recipe"), dict)
        and isinstance(document.get("classes"), list)
        and isinstance(backbone, dict)
        and all(isinstance(backbone.get(k), str) for k in ("name", "fingerprint"))
    )
