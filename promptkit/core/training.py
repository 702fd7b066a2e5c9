"""The trainer: AdamW per parameter group, warm-up and decay, accumulation, evaluation each
epoch, best checkpoint, early stopping, exact resume.

What it promises:
- Ctrl-C or SIGTERM stops at the next optimizer step (or after the validation under way),
  saves the state, and ``--resume`` ends where the uninterrupted run would have ended.
- The resume state is the run's commit point: it is written last and atomically, at the
  start, at every epoch's end and on a stop. A crash anywhere (a kill, a power cut, in the
  middle of a save) resumes from the last commit; metrics and the saved prompt written after
  it are rolled back to it.
- A non-finite loss or gradient stops training before the optimizer applies it; the last
  commit is what ``--resume`` continues from, with the learning rates the config then gives.

It runs on accelerate, so ``accelerate launch`` scales it out: every rank trains on its shard
of each global batch, only the main process writes, and the schedule counts the sharded
steps. With an FSDP config each process also holds only a share of the model's weights
(``promptkit.backbone.sharding``).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from pydantic import BaseModel
from torch.utils.data import DataLoader, RandomSampler
from transformers import get_scheduler

from promptkit.backbone import sharding
from promptkit.core.config import TrainerConfig
from promptkit.core.data import EncodedDataset, Split
from promptkit.core.inference import evaluate
from promptkit.core.interrupts import StopRequest, stop_signals
from promptkit.core.progress import Report, Tracker, metrics_text, say
from promptkit.core.run_folder import RunFolder
from promptkit.core.trainable import TrainableModule
from promptkit.errors import (
    ConfigError,
    EmptyAnswersWarning,
    TrainingError,
    TrainingInterrupted,
    diverted,
)


@dataclass
class TrainingState:
    """Where training stands; saved in the resume state."""

    epoch: int = 0
    step_in_epoch: int = 0
    optimizer_steps: int = 0
    best: float | None = None
    best_epoch: int = -1
    stale_epochs: int = 0
    epoch_loss: float = 0.0  # sum over the batches of the current epoch
    stopped_early: bool = False
    metrics_lines: int = 0  # lines of metrics.jsonl this state accounts for
    best_document: dict[str, Any] = field(default_factory=dict)  # promptkit.json of the best


class Trainer:
    """Trains the trainable groups of a TrainableModule and writes the run folder.

    Args:
        model: the model (its `trainable` groups decide what trains).
        recipe: saved with every checkpoint.
        config: trainer settings.
        train, validation: the splits (validation picks the best epoch).
        run: the run folder.
        fingerprint: of the untouched backbone, saved with the prompt.
        seed: seeds shuffling and dropout.
    """

    def __init__(
        self,
        model: TrainableModule,
        recipe: BaseModel,
        config: TrainerConfig,
        train: Split,
        validation: Split,
        run: RunFolder,
        fingerprint: str,
        seed: int = 13,
    ) -> None:
        if not model.groups:
            raise TrainingError("nothing to train: set `trainable` (prompts, head, bias, all).")
        self.metric = config.metric or model.task.default_metric
        if self.metric not in model.task.metric_names:
            raise ConfigError(
                f"trainer.metric {self.metric!r} is not measured for {model.task.name}; choose "
                f"one of {', '.join(model.task.metric_names)}."
            )
        self.recipe, self.config = recipe, config
        self.validation, self.run = validation, run
        self.fingerprint, self.seed = fingerprint, seed
        self.accelerator = _accelerator(config, run)
        self.report = Report(config.progress and self.accelerator.is_main_process, run.log)
        if config.gradient_checkpointing:
            model.enable_checkpointing()
        self.train_set = EncodedDataset(model.encode(train.examples, train.labels), train.labels)
        self.validation_encoded = model.encode(validation.examples, validation.labels)
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": params,
                    "lr": config.learning_rate(group),
                    "name": group,
                    "weight_decay": 0.0 if group == "prompts" else config.weight_decay,
                }
                for group, params in model.groups.items()
            ]
        )
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        if sharding.is_sharded(self._unwrapped):
            run.log(sharding.share(self._unwrapped))
        self.batches_per_epoch = len(self._loader(0))  # this rank's share of each epoch
        total = math.ceil(self.batches_per_epoch / config.grad_accum) * config.epochs
        self.scheduler = get_scheduler(
            config.scheduler,
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * total),
            num_training_steps=total,
        )
        self.state = TrainingState()
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_saved: dict[str, torch.Tensor] | None = None  # the best epoch's saved prompt

    @property
    def _unwrapped(self) -> TrainableModule:
        return self.accelerator.unwrap_model(self.model)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train; returns the best validation metrics. The model ends with its best state.

        Args:
            resume: continue from the run folder's resume state (error if it has none).
        Raises:
            TrainingInterrupted: on Ctrl-C or SIGTERM, once the resume state is saved.
        """
        set_seed(self.seed)
        if resume:
            self._restore()
        else:
            self._commit()  # a kill before the first epoch ends resumes from the start
        with stop_signals(self._notice) as stop:
            self._loop(stop)
        if self._best_state is not None:
            sharding.load_whole(self._unwrapped, self._best_state)
        return {"best_epoch": self.state.best_epoch, self.metric: self.state.best}

    def _loop(self, stop: StopRequest) -> None:
        cfg, state = self.config, self.state
        with Tracker(
            "training",
            cfg.epochs * self.batches_per_epoch,
            self.report,
            completed=state.epoch * self.batches_per_epoch + state.step_in_epoch,
            transient=False,
        ) as tracker:
            while state.epoch < cfg.epochs and not state.stopped_early:
                if not self._train_epoch(tracker, stop):
                    self._commit()
                    raise TrainingInterrupted(self._where(), stop.signal)
                state.epoch += 1
                self._end_of_epoch()
                if self._agreed(stop.requested):
                    raise TrainingInterrupted(f"the end of epoch {state.epoch}", stop.signal)

    def _loader(self, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        loader = DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=RandomSampler(self.train_set, generator=generator),
            collate_fn=self._collate,
            generator=generator,  # so creating the loader draws nothing from the global RNG
        )
        return self.accelerator.prepare_data_loader(loader)

    def _collate(self, items: list[tuple[object, Any]]) -> dict[str, torch.Tensor]:
        return self._unwrapped.collate([x for x, _ in items], [y for _, y in items])

    def _train_epoch(self, tracker: Tracker, stop: StopRequest) -> bool:
        """One epoch from where the state stands; False when a stop was asked for (the
        state then stands at the step boundary where it stopped)."""
        state = self.state
        loader = self.accelerator.skip_first_batches(self._loader(state.epoch), state.step_in_epoch)
        self.model.train()
        for batch in loader:
            with self.accelerator.accumulate(self.model):
                loss = self._unwrapped.task.loss(self.model(batch), batch["labels"])
                self._check_finite(loss, "loss")
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    self._check_finite(self._clip_gradients(), "gradient norm")
                    state.optimizer_steps += 1
                self.optimizer.step()
                if self.accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            state.step_in_epoch += 1
            state.epoch_loss += loss.item()
            tracker.advance(note=f"epoch {state.epoch + 1} loss {loss.item():.4f}")
            if self.accelerator.sync_gradients:
                self._log_step(loss.item())
                if self._agreed(stop.requested):
                    return False
        return True

    def _clip_gradients(self) -> torch.Tensor:
        params = [p for params in self._unwrapped.groups.values() for p in params]
        limit = self.config.max_grad_norm or math.inf
        return self.accelerator.clip_grad_norm_(params, limit)

    def _check_finite(self, value: torch.Tensor, what: str) -> None:
        if self.accelerator.scaler is not None or bool(torch.isfinite(value).all()):
            return  # with fp16 loss scaling, overflowing steps are skipped by the scaler
        lower = " ".join(
            f"--set trainer.lr.{g['name']}={g['initial_lr'] / 10:.2g}"
            for g in self.optimizer.param_groups
        )
        message = (
            f"the {what} is {value.item()} at {self._where()}: training diverged and stopped "
            f"before applying it. The run can continue from its last good state "
            f"({self._last_commit()}): lower the learning rates and resume, e.g. "
            f"--resume {lower}. If it diverges from the first steps, look first at the data "
            "(NaN or infinite values in it) and at backbone.dtype (float16 overflows: use "
            "float32 or bfloat16)."
        )
        self.run.log(message)
        raise TrainingError(message)

    def _end_of_epoch(self) -> None:
        """Evaluate, keep the best, decide on early stopping, commit."""
        state, cfg = self.state, self.config
        train_loss = self._agreed_mean(state.epoch_loss / max(state.step_in_epoch, 1))
        state.step_in_epoch, state.epoch_loss = 0, 0.0
        say(f"epoch {state.epoch}: validating ({len(self.validation)} examples)", self.report)
        with diverted(
            EmptyAnswersWarning, lambda line: say(f"epoch {state.epoch}: {line}", self.report)
        ):
            metrics = self.evaluate()
        score = metrics[self.metric]
        improved = self._unwrapped.task.improves(self.metric, score, state.best)
        if improved:
            state.best, state.best_epoch, state.stale_epochs = score, state.epoch, 0
            self._best_state = self._trainable_state()
            self._best_saved = self._unwrapped.trained_state()
            state.best_document = self.run.save_model(
                self._unwrapped,
                self.recipe,
                self.fingerprint,
                {"validation": metrics, "epoch": state.epoch},
                self._best_saved,
            )
        else:
            state.stale_epochs += 1
        record = {
            "epoch": state.epoch,
            "split": "validation",
            "train_loss": train_loss,
            **metrics,
            "lr": self.scheduler.get_last_lr()[0],
            "best": improved,
        }
        self.run.append_metrics(record)
        say(
            f"epoch {state.epoch}: train loss {train_loss:.4f}, validation "
            + metrics_text(metrics)
            + (" (best)" if improved else ""),
            self.report,
        )
        state.metrics_lines += 1
        state.stopped_early = cfg.patience is not None and state.stale_epochs >= cfg.patience
        self._commit()

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current model on the validation split."""
        return evaluate(
            self._unwrapped,
            self.validation,
            self.validation_encoded,
            self.config.eval_batch_size,
            self.accelerator.device,
            self.report,
            wanted=[self.metric],
        )

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters, whole (every process must call)."""
        return {
            n: sharding.whole(p.detach()).clone()
            for n, p in self._unwrapped.named_parameters()
            if p.requires_grad
        }

    def _commit(self) -> None:
        """Save the resume state: the point a resumed run starts from (a sharded model's
        every process gathers; the main one writes)."""
        # every process resumes with the mean of the epoch's losses so far: its own are lost
        progress = {**asdict(self.state), "epoch_loss": self._agreed_mean(self.state.epoch_loss)}
        if not (self.run.writer or sharding.is_sharded(self._unwrapped)):
            return
        self.run.save_resume(
            {
                "trainable": self._trainable_state(),
                "best_state": self._best_state,
                "best_saved": self._best_saved,
                "optimizer": sharding.optimizer_state(self.optimizer.optimizer),
                "scheduler": self.scheduler.state_dict(),
                "progress": progress,
                "rng": _rng_state(),
            }
        )

    def _restore(self) -> None:
        saved = self.run.read_resume()
        if saved is None:
            raise TrainingError(
                f"{self.run.path} has no resume state to continue from: train without --resume."
            )
        sharding.load_whole(self._unwrapped, saved["trainable"])
        self._best_state, self._best_saved = saved["best_state"], saved.get("best_saved")
        sharding.load_optimizer_state(self.optimizer.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainingState(**saved["progress"])
        _set_rng_state(saved["rng"])
        self._apply_learning_rates()
        self._roll_back_files()
        self.run.log(f"resumed from {self._where()}")

    def _roll_back_files(self) -> None:
        """Metrics and the saved prompt as they were at the commit."""
        self.run.keep_metrics(self.state.metrics_lines)
        if self._best_saved is not None:
            self.run.save_prompt(self._best_saved, self.state.best_document)

    def _apply_learning_rates(self) -> None:
        """The config's learning rates replace the saved ones (to resume a diverged run with
        lower ones), at the point of the schedule where the run stands."""
        self.scheduler.base_lrs = [
            self.config.learning_rate(g["name"]) for g in self.optimizer.param_groups
        ]
        for group, base, factor in zip(
            self.optimizer.param_groups,
            self.scheduler.base_lrs,
            (f(self.scheduler.last_epoch) for f in self.scheduler.lr_lambdas),
            strict=True,
        ):
            group["initial_lr"], group["lr"] = base, base * factor

    def _agreed(self, flag: bool) -> bool:
        """A flag every rank agrees on (any rank's True wins), so all stop at one step."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, "max").item())

    def _agreed_mean(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, "mean").item())

    def _where(self) -> str:
        return f"epoch {self.state.epoch + 1}, step {self.state.step_in_epoch}"

    def _last_commit(self) -> str:
        epoch = self.state.epoch
        return f"the end of epoch {epoch}" if epoch else "the start"

    def _log_step(self, loss: float) -> None:
        every = self.config.log_every
        if self.state.optimizer_steps % every == 0:
            self.run.log(f"{self._where()}: loss {loss:.4f}")

    def _notice(self, message: str) -> None:
        self.run.log(message)
        if self.accelerator.is_main_process:
            print(message, flush=True)


def _accelerator(config: TrainerConfig, run: RunFolder) -> Accelerator:
    """This trainer's Accelerator. accelerate keeps one state per process, so a process that
    fits again (with another mixed precision, say) starts it afresh, unless `accelerate
    launch` made it: then it is the launcher's."""
    if "ACCELERATE_MIXED_PRECISION" not in os.environ:  # set by every `accelerate launch`
        AcceleratorState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=_mixed_precision(config.mixed_precision, run),
        cpu=not torch.cuda.is_available(),
    )
    sharding.set_up(accelerator)
    return accelerator


def _mixed_precision(requested: str, run: RunFolder) -> str:
    """fp16 mixed precision needs a GPU: on the CPU it is not used, and the log says so."""
    if requested == "fp16" and not torch.cuda.is_available():
        run.log("trainer.mixed_precision fp16 needs a GPU: not used, training in full precision")
        print("note: trainer.mixed_precision fp16 needs a GPU; training in full precision")
        return "no"
    return requested


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
