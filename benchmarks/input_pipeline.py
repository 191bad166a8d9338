"""Throughput of the input pipelines (images/second) on this machine.

Runs every pipeline available here: tf.data from an image folder (the
CIFAR-10 JPEG copy), the device-resident pipeline on the same folder and on
`digits`, and tf.data on mock TFDS CIFAR-10 (random PNGs generated on the
fly, so it measures decode/augment, not disk reads). Each repeat times
`--steps` train batches after `--warmup` batches (compilation, buffer fill);
the table shows the median over `--repeats`.

With `--train_config`, a second table sets the device-resident pipeline of
that config's dataset (for CIFAR-10, the JPEG folder when there is one)
against the train step it feeds: the step alone on one fixed batch, and the
step fed by the pipeline.

  python benchmarks/input_pipeline.py --batch_size 128 --steps 50
  python benchmarks/input_pipeline.py --train_config configs/cifar10_resnet32_10.py \
      --train_steps 20 --dtype bfloat16
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
from ssc_jax import models
from ssc_jax import optim
from ssc_jax import sharding
from ssc_jax import train
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


def _folder_dir(args) -> str:
  """--folder_dir, else the shared JPEG copy unpacked into .data/ ('' if absent)."""
  if args.folder_dir or not os.path.exists(_ARCHIVE):
    return args.folder_dir
  return archive.unpack_once(_ARCHIVE, os.path.join(_REPO, '.data', 'cifar10-jpeg'))


def _cases(args):
  """(name, config overrides, context) of every pipeline available here."""
  folder_dir = _folder_dir(args)
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


def _timed(run, steps: int, warmup: int, repeats: int) -> float:
  """Median seconds of `steps` calls of `run` (which returns arrays to wait for)."""
  times = []
  for _ in range(repeats):
    for _ in range(warmup):
      jax.block_until_ready(run())
    start = time.perf_counter()
    for _ in range(steps):
      out = run()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _measure(config, mesh, args) -> tuple[float, float]:
  """(seconds to create the input, median images/second)."""
  start = time.perf_counter()
  data = data_lib.create_input(config, mesh)
  setup = time.perf_counter() - start
  stream = data.train_batches(0)
  seconds = _timed(lambda: next(stream), args.steps, args.warmup, args.repeats)
  return setup, args.steps * config.batch_size / seconds


def _feed_vs_step(args, mesh) -> None:
  """Prints the device pipeline, the train step it feeds, and both together."""
  if sharding.dispatch_one_at_a_time():
    sys.exit('--train_config measures asynchronous dispatch: run it on one CPU device or '
             'on accelerators, not on several CPU devices.')
  config = config_lib.load_config_module(args.train_config).get_config()
  config.pipeline = 'device'
  if args.batch_size:
    config.batch_size = args.batch_size
  folder_dir = _folder_dir(args) if config.dataset == 'cifar10' else ''
  if folder_dir:
    config.update(dict(data_source='folder', folder_dir=folder_dir))
  if args.dtype:
    config.model.dtype = args.dtype
  config_lib.check_config(config)
  data_input = data_lib.create_input(config, mesh)
  spec = data_input.spec
  model = models.create_model(config.model, spec.num_classes)
  tx = optim.create_optimizer(config, data_input.steps_per_epoch)
  state = train.create_train_state(model, tx, spec.image_shape, jax.random.key(0), mesh)
  p_train_step, _ = train.jit_steps(config, model, tx, mesh)
  stream = data_input.train_batches(0)
  fixed = next(stream)
  holder = {'state': state}

  def step(batch):
    holder['state'], step_metrics, _ = p_train_step(holder['state'], batch)
    return step_metrics

  timing = dict(steps=args.train_steps, warmup=args.warmup, repeats=args.repeats)
  pipeline = _timed(lambda: next(stream), **timing)
  alone = _timed(lambda: step(fixed), **timing)
  fed = _timed(lambda: step(next(stream)), **timing)
  rate = lambda seconds: args.train_steps * config.batch_size / seconds
  name = os.path.splitext(os.path.basename(args.train_config))[0]
  print(f'\n# images/s: {name} (model.dtype {config.model.dtype}), batch {config.batch_size}, '
        f'{args.train_steps} steps x {args.repeats} repeats (median), {args.warmup} '
        f'warm-up steps per repeat excluded\n')
  print('| config | device pipeline | train step, fixed batch | step fed by pipeline '
        '| pipeline / step |')
  print('|---|---:|---:|---:|---:|')
  print(f'| {name} | {rate(pipeline):,.0f} | {rate(alone):,.0f} | {rate(fed):,.0f} '
        f'| {alone / pipeline:.1f}x |', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=None,
                      help='global batch (default: 128 for the pipelines, the '
                      "config's own with --train_config)")
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--folder_dir', default='',
                      help='image folder of CIFAR-10 (default: unpack the '
                      'shared JPEG copy into .data/)')
  parser.add_argument('--train_config', default='',
                      help='config file whose train step the device pipeline '
                      'feeds (adds the pipeline-against-step table)')
  parser.add_argument('--train_steps', type=int, default=10,
                      help='steps per repeat in the pipeline-against-step table')
  parser.add_argument('--dtype', default='', choices=['', 'float32', 'bfloat16'],
                      help='override model.dtype of --train_config')
  parser.add_argument('--skip_pipelines', action='store_true',
                      help='print only the pipeline-against-step table')
  args = parser.parse_args()

  device = jax.devices()[0]
  mesh = sharding.create_mesh()  # the training mesh
  print(f'# Input pipelines, {datetime.date.today().isoformat()}: '
        f'{platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, '
        f'{jax.device_count()} x {device.platform}:{device.device_kind}, '
        f'jax {jax.__version__}')
  if not args.skip_pipelines:
    batch_size = args.batch_size or 128
    print(f'# batch_size {batch_size}, {args.steps} steps x {args.repeats} '
          f'repeats (median), {args.warmup} warm-up steps per repeat excluded\n')
    print(f'| {"pipeline":<34} | {"setup s":>8} | {"images/s":>10} |')
    print(f'|{"-" * 36}|{"-" * 9}:|{"-" * 11}:|')
    for name, overrides, context in _cases(args):
      config = config_lib.base()
      config.update(dict(overrides, batch_size=batch_size))
      with context():
        setup, rate = _measure(config, mesh, args)
      print(f'| {name:<34} | {setup:8.1f} | {rate:10,.0f} |', flush=True)
  if args.train_config:
    _feed_vs_step(args, mesh)


if __name__ == '__main__':
  main()
