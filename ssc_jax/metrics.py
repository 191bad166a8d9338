"""What a run measures and where it goes: clu metrics, writers, progress.

Writers: clu's default writer (TensorBoard summaries and logs) where
TensorFlow is installed, plain logs where it is not, and always a JSON-lines
file `metrics.jsonl` in the workdir. Only process 0 writes files.
"""

import json
import time
from typing import Any, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from etils import epath


def _top5_correct(logits: jax.Array, labels: jax.Array, **_) -> jax.Array:
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32)


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  """Per-step training metrics, averaged over the examples of all steps merged."""
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  """Evaluation metrics; padded examples are masked out."""
  loss: clu_metrics.Average.from_output('loss')
  accuracy: clu_metrics.Accuracy
  top5_accuracy: clu_metrics.Average.from_fun(_top5_correct)


class _UnbufferedWriter:
  """A writer that keeps nothing back: flushing and closing have nothing to do."""

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class JsonLinesWriter(_UnbufferedWriter):
  """Appends one JSON object per write to a file: {"step": s, "split/name": value}."""

  def __init__(self, path: epath.Path):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    with self._path.open('a') as f:
      f.write(json.dumps(record) + '\n')

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    with self._path.open('a') as f:
      f.write(json.dumps({'hparams': {k: str(v) for k, v in hparams.items()}}) + '\n')


class LoggingWriter(_UnbufferedWriter):
  """Writes scalars to the log (the writer used where clu's needs TensorFlow)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    text = ', '.join(f'{k}={float(np.asarray(v)):.6g}' for k, v in sorted(scalars.items()))
    logging.info('[%d] %s', step, text)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[hparams] %s', ', '.join(f'{k}={v}' for k, v in sorted(hparams.items())))


class Writers:
  """Sends every write to each of several writers."""

  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for writer in self._writers:
      writer.write_hparams(hparams)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def create_writer(workdir: epath.Path) -> Writers:
  """Logs everywhere; TensorBoard (if TensorFlow is there) and JSON lines on process 0."""
  is_main = jax.process_index() == 0
  try:
    from clu import metric_writers  # imports TensorFlow
    base = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  except ImportError as error:
    logging.warning('clu.metric_writers unavailable (%s): logging without TensorBoard', error)
    base = LoggingWriter()
  writers = [base]
  if is_main:
    writers.append(JsonLinesWriter(workdir / 'metrics.jsonl'))
  return Writers(writers)


class Progress:
  """Steps/s and ETA in the log and as 'steps_per_sec' scalars.

  Uses clu.periodic_actions.ReportProgress where it imports (it needs
  TensorFlow); otherwise computes the same figures itself.
  """

  def __init__(self, num_train_steps: int, writer: Writers, every_steps: int):
    self._num_train_steps = num_train_steps
    self._writer = writer
    self._every_steps = every_steps
    try:
      from clu import periodic_actions  # imports TensorFlow
      self._clu = periodic_actions.ReportProgress(
          num_train_steps=num_train_steps, writer=writer, every_steps=every_steps)
    except ImportError:
      self._clu = None
    self._last: Optional[tuple] = None

  def __call__(self, step: int) -> None:
    """Call after each completed step (`step` = steps done so far)."""
    if self._clu is not None:
      self._clu(step)
      return
    now = time.monotonic()
    if self._last is None:
      self._last = (step, now)
      return
    if step % self._every_steps and step != self._num_train_steps:
      return
    last_step, last_time = self._last
    rate = (step - last_step) / max(now - last_time, 1e-9)
    eta_min = (self._num_train_steps - step) / max(rate, 1e-9) / 60
    logging.info('step %d/%d: %.2f steps/s, ETA %.1f min', step, self._num_train_steps, rate, eta_min)
    self._writer.write_scalars(step, {'steps_per_sec': rate})
    self._last = (step, now)
