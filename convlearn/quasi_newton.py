"""Full-batch L-BFGS: a quasi-Newton trainer for models whose loss is (close to) a quadratic.

Learning a linear kernel is least squares: the loss is a quadratic whose Hessian is the input's
patch second-moment matrix. On a photograph that matrix is ill-conditioned (the mean and the low
frequencies dominate; condition numbers in the thousands), so first-order steps crawl along the
directions a smooth picture barely excites and Adam ends 300 steps with the kernel's high
frequencies still at their random start, while a step size tuned for one image makes gradient
descent diverge on a brighter one. L-BFGS builds a curvature model from its last ``memory``
steps and takes the step a line search accepts: it needs no learning rate, follows the data's
scale, and never takes a step that raises the loss or makes it non-finite.

It runs behind the :class:`convlearn.training.Trainer` loop (progress, logger, validation, the
non-finite guard, checkpoints, resuming, Ctrl-C): one trainer step is one L-BFGS iteration,
compiled into one ``tf.function`` with its line search, so the host syncs once per iteration.
Its state (the curvature pairs and the last point's loss and gradient) lives in
:class:`QuasiNewtonState`, which takes the optimizer's place in checkpoints, so a resumed run
continues exactly. The ``optimizer`` config is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from convlearn.data import Batch
from convlearn.errors import ConvlearnError
from convlearn.geometry import Crops
from convlearn.training import History, StepLogger, Trainer

# Sufficient decrease (Armijo) constant and the line search's shrink factor per rejected trial.
ARMIJO = 1e-4
SHRINK = 0.5
# A step whose end slope is below this fraction of its start slope is close enough to the line's
# minimum; otherwise the secant step is tried, at most this many times the accepted one.
CURVATURE = 0.1
MAX_STRETCH = 10.0


class QuasiNewtonState(tf.Module):
    """What L-BFGS carries from one iteration to the next, as variables (checkpointed with the model).

    ``s``/``y``: the last ``memory`` steps and gradient changes (a ring buffer, ``pairs`` written
    so far); ``point``/``loss``/``grad``: the last accepted point with its loss and gradient, so
    that an iteration starting there needs no extra evaluation; ``learning_rate``: the step
    length the last line search accepted (what the dashboards show as the learning rate).
    """

    def __init__(self, size: int, memory: int) -> None:
        super().__init__(name="lbfgs")
        self.memory = memory
        self.s = tf.Variable(tf.zeros([memory, size]), trainable=False, name="s")
        self.y = tf.Variable(tf.zeros([memory, size]), trainable=False, name="y")
        self.rho = tf.Variable(tf.zeros([memory]), trainable=False, name="rho")
        self.pairs = tf.Variable(0, dtype=tf.int64, trainable=False, name="pairs")
        self.point = tf.Variable(tf.fill([size], float("nan")), trainable=False, name="point")
        self.loss = tf.Variable(0.0, trainable=False, name="loss")
        self.grad = tf.Variable(tf.zeros([size]), trainable=False, name="grad")
        self.learning_rate = tf.Variable(0.0, trainable=False, name="learning_rate")
        # Set when even a steepest-descent line search found no lower loss at ``point``: the loss is at
        # its floating-point floor there, and further iterations would only repeat that search.
        self.converged = tf.Variable(False, trainable=False, name="converged")

    def direction(self, grad: tf.Tensor) -> tf.Tensor:
        """``-H grad`` by the two-loop recursion over the stored pairs (steepest descent without any)."""
        count = tf.minimum(self.pairs, self.memory)
        newest = [tf.math.floormod(self.pairs - 1 - i, self.memory) for i in range(self.memory)]
        q, alphas = grad, []
        for i, index in enumerate(newest):
            alpha = tf.where(i < count, self.rho[index] * tf.tensordot(self.s[index], q, 1), 0.0)
            q -= alpha * self.y[index]
            alphas.append(alpha)
        last_s, last_y = self.s[newest[0]], self.y[newest[0]]
        # The initial Hessian's scale from the newest pair: what makes the unit step fit the data.
        gamma = tf.where(count > 0, tf.tensordot(last_s, last_y, 1) / tf.tensordot(last_y, last_y, 1), 1.0)
        r = gamma * q
        for i in reversed(range(self.memory)):
            index = newest[i]
            beta = self.rho[index] * tf.tensordot(self.y[index], r, 1)
            r += tf.where(i < count, alphas[i] - beta, 0.0) * self.s[index]
        return -r

    def remember(self, step: tf.Tensor, change: tf.Tensor) -> None:
        """Store a step and its gradient change, if the curvature along it is positive."""
        curvature = tf.tensordot(step, change, 1)
        if curvature > 1e-10 * tf.tensordot(change, change, 1):
            index = tf.math.floormod(self.pairs, self.memory)
            self.s[index].assign(step)
            self.y[index].assign(change)
            self.rho[index].assign(1.0 / curvature)
            self.pairs.assign_add(1)


class LBFGS(Trainer):
    """The trainer with every step an L-BFGS iteration on the full batch (``trainer=lbfgs``).

    ``memory``: curvature pairs kept (10 is the usual choice); ``max_evaluations``: loss
    evaluations one line search may try, halving the step each time, before it gives up, forgets
    the curvature pairs and leaves the weights as they were. The other arguments are the
    :class:`Trainer`'s; full-frame data on one device in float32 only.
    """

    def __init__(
        self, memory: int = 10, max_evaluations: int = 20, steps: int = 300, jit_compile: bool = False, **settings: Any
    ) -> None:
        if memory < 1:
            raise ConvlearnError(f"trainer.memory: L-BFGS keeps at least 1 curvature pair, got {memory}")
        if max_evaluations < 1:
            raise ConvlearnError(f"trainer.max_evaluations: a line search needs at least 1, got {max_evaluations}")
        if jit_compile not in (True, False):
            raise ConvlearnError(f"trainer.jit_compile: trainer=lbfgs takes true or false, got {jit_compile!r}")
        for key, alone in (("strategy", None), ("precision", "float32")):
            if settings.get(key, alone) != alone:
                raise ConvlearnError(f"trainer.{key}: trainer=lbfgs trains on one device in float32, got {settings[key]!r}")
        super().__init__(steps=steps, jit_compile=jit_compile, **settings)
        self.memory = memory
        self.max_evaluations = max_evaluations

    def fit(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer | None,
        batch: Batch | Iterable,
        logger: StepLogger | None = None,
        validation: Sequence[Batch] = (),
        checkpoint_dir: Path | None = None,
    ) -> History:
        """As :meth:`Trainer.fit`, on a full-frame ``batch``; ``optimizer`` is ignored (L-BFGS
        keeps its own state, checkpointed in its place)."""
        if not isinstance(batch, Batch):
            raise ConvlearnError(
                "trainer=lbfgs: L-BFGS needs the same full batch at every step, but the data come as random "
                "patches; unset data.patch_size"
            )
        size = sum(int(tf.size(variable)) for variable in model.trainable_variables)
        state = QuasiNewtonState(size, self.memory)
        return super().fit(model, state, batch, logger, validation, checkpoint_dir)

    def _steps(self, model: keras.Model, optimizer: QuasiNewtonState, crops: Crops) -> dict[bool, Callable]:
        return {self.jit_compile: lbfgs_step(model, optimizer, crops, self.max_evaluations, self.jit_compile)}


def lbfgs_step(
    model: keras.Model, state: QuasiNewtonState, crops: Crops, max_evaluations: int = 20, jit_compile: bool = False
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
    """One L-BFGS iteration as a ``tf.function``, with the training step's contract: returns the
    loss and gradient norm at the weights it started from and whether both were finite; a
    non-finite start changes nothing. A trial point whose loss is non-finite or not lower by the
    Armijo condition is rejected and the step halved, so the loss never rises."""
    rows, cols = crops.model
    variables = model.trainable_variables
    shapes = [variable.shape for variable in variables]
    sizes = [shape.num_elements() for shape in shapes]

    def assign(point: tf.Tensor) -> None:
        for variable, part, shape in zip(variables, tf.split(point, sizes), shapes):
            variable.assign(tf.reshape(part, shape))

    def loss_and_grad(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            prediction = tf.cast(model(inputs, training=True)[:, rows, cols, :], tf.float32)
            loss = tf.reduce_mean(tf.square(prediction - targets))
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, tf.concat([tf.reshape(g, [-1]) for g in grads], 0)

    def finite(loss: tf.Tensor, grad: tf.Tensor) -> tf.Tensor:
        return tf.math.is_finite(loss) & tf.reduce_all(tf.math.is_finite(grad))

    @tf.function(jit_compile=jit_compile)
    def step(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        start = tf.concat([tf.reshape(variable, [-1]) for variable in variables], 0)
        cached = tf.reduce_all(start == state.point)
        if cached:
            loss, grad = tf.identity(state.loss), tf.identity(state.grad)
        else:  # the first iteration, or weights changed since (LSUV, a restored checkpoint)
            loss, grad = loss_and_grad(inputs, targets)
            state.converged.assign(False)
        ok = finite(loss, grad)
        if ok and not (cached and state.converged):
            direction = state.direction(grad)
            slope = tf.tensordot(grad, direction, 1)
            if not slope < 0:  # the curvature model went stale: start over from steepest descent
                state.pairs.assign(0)
                direction, slope = -grad, -tf.tensordot(grad, grad, 1)
            # Without curvature pairs the step's scale is unknown: the first trial moves each weight ~1.
            rate = tf.where(state.pairs > 0, 1.0, tf.minimum(1.0, 1.0 / tf.reduce_sum(tf.abs(grad))))
            accepted = tf.constant(False)
            new_loss, new_grad = loss, grad
            for _ in tf.range(max_evaluations):
                assign(start + rate * direction)
                new_loss, new_grad = loss_and_grad(inputs, targets)
                accepted = finite(new_loss, new_grad) & (new_loss <= loss + ARMIJO * rate * slope)
                if accepted:
                    break
                rate *= SHRINK
            if accepted:
                # Along the line a quadratic's minimum is where the slope's secant crosses zero: one more
                # evaluation makes the step exact for least squares (L-BFGS then converges like conjugate
                # gradients), and a point no lower than the accepted one is not taken.
                new_slope = tf.tensordot(new_grad, direction, 1)
                if new_slope > slope and tf.abs(new_slope) > CURVATURE * tf.abs(slope):
                    secant = rate * tf.minimum(slope / (slope - new_slope), MAX_STRETCH)
                    assign(start + secant * direction)
                    secant_loss, secant_grad = loss_and_grad(inputs, targets)
                    if finite(secant_loss, secant_grad) & (secant_loss < new_loss):
                        rate, new_loss, new_grad = secant, secant_loss, secant_grad
                    else:
                        assign(start + rate * direction)
                state.remember(rate * direction, new_grad - grad)
                state.point.assign(start + rate * direction)
                state.loss.assign(new_loss)
                state.grad.assign(new_grad)
                state.learning_rate.assign(rate)
            else:  # no decrease found: stay, and forget the pairs that proposed this direction
                assign(start)
                state.converged.assign(state.pairs == 0)
                state.pairs.assign(0)
                state.point.assign(start)
                state.loss.assign(loss)
                state.grad.assign(grad)
                state.learning_rate.assign(0.0)
        return loss, tf.linalg.global_norm([grad]), ok

    return step
