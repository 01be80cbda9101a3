"""Checkpoints: what a run needs to continue bit for bit after a crash, a kill or Ctrl-C.

A checkpoint holds the model, the optimizer (its moments and iteration count), the number of
steps done, the per-step losses and gradient norms so far, and the trainer's random generator
(the one a data pipeline draws patches from). ``tf.train.CheckpointManager`` writes the files
under temporary names and updates its ``checkpoint`` index last, so a run killed while saving
still has its previous checkpoint. The ``checkpoints/`` folder also marks a run dir as taken:
:func:`claim_run_dir` creates it atomically, so two runs never write into one directory.

Beside the checkpoints the folder records which compiled step the run trains with (XLA or the
graph, see ``trainer.jit_compile``): the two round differently, so a resume continues bit for bit
only with the step the run started with, which ``auto`` would otherwise take from this machine's
record of picks (absent on another machine, or after that record was cleared).

A resume uses the newest checkpoint that reads back whole: a checkpoint with a missing index or a
truncated data file is passed over (with a warning) for the one before it; a run killed before its
first checkpoint starts again from step 0.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import keras
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from convlearn.config import flatten
from convlearn.errors import ConvlearnError
from convlearn.run_dirs import FOLDER, check_writable, take_over

CONFIG = "config.yaml"  # the config the run started with; Hydra rewrites .hydra/ on every resume
STEP = "compiled_step.json"  # {"jit_compile": true|false}: the step the run trains with

log = logging.getLogger("convlearn")


def claim_run_dir(run_dir: Path, resume: bool, cfg: DictConfig) -> Path:
    """The run's checkpoint folder: created for a new run, required to exist for a resumed one."""
    folder = run_dir / FOLDER
    if resume:
        if not folder.is_dir():
            raise ConvlearnError(
                f"trainer.resume=true: no checkpoint in {folder}; "
                "pass hydra.run.dir=<the directory of the run to resume>"
            )
        if not saved_checkpoints(folder):
            log.warning("no complete checkpoint in %s (the run stopped before writing one): starting at step 0", folder)
        if (folder / CONFIG).is_file():
            changes = config_changes(OmegaConf.load(folder / CONFIG), cfg)
            if changes:
                log.warning("resuming with a config that differs from the run's first one: %s", "; ".join(changes))
        else:
            log.warning("%s is missing, so this config cannot be compared with the run's first one", folder / CONFIG)
        return folder
    check_writable(run_dir, "hydra.run.dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # atomic: of two runs started on one directory, exactly one gets it
    except FileExistsError:
        if not take_over(folder):  # claimed by this run's own Hydra callback, or left by a dead one
            raise ConvlearnError(
                f"hydra.run.dir: {run_dir} already holds a run; "
                "continue it with trainer.resume=true or pick a new directory"
            ) from None
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    os.replace(tmp, folder / CONFIG)
    return folder


def saved_checkpoints(folder: Path) -> list[str]:
    """The checkpoints in ``folder`` that have their index file, newest first (``.../ckpt-N``).

    Read from the files rather than from the ``checkpoint`` state file, which names only the
    newest and so loses the earlier ones when the newest's index is gone."""
    numbers = [int(m.group(1)) for f in folder.glob("ckpt-*.index") if (m := re.fullmatch(r"ckpt-(\d+)\.index", f.name))]
    return [str(folder / f"ckpt-{n}") for n in sorted(numbers, reverse=True)]


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
        self.folder = Path(folder)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(folder), max_to_keep=keep)
        self.saved_step, self.saved_path = -1, ""

    def save(self, losses: list[float], grad_norms: list[float]) -> str:
        """Save the state after ``len(losses)`` steps (once per step count) and return its path."""
        if len(losses) == self.saved_step:
            return self.saved_path
        self.step.assign(len(losses))
        self.losses.assign(tf.constant(losses, tf.float64, shape=[len(losses)]))
        self.grad_norms.assign(tf.constant(grad_norms, tf.float64, shape=[len(grad_norms)]))
        self.saved_path = self.manager.save(checkpoint_number=len(losses))
        self.saved_step = len(losses)
        return self.saved_path

    def record_step(self, jit_compile: bool) -> None:
        """Record that the run trains with the step XLA compiles (``jit_compile``) or the graph's."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (STEP + ".tmp")
        tmp.write_text(json.dumps({"jit_compile": bool(jit_compile)}) + "\n")
        os.replace(tmp, self.folder / STEP)

    def recorded_step(self) -> bool | None:
        """The step the run recorded (see :meth:`record_step`); None when it recorded none (a run
        from before the record existed) or the record cannot be read (with a warning)."""
        path = self.folder / STEP
        if not path.exists():
            return None
        try:
            value = json.loads(path.read_text()).get("jit_compile")
        except (OSError, ValueError, AttributeError) as err:
            value = err
        if not isinstance(value, bool):
            log.warning("%s cannot be read (%s); the run's compiled step is chosen as for a new run", path, value)
            return None
        return value

    def restore(self) -> tuple[list[float], list[float]]:
        """Load the newest checkpoint that reads back whole into the model, optimizer and
        generator; return its history (empty when there is none: the run starts at step 0)."""
        damaged = []
        for path in saved_checkpoints(self.folder):
            status = None
            try:
                status = self.checkpoint.restore(path)
                status.assert_existing_objects_matched()
            except (AssertionError, ValueError) as err:  # read, but made for another model or optimizer
                _quiet_unrestored_values()
                raise ConvlearnError(
                    f"trainer.resume: {path} does not fit this config's model or optimizer "
                    f"({str(err).splitlines()[0]}); resume with the config the run started with"
                ) from None
            except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways (IndexError, DataLoss...)
                if status is not None:
                    status.expect_partial()
                log.warning("checkpoint %s cannot be read (%s: %s); trying the one before", path, type(err).__name__,
                            str(err).splitlines()[0] if str(err) else "")
                damaged.append(path)
                continue
            self.saved_step, self.saved_path = int(self.step.numpy()), path
            return [float(x) for x in self.losses.numpy()], [float(x) for x in self.grad_norms.numpy()]
        if damaged:
            raise ConvlearnError(
                f"trainer.resume: no checkpoint in {self.folder} can be read ({', '.join(damaged)} are damaged); "
                "start a new run in another directory"
            )
        return [], []


class _UnrestoredValues(logging.Filter):
    """Drops TensorFlow's warnings about checkpoint values a refused restore left unused (one
    line per variable, printed when the half-done restore is garbage collected): the refusal
    itself already says, in one line, that the checkpoint does not fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Value in checkpoint could not be found", "Detecting that an object"))


def _quiet_unrestored_values() -> None:
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _UnrestoredValues) for f in logger.filters):
        logger.addFilter(_UnrestoredValues())
