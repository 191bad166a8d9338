"""What a run measures and where it goes: clu metrics, writers, the progress line.

Writers: the log (every process), and on process 0 TensorBoard event files and
a JSON-lines file `metrics.jsonl` in the workdir. TensorBoard files are written
with the `tensorboard` package alone, so they exist whether or not TensorFlow
is installed.
"""

import collections
import datetime
import json
import os
import socket
import time
from typing import Any, Dict, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metrics as clu_metrics
from etils import epath
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from tensorboard.summary.writer import record_writer

from ssc_jax import console

# Histograms: each kernel is sampled (evenly strided) down to this many values.
HISTOGRAM_SAMPLES = 65_536


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
  """A writer that keeps nothing back and writes no histograms."""

  def write_histograms(self, step: int, params: Any) -> None:
    pass

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
  """Writes scalars and hyperparameters to the log (the log file, not the console)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    text = ', '.join(f'{k}={float(np.asarray(v)):.6g}' for k, v in sorted(scalars.items()))
    logging.info('[%d] %s', step, text)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[hparams] %s', ', '.join(f'{k}={v}' for k, v in sorted(hparams.items())))


class TensorBoardWriter:
  """Scalars, hyperparameters and kernel histograms as a TensorBoard event file.

  Needs only the `tensorboard` package: its record writer and summary protos
  (not its EventFileWriter, which imports TensorFlow where it is installed).
  Scalars are `simple_value`s, as TensorBoard's scalar dashboard reads them.
  """

  def __init__(self, logdir: epath.Path):
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.ssc_jax')
    self._file = (epath.Path(logdir) / name).open('wb')
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event, step: int = 0) -> None:
    event.wall_time = time.time()
    event.step = int(step)
    self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(np.asarray(v)))
              for k, v in sorted(scalars.items())]
    self._write(event_pb2.Event(summary=summary_pb2.Summary(value=values)), step)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The HParams dashboard's record of this run (non-scalar values as text)."""
    plain = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
             for k, v in hparams.items()}
    self._write(event_pb2.Event(summary=hparams_summary.hparams_pb(plain)))

  def write_histograms(self, step: int, params: Any) -> None:
    """A histogram of each kernel in `params` (a strided sample of HISTOGRAM_SAMPLES)."""
    for name, values in kernels(params).items():
      values = values.reshape(-1)
      values = values[::max(1, values.size // HISTOGRAM_SAMPLES)][:HISTOGRAM_SAMPLES]
      self._write(event_pb2.Event(summary=histogram_summary.histogram_pb(name, values)), step)

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def kernels(params: Any) -> Dict[str, np.ndarray]:
  """{'conv0/kernel': values, ...}: the conv and Dense kernels, on the host.

  Reads this process's copy of each (replicated) array.
  """
  found = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if name.rsplit('/', 1)[-1] == 'kernel':
      data = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
      found[name] = np.asarray(data, np.float32)
  return found


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

  def write_histograms(self, step: int, params: Any) -> None:
    for writer in self._writers:
      writer.write_histograms(step, params)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()


def create_writer(workdir: epath.Path) -> Writers:
  """The log everywhere; TensorBoard and JSON lines in `workdir` on process 0."""
  writers = [LoggingWriter()]
  if jax.process_index() == 0:
    writers += [TensorBoardWriter(workdir), JsonLinesWriter(workdir / 'metrics.jsonl')]
  return Writers(writers)


class Progress:
  """The console's progress line at each logging step, and the throughput scalars.

  Images/second count training steps only (not compilation, evaluation or
  checkpointing). The ETA uses the (lower) median wall time per step of the
  last `ETA_INTERVALS` intervals between lines, everything included, and of
  the training alone: the median leaves out one-time costs such as compiling
  the evaluation.
  """

  ETA_INTERVALS = 20

  def __init__(self, num_steps: int, steps_per_epoch: int, batch_size: int, writer: Writers):
    self._num_steps = num_steps
    self._steps_per_epoch = steps_per_epoch
    self._batch_size = batch_size
    self._writer = writer
    self._last: Optional[tuple] = None  # (step, wall time) of the last line
    self._intervals = collections.deque(maxlen=self.ETA_INTERVALS)  # wall seconds per step
    self._timed = (0, 0.0)  # training steps and seconds at the last line

  def report(self, step: int, scalars: Mapping[str, Any], timed_steps: int,
             timed_seconds: float) -> None:
    """Shows the line for `step`; `timed_*`: training steps and seconds so far."""
    now = time.monotonic()
    train_seconds = timed_seconds - self._timed[1]
    steps_per_sec = (timed_steps - self._timed[0]) / train_seconds if train_seconds > 0 else None
    self._timed = (timed_steps, timed_seconds)
    if self._last is not None and step > self._last[0]:
      self._intervals.append((now - self._last[1]) / (step - self._last[0]))
    self._last = (step, now)
    samples = sorted(list(self._intervals) + ([1 / steps_per_sec] if steps_per_sec else []))
    seconds_per_step = samples[(len(samples) - 1) // 2] if samples else None
    parts = [f'step {step:>{len(str(self._num_steps))}}/{self._num_steps}',
             f'epoch {step / self._steps_per_epoch:.2f}']
    parts += [f'{label} {float(np.asarray(scalars[key])):{spec}}' for key, label, spec in
              (('train_loss', 'loss', '.4f'), ('train_accuracy', 'acc', '.4f'),
               ('learning_rate', 'lr', '.4g')) if key in scalars]
    if steps_per_sec:
      parts.append(f'{steps_per_sec * self._batch_size:,.0f} img/s')
      self._writer.write_scalars(step, {'steps_per_sec': steps_per_sec,
                                        'images_per_sec': steps_per_sec * self._batch_size})
    if seconds_per_step is not None and step < self._num_steps:
      eta = datetime.timedelta(seconds=round((self._num_steps - step) * seconds_per_step))
      parts.append(f'ETA {eta}')
    console.show('  '.join(parts))


_SHORT_METRIC_NAMES = {'accuracy': 'acc', 'top5_accuracy': 'top5'}


def format_evaluation(step: int, epoch: float, results: Mapping[str, float]) -> str:
  """One line: 'eval step 21 (epoch 1): validation loss .. acc .. | test loss .. acc ..'."""
  splits: Dict[str, list] = {}
  for key, value in results.items():
    split, _, metric = key.partition('_')
    splits.setdefault(split, []).append(f'{_SHORT_METRIC_NAMES.get(metric, metric)} {value:.4f}')
  return (f'eval  step {step} (epoch {round(epoch, 2):g}): '
          + ' | '.join(f'{split} ' + ' '.join(parts) for split, parts in splits.items()))
