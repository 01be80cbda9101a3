"""Checkpoints: what a run needs to continue bit for bit after a crash, a kill or Ctrl-C.

A checkpoint holds the model, the optimizer (its moments and iteration count), the number of
steps done, the per-step losses and gradient norms so far, and the trainer's random generator
(the one a data pipeline draws patches from). ``tf.train.CheckpointManager`` writes the files
under temporary names and updates its ``checkpoint`` index last, so a run killed while saving
still has its previous checkpoint. The ``checkpoints/`` folder also marks a run dir as taken:
:func:`claim_run_dir` creates it atomically, so two runs never write into one directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from convlearn.config import flatten
from convlearn.errors import ConvlearnError

FOLDER = "checkpoints"
CONFIG = "config.yaml"  # the config the run started with; Hydra rewrites .hydra/ on every resume

log = logging.getLogger("convlearn")


def claim_run_dir(run_dir: Path, resume: bool, cfg: DictConfig) -> Path:
    """The run's checkpoint folder: created for a new run, required to exist for a resumed one."""
    folder = run_dir / FOLDER
    if resume:
        if not tf.train.latest_checkpoint(str(folder)):
            raise ConvlearnError(
                f"trainer.resume=true: no checkpoint in {folder}; "
                "pass hydra.run.dir=<the directory of the run to resume>"
            )
        changes = config_changes(OmegaConf.load(folder / CONFIG), cfg)
        if changes:
            log.warning("resuming with a config that differs from the run's first one: %s", "; ".join(changes))
        return folder
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # atomic: of two runs started on one directory, exactly one gets it
    except FileExistsError:
        raise ConvlearnError(
            f"hydra.run.dir: {run_dir} already holds a run; "
            "continue it with trainer.resume=true or pick a new directory"
        ) from None
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, folder / CONFIG)
    return folder


def config_changes(old: DictConfig, new: DictConfig) -> list[str]:
    """``key: old -> new`` for every value that differs, except ``trainer.resume`` itself."""
    before, after = (flatten(OmegaConf.to_container(c, resolve=True)) for c in (old, new))
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in sorted(before.keys() | after.keys())
        if key != "trainer.resume" and before.get(key) != after.get(key)
    ]


class Checkpoints:
    """Saves and restores one run's training state in ``folder``, keeping the newest ``keep``."""

    def __init__(
        self,
        folder: Path,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        rng: tf.random.Generator,
        keep: int = 2,
    ) -> None:
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        # Variable length, so that a resumed run may train for more steps than it first asked for.
        self.losses = tf.Variable(tf.zeros([0], tf.float64), shape=tf.TensorShape([None]), trainable=False)
        self.grad_norms = tf.Variable(tf.zeros([0], tf.float64), shape=tf.TensorShape([None]), trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, rng=rng, step=self.step, losses=self.losses, grad_norms=self.grad_norms
        )
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(folder), max_to_keep=keep)
        self.saved_step = -1

    def save(self, losses: list[float], grad_norms: list[float]) -> str:
        """Save the state after ``len(losses)`` steps (once per step count) and return its path."""
        if len(losses) == self.saved_step:
            return self.manager.latest_checkpoint
        self.step.assign(len(losses))
        self.losses.assign(tf.constant(losses, tf.float64, shape=[len(losses)]))
        self.grad_norms.assign(tf.constant(grad_norms, tf.float64, shape=[len(grad_norms)]))
        path = self.manager.save(checkpoint_number=len(losses))
        self.saved_step = len(losses)
        return path

    def restore(self) -> tuple[list[float], list[float]]:
        """Load the newest checkpoint into the model, optimizer and generator; return its history."""
        path = self.manager.latest_checkpoint
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise ConvlearnError(
                f"trainer.resume: {path} does not fit this config's model or optimizer "
                f"({str(err).splitlines()[0]}); resume with the config the run started with"
            ) from None
        self.saved_step = int(self.step.numpy())
        return [float(x) for x in self.losses.numpy()], [float(x) for x in self.grad_norms.numpy()]
