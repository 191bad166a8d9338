"""Whole-network speed: each SSC config's train step and eval forward against its dense config.

    python benchmarks/network_speed.py [--configs=cifar10_resnet32_10,cifar10_vgg19_10]
        [--batch=N] [--eval_batch=N] [--dtype=float32|bfloat16] [--repeats=10]
        [--lowering=auto] [--no_eval] [--out=FILE]

For every config and its `_dense` baseline (cifar10_resnet32_10 ->
cifar10_resnet32_dense, the ablations -> cifar100_resnet32_dense,
imagenet_r50_* -> imagenet_r50_dense) in one process: the lowering plan
(`ssc_jax.tuning.decide_plan`: measured per layer and pass, its cost in
seconds; the dense baselines run plain convolutions, as `nn.Conv`), then the
median milliseconds of a train step and of an eval forward on random images
of the dataset's shape (warm-up and compilation excluded), images/second,
and SSC's time over dense's next to the MAC fraction (the ideal ratio).
Without --batch each config keeps its own batch size; the eval forward runs
at --eval_batch, else at the train step's batch. Prints a markdown table
headed by the machine, card, versions and date.
"""

import argparse
import datetime
import platform
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import models
from ssc_jax import optim
from ssc_jax import sharding
from ssc_jax import train
from ssc_jax import tuning
from ssc_jax.ssc import autotune
from ssc_jax.ssc import lowerings

CONFIG_DIR = budget.CONFIG_DIR


class Steps(NamedTuple):
  """One config's compiled steps on random batches, ready to time or profile."""
  config: Any
  plan: autotune.Plan
  tuning_s: float
  train: Callable[[], Any]  # one train step (the state carried over); returns its loss
  evaluate: Callable[[], Any]  # one eval forward; returns its loss


def prepare(name: str, args, lowering: str) -> Steps:
  """Config `name` under `lowering`: its plan (timed), state, and train and eval steps."""
  config = config_lib.load_config_module(CONFIG_DIR / f'{name}.py').get_config()
  config.lowering = lowering
  if args.batch:
    config.batch_size = args.batch
  config.eval_batch_size = args.eval_batch or config.batch_size
  if args.dtype:
    config.model.dtype = args.dtype
  num_classes, image_shape = budget.dataset_facts(config.dataset)
  model = models.create_model(budget.resolve_ticket(config.model, num_classes, image_shape[-1]),
                              num_classes)
  start = time.perf_counter()
  plan = (tuning.decide_plan(model, config, image_shape) if config.lowering == 'auto'
          else autotune.Plan(force=config.lowering))
  tuning_s = time.perf_counter() - start
  mesh = sharding.create_mesh()
  tx = optim.create_optimizer(config, steps_per_epoch=100)
  with autotune.installed(tuning.init_plan(plan)):  # the init program of a training run
    state = train.create_train_state(model, tx, image_shape, jax.random.key(0), mesh)
  train_step, eval_step = train.jit_steps(config, model, tx, mesh)
  rng = np.random.default_rng(0)

  def batch(size, mask=False):
    out = {'image': jnp.asarray(rng.normal(size=(size,) + image_shape), jnp.float32),
           'label': jnp.asarray(rng.integers(0, num_classes, size), jnp.int32)}
    if mask:
      out['mask'] = jnp.ones((size,), bool)
    return jax.device_put(out, sharding.batch_sharded(mesh))

  train_batch, eval_batch = batch(config.batch_size), batch(config.eval_batch_size, True)
  holder = {'state': state}

  def step():
    holder['state'], step_metrics, _ = train_step(holder['state'], train_batch)
    return step_metrics.loss.total

  def evaluate():
    return eval_step(holder['state'], eval_batch).loss.total

  return Steps(config, plan, tuning_s, step, evaluate)


def measure(name: str, args, lowering: str) -> dict:
  """Tuning seconds, train-step and eval-forward ms of one config under `lowering`."""
  steps = prepare(name, args, lowering)
  config = steps.config
  with autotune.installed(steps.plan):  # the steps are traced at their first call
    train_ms = autotune.median_ms(steps.train, (), args.repeats)
    eval_ms = (float('nan') if args.no_eval else
               autotune.median_ms(steps.evaluate, (), args.repeats))
  result = budget.budget(config)
  return dict(tuning_s=steps.tuning_s, train_ms=train_ms, eval_ms=eval_ms,
              train_ips=config.batch_size / train_ms * 1000,
              eval_ips=config.eval_batch_size / eval_ms * 1000,
              batch=config.batch_size, mac_fraction=result.macs / result.dense_macs)


def emit(text: str, out) -> None:
  """Prints `text` and appends it to the file `out` at once (a run cut short keeps its rows)."""
  print(text, flush=True)
  if out:
    with open(out, 'a') as f:
      f.write(text + '\n')


def check_lowering(parser: argparse.ArgumentParser, lowering: str) -> None:
  """Exits with a usage error unless `lowering` is 'auto' or a lowering's name."""
  if lowering != 'auto' and not lowerings.is_name(lowering):
    parser.error(f"--lowering={lowering!r} must be 'auto' or {lowerings.NAMES}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='cifar10_resnet32_10,cifar10_vgg19_10')
  parser.add_argument('--batch', type=int, default=0)
  parser.add_argument('--eval_batch', type=int, default=0)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--lowering', default='auto',
                      help="'auto' (tuned per layer and pass) or one lowering for every layer")
  parser.add_argument('--no_eval', action='store_true', help='time the train step only')
  parser.add_argument('--out', default=None, help='also write the table to this file')
  args = parser.parse_args()
  check_lowering(parser, args.lowering)
  device = jax.devices()[0]
  lines = [f'# network speed, {datetime.date.today()}: {platform.node()}, jax {jax.__version__}, '
           f'{device.platform} {device.device_kind} x{jax.device_count()}, dtype '
           f'{args.dtype or "per config"}, lowering {args.lowering}, median of {args.repeats}',
           '',
           '| config | batch | tuning s | train step ms | train img/s | eval ms | eval img/s '
           '| train vs dense | eval vs dense | MAC fraction |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  logging.set_verbosity(logging.INFO)  # the tuner's progress, layer by layer, on stderr
  emit('\n'.join(lines), args.out)
  dense_results = {}
  for name in args.configs.split(','):
    baseline = config_lib.dense_baseline(name)
    if baseline not in dense_results:
      dense_results[baseline] = measure(baseline, args, 'grouped')  # plain convolutions
      d = dense_results[baseline]
      row = (f'| {baseline} | {d["batch"]} | {d["tuning_s"]:.1f} | {d["train_ms"]:.1f} | '
             f'{d["train_ips"]:,.0f} | {d["eval_ms"]:.1f} | {d["eval_ips"]:,.0f} | 1.00x | 1.00x '
             f'| 1.000 |')
      emit(row, args.out)
    d, r = dense_results[baseline], measure(name, args, args.lowering)
    row = (f'| {name} | {r["batch"]} | {r["tuning_s"]:.1f} | {r["train_ms"]:.1f} | '
           f'{r["train_ips"]:,.0f} | {r["eval_ms"]:.1f} | {r["eval_ips"]:,.0f} | '
           f'{r["train_ms"] / d["train_ms"]:.2f}x | {r["eval_ms"] / d["eval_ms"]:.2f}x | '
           f'{r["mac_fraction"]:.3f} |')
    emit(row, args.out)
  emit('', args.out)


if __name__ == '__main__':
  main()
