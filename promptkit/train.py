"""The trainer: AdamW per parameter group, warm-up and decay, accumulation, evaluation each
epoch, best checkpoint, early stopping, atomic checkpoints, resume, Ctrl-C saves and exits.

It runs on accelerate, so ``accelerate launch`` scales it out unchanged.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, RandomSampler
from transformers import get_scheduler

from promptkit.config import TrainerConfig
from promptkit.data import EncodedDataset, Split
from promptkit.errors import TrainingError
from promptkit.inference import evaluate
from promptkit.policy import PolicyModule
from promptkit.run_folder import RunFolder


@dataclass
class TrainingState:
    """Where training stands; saved in the resume state."""

    epoch: int = 0
    step_in_epoch: int = 0
    optimizer_steps: int = 0
    best: float = -math.inf
    best_epoch: int = -1
    stale_epochs: int = 0
    epoch_loss: float = 0.0  # sum over the batches of the current epoch


class Trainer:
    """Trains the trainable groups of a PolicyModule and writes the run folder.

    Args:
        model: the model (its policy decides what trains).
        recipe: saved with every checkpoint.
        config: trainer settings.
        train, validation: the splits (validation picks the best epoch).
        run: the run folder.
        fingerprint: of the untouched backbone, saved with the prompt.
        seed: seeds shuffling and dropout.
    """

    def __init__(
        self,
        model: PolicyModule,
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
        self.model, self.recipe, self.config = model, recipe, config
        self.validation, self.run = validation, run
        self.fingerprint, self.seed = fingerprint, seed
        self.metric = config.metric or model.task.default_metric
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.grad_accum,
            mixed_precision=config.mixed_precision,
            cpu=not torch.cuda.is_available(),
        )
        self.train_set = EncodedDataset(model.encode(train.examples), train.labels)
        self.validation_encoded = model.encode(validation.examples)
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
        steps_per_epoch = math.ceil(
            math.ceil(len(self.train_set) / config.batch_size) / config.grad_accum
        )
        total = steps_per_epoch * config.epochs
        self.scheduler = get_scheduler(
            config.scheduler,
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * total),
            num_training_steps=total,
        )
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.state = TrainingState()
        self._best_state: dict[str, torch.Tensor] | None = None

    def _collate(self, items: list[tuple[object, int]]) -> dict[str, torch.Tensor]:
        return self._unwrapped.collate([x for x, _ in items], [y for _, y in items])

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            n: p.detach().clone() for n, p in self._unwrapped.named_parameters() if p.requires_grad
        }

    @property
    def _unwrapped(self) -> PolicyModule:
        return self.accelerator.unwrap_model(self.model)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train; returns the best validation metrics. The model ends with its best state.

        Args:
            resume: continue from the run folder's resume state (error if it has none).
        """
        set_seed(self.seed)
        if resume:
            self._restore()
        try:
            self._loop()
        except KeyboardInterrupt:
            self._save_resume()
            raise
        if self._best_state is not None:
            self._unwrapped.load_state_dict(self._best_state, strict=False)
        return {"best_epoch": self.state.best_epoch, self.metric: self.state.best}

    def _loop(self) -> None:
        cfg, state = self.config, self.state
        with _progress_bar(cfg.progress) as bar:
            task = bar.add_task(
                "training",
                total=cfg.epochs * self._batches_per_epoch(),
                completed=state.epoch * self._batches_per_epoch() + state.step_in_epoch,
            )
            while state.epoch < cfg.epochs:
                self._train_epoch(bar, task)
                state.epoch += 1
                if self._end_of_epoch():
                    break

    def _batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.config.batch_size)

    def _train_epoch(self, bar: Progress, task: Any) -> None:
        state = self.state
        generator = torch.Generator().manual_seed(self.seed * 1000 + state.epoch)
        loader = DataLoader(
            self.train_set,
            batch_size=self.config.batch_size,
            sampler=RandomSampler(self.train_set, generator=generator),
            collate_fn=self._collate,
            generator=generator,  # so creating the loader draws nothing from the global RNG
        )
        loader = self.accelerator.skip_first_batches(
            self.accelerator.prepare_data_loader(loader), state.step_in_epoch
        )
        self.model.train()
        for batch in loader:
            with self.accelerator.accumulate(self.model):
                loss = self._unwrapped.task.loss(self.model(batch), batch["labels"])
                if not torch.isfinite(loss):
                    self._save_resume()
                    raise TrainingError(
                        f"loss is {loss.item()} at epoch {state.epoch}, step "
                        f"{state.step_in_epoch}: lower the learning rates (trainer.lr) or use "
                        "float32; the last good state is in resume/."
                    )
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:
                    if self.config.max_grad_norm:
                        self.accelerator.clip_grad_norm_(
                            self._trainable(), self.config.max_grad_norm
                        )
                    state.optimizer_steps += 1
                self.optimizer.step()
                if self.accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            state.step_in_epoch += 1
            state.epoch_loss += loss.item()
            bar.update(
                task, advance=1, description=f"epoch {state.epoch + 1} loss {loss.item():.4f}"
            )

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for params in self._unwrapped.groups.values() for p in params]

    def _end_of_epoch(self) -> bool:
        """Evaluate, keep the best, save; True when early stopping says stop."""
        state, cfg = self.state, self.config
        train_loss = state.epoch_loss / max(state.step_in_epoch, 1)
        state.step_in_epoch, state.epoch_loss = 0, 0.0
        metrics = self.evaluate()
        if self.metric not in metrics:
            raise TrainingError(
                f"trainer.metric {self.metric!r} is not measured here; choose one of "
                f"{', '.join(metrics)}."
            )
        score = metrics[self.metric]
        improved = score > state.best
        if improved:
            state.best, state.best_epoch, state.stale_epochs = score, state.epoch, 0
            self._best_state = self._trainable_state()
            self.run.save_model(
                self._unwrapped,
                self.recipe,
                self.fingerprint,
                {"validation": metrics, "epoch": state.epoch},
            )
        else:
            state.stale_epochs += 1
        self.run.append_metrics(
            {
                "epoch": state.epoch,
                "split": "validation",
                "train_loss": train_loss,
                **metrics,
                "lr": self.scheduler.get_last_lr()[0],
                "best": improved,
            },
        )
        self._save_resume()
        return cfg.patience is not None and state.stale_epochs >= cfg.patience

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current model on the validation split."""
        return evaluate(
            self._unwrapped,
            self.validation_encoded,
            self.validation.labels,
            self.config.eval_batch_size,
            self.accelerator.device,
        )

    def _save_resume(self) -> None:
        self.run.save_resume(
            {
                "trainable": self._trainable_state(),
                "best_state": self._best_state,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "progress": asdict(self.state),
                "rng": _rng_state(),
            },
        )

    def _restore(self) -> None:
        saved = self.run.read_resume()
        if saved is None:
            raise TrainingError(
                f"{self.run.path} has no resume state to continue from: train without --resume."
            )
        self._unwrapped.load_state_dict(saved["trainable"], strict=False)
        self._best_state = saved["best_state"]
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainingState(**saved["progress"])
        _set_rng_state(saved["rng"])


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


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
