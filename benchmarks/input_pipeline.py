"""Throughput of the input pipelines (images/second) on this machine.

Runs every pipeline available here: tf.data from an image folder (the
CIFAR-10 JPEG copy), the device-resident pipeline on the same folder and on
`digits`, and tf.data on mock TFDS CIFAR-10 (random PNGs generated on the
fly, so it measures decode/augment, not disk reads). Each repeat times
`--steps` train batches after `--warmup` batches (compilation, buffer fill);
the table shows the median over `--repeats`.

  python benchmarks/input_pipeline.py --batch_size 128 --steps 50
"""

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
import ssc_jax.data as data_lib
from ssc_jax import config_lib
from ssc_jax.data import archive

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ARCHIVE = os.path.join(_REPO, '..', 'shared', 'data', 'cifar10-jpeg.tar.xz')


def _has_tf() -> bool:
  try:
    import tensorflow  # pylint: disable=unused-import
  except ImportError:
    return False
  return True


@contextlib.contextmanager
def _mock_tfds():
  import tensorflow_datasets as tfds
  prepared = tfds.core.DatasetBuilder.is_prepared
  tfds.core.DatasetBuilder.is_prepared = lambda self: True
  try:
    with tfds.testing.mock_data(num_examples=5000,
                                policy=tfds.testing.MockPolicy.USE_CODE):
      yield
  finally:
    tfds.core.DatasetBuilder.is_prepared = prepared


def _cases(args):
  """(name, config overrides, context) of every pipeline available here."""
  folder_dir = args.folder_dir
  if not folder_dir and os.path.exists(_ARCHIVE):
    folder_dir = archive.unpack_once(_ARCHIVE,
                                     os.path.join(_REPO, '.data', 'cifar10-jpeg'))
  cases = []
  folder = dict(dataset='cifar10', data_source='folder', folder_dir=folder_dir)
  if folder_dir and _has_tf():
    cases.append(('tf_data, CIFAR-10 JPEG folder', dict(folder, pipeline='tf_data'),
                  contextlib.nullcontext))
  if folder_dir:
    cases.append(('device, CIFAR-10 JPEG folder', dict(folder, pipeline='device'),
                  contextlib.nullcontext))
  if _has_tf():
    cases.append(('tf_data, mock TFDS cifar10 (PNG)',
                  dict(dataset='cifar10', pipeline='tf_data',
                       shuffle_buffer_size=5000), _mock_tfds))
  cases.append(('device, digits', dict(dataset='digits', pipeline='device'),
                contextlib.nullcontext))
  return cases


def _measure(config, mesh, args) -> tuple[float, float]:
  """(seconds to create the input, median images/second)."""
  start = time.perf_counter()
  data = data_lib.create_input(config, mesh)
  setup = time.perf_counter() - start
  rates = []
  stream = data.train_batches(0)
  for _ in range(args.repeats):
    for _ in range(args.warmup):
      jax.block_until_ready(next(stream))
    start = time.perf_counter()
    for _ in range(args.steps):
      batch = next(stream)
    jax.block_until_ready(batch)
    rates.append(args.steps * config.batch_size / (time.perf_counter() - start))
  return setup, statistics.median(rates)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--folder_dir', default='',
                      help='image folder of CIFAR-10 (default: unpack the '
                      'shared JPEG copy into .data/)')
  args = parser.parse_args()

  device = jax.devices()[0]
  mesh = jax.make_mesh((jax.device_count(),), ('data',))
  print(f'# Input pipelines, {datetime.date.today().isoformat()}: '
        f'{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, '
        f'{jax.device_count()} x {device.platform}:{device.device_kind}, '
        f'jax {jax.__version__}')
  print(f'# batch_size {args.batch_size}, {args.steps} steps x {args.repeats} '
        f'repeats (median), {args.warmup} warm-up steps per repeat excluded\n')
  print(f'| {"pipeline":<34} | {"setup s":>8} | {"images/s":>10} |')
  print(f'|{"-" * 36}|{"-" * 9}:|{"-" * 11}:|')
  for name, overrides, context in _cases(args):
    config = config_lib.base()
    config.update(dict(overrides, batch_size=args.batch_size))
    with context():
      setup, rate = _measure(config, mesh, args)
    print(f'| {name:<34} | {setup:8.1f} | {rate:10,.0f} |', flush=True)


if __name__ == '__main__':
  main()
