"""Compiling the main job's steps for a TPU topology on a machine without a TPU.

libtpu (the `[tpu]` extra: `jax[tpu]`) compiles JAX programs for a named TPU
topology with no TPU attached (`jax.experimental.topologies`, ahead-of-time
lowering). This module builds the topology's devices (`topology_devices`),
compiles the train and eval steps exactly as the main job would run them on
them (`compile_steps`: the mesh over every device, the shardings, the
per-chip batch, the config's dtype) and reads the compiler's own cost
model out of the compiled programs (`ssc_jax.hlo_cost`). `Estimator` lets
the autotuner rank lowerings by that estimate, writing cache entries under
the keys a real run on that TPU reads. Every figure is the compiler's
estimate for one chip, not a measured time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, SingleDeviceSharding

from ssc_jax import budget
from ssc_jax import config_lib
from ssc_jax import errors
from ssc_jax import hlo_cost
from ssc_jax import models
from ssc_jax import optim
from ssc_jax import sharding
from ssc_jax import train
from ssc_jax import tuning
from ssc_jax.data import specs
from ssc_jax.ssc import autotune

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation: memory per chip (Google Cloud TPU documentation), and libtpu's
  chip configuration that gives one JAX device per chip (None: the default)."""
  hbm_bytes: int
  chip_config: Optional[str] = None


CHIPS = {
    'v4': Chip(32 * GiB, 'megacore'),
    'v5e': Chip(16 * GiB),
    'v5p': Chip(95 * GiB, 'megacore'),
    'v6e': Chip(32 * GiB),
}
_NAME = re.compile(r'^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$')


def offline_environment() -> None:
  """Settings that let libtpu compile with no TPU attached; call before JAX starts a backend.

  JAX runs on the CPU (the TPU is only a compilation target); libtpu skips its
  metadata-server query and may be loaded by several processes at once.
  """
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  jax.config.update('jax_platforms', 'cpu')


def parse_topology(name: str) -> Tuple[str, Tuple[int, ...]]:
  """(generation, chip grid) of a topology name such as 'v5e:2x2' or 'v4:2x2x4'."""
  match = _NAME.match(name or '')
  if match is None:
    raise errors.UserError(
        f'--topology={name!r} must be <generation>:<chips per dimension>, the generation one '
        f"of {tuple(CHIPS)}, e.g. 'v5e:2x2', 'v5e:4x4', 'v6e:2x2', 'v4:2x2x1', 'v5p:2x2x1'")
  return match.group(1), tuple(int(v) for v in match.group(2).split('x'))


@functools.lru_cache(maxsize=None)
def topology_devices(name: str) -> Tuple[Any, ...]:
  """The JAX devices of TPU topology `name` (one per chip), with no TPU attached."""
  generation, _ = parse_topology(name)
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    kwargs = {}
    if CHIPS[generation].chip_config:
      kwargs['chip_config_name'] = CHIPS[generation].chip_config
    return tuple(topologies.get_topology_desc(name, platform='tpu', **kwargs).devices)
  except (ImportError, RuntimeError, ValueError) as error:
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise errors.UserError(
        f'--topology={name}: libtpu could not describe this topology ({message}). Compiling '
        "for TPU needs the '[tpu]' extra (pip install -e '.[tpu]', Python 3.12 for jax 0.11 "
        'and newer)') from None


class Estimator:
  """A scorer for `autotune.scoring`: the TPU compiler's summed estimated cycles on one chip.

  It keys layers as a real run on the topology's devices would (platform
  'tpu', their device kind, their count), compiles each candidate for one
  chip with the layouts left to the compiler (as inside a network: no
  layout changes at the program's edges) and scores it by
  `hlo_cost` estimated cycles. Nothing runs.
  """
  unit = 'est_cycles'
  copies = 1

  def __init__(self, devices: Sequence[Any]):
    self.platform = devices[0].platform
    self.device_kind = devices[0].device_kind
    self.device_count = len(devices)
    self._sharding = SingleDeviceSharding(devices[0])

  def _abstract(self, shape, dtype):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=self._sharding)

  def inputs(self, layout, geometry, batch: int, dtype: Any, seed: int = 0):
    """Abstract (x, kernel, mix, dy) of a layer on one chip."""
    del seed
    s = layout.structure
    part = lambda p: None if p is None else self._abstract(p.shape, dtype)
    return (self._abstract((batch,) + geometry.input_size + (s.in_features,), dtype),
            part(layout.kernel), part(layout.mix),
            self._abstract((batch,) + geometry.output_size + (s.features,), dtype))

  def normal(self, key, shape, dtype=jnp.float32):
    del key
    return self._abstract(shape, dtype)

  def materialize(self, fn: Callable):
    """fn()'s shapes on one chip (nothing is computed)."""
    return jax.tree.map(lambda a: self._abstract(a.shape, a.dtype), jax.eval_shape(fn))

  def compile(self, fn: Callable, *args):
    from jax.experimental.layout import Format, Layout  # pylint: disable=g-import-not-at-top
    automatic = Format(Layout.AUTO, self._sharding)
    return jax.jit(fn, in_shardings=automatic, out_shardings=automatic).lower(*args).compile()

  def score(self, compiled, *args, repeats: int = 3, calls: int = 3) -> float:
    del args, repeats, calls
    return float(hlo_cost.parse(compiled.as_text())[0])


def model_of(config):
  """(the dataset's info, the network) of `config`, its budget ticket resolved."""
  info = specs.info(config.dataset)
  model_config = budget.resolve_ticket(config.model, info.num_classes, info.input_shape[-1])
  return info, models.create_model(model_config, info.num_classes)


class NotCached(Exception):
  """What `CacheReader` raises where a plan needs a choice that the cache files lack."""


class CacheReader(Estimator):
  """An `Estimator` that compiles nothing: where the tuner would score a candidate or a
  whole-network check, it raises `NotCached`. It tells whether the cache files alone
  give a config's plan (`cache_answers`)."""

  def compile(self, fn: Callable, *args):
    raise NotCached()


def cache_answers(config, devices) -> bool:
  """Whether the cache files (`autotune.Cache.default()`) hold every choice of `config`'s
  tuned plan on `devices` (with `config.autotune` on), so that a run there starts tuned:
  nothing is compiled."""
  config = config.copy_and_resolve_references()
  config.autotune = True
  info, model = model_of(config)
  try:
    plan_for(config, model, info.input_shape, devices, CacheReader(devices))
  except NotCached:
    return False
  return True


def dense_twin(config):
  """`config` with every SSC layer dense (g = 1, no mixing, every tap) and its lowering
  left to the tuner: the network an SSC config is compared with."""
  twin = config.copy_and_resolve_references()
  twin.model.ticket = None
  twin.model.g = twin.model.p = twin.model.p_1x1 = None
  twin.model.taps = 'full'
  twin.lowering = 'auto'
  return twin


@dataclasses.dataclass
class Steps:
  """What the compiler says of a config's train and eval steps on a topology (per chip)."""
  batch: int
  eval_batch: int
  train: hlo_cost.ProgramCost
  eval: hlo_cost.ProgramCost


def _abstract_tree(tree, sharding_):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding_), tree)


def _compile_error(error: Exception, name: str, step: str, devices) -> errors.UserError:
  """One line: the step does not fit a chip's memory, or does not compile, and why."""
  message = next((line for line in str(error).splitlines() if line.strip()), repr(error))
  what = ('does not fit the memory of a chip' if 'RESOURCE_EXHAUSTED' in str(error)
          else 'does not compile')
  return errors.UserError(f'{name}: the {step} step {what} on {len(devices)} x '
                          f'{devices[0].device_kind}: {message.strip()[:300]}')


def plan_for(config, model, image_shape, devices,
             scorer: Optional[Estimator] = None) -> autotune.Plan:
  """The lowering plan a run of `config` on `devices` uses: the forced lowering, else the
  cache files' choices, tuned where `config.autotune` is on by `scorer` (default: the
  compiler's estimate, `Estimator(devices)`)."""
  if config.lowering != 'auto':
    return autotune.Plan(force=config.lowering)
  with autotune.scoring(scorer or Estimator(devices)):
    return tuning.decide_plan(model, config, image_shape)


def compile_steps(config, devices: Sequence[Any], name: str = '') -> Steps:
  """The train and eval steps of `config` compiled for `devices` as the main job builds them.

  The mesh spans every device (axis 'data'); the global batch is
  `config.batch_size` (eval: `config.eval_batch_size`), sharded over it; the
  state is replicated; the model computes in `config.model.dtype`.
  """
  config_lib.check_config(config)
  info, model = model_of(config)
  for field, batch in (('batch_size', config.batch_size),
                       ('eval_batch_size', config.eval_batch_size)):
    if batch % len(devices):
      raise errors.ConfigError(f'config.{field}={batch} must be a multiple of the '
                               f'{len(devices)} chips of the topology')
  mesh = Mesh(np.asarray(devices), (sharding.DATA_AXIS,))
  steps_per_epoch = max(1, info.num_train // config.batch_size)
  tx = optim.create_optimizer(config, steps_per_epoch)
  plan = plan_for(config, model, info.input_shape, devices)
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)

  with autotune.installed(tuning.init_plan(plan)):
    state = _abstract_tree(jax.eval_shape(functools.partial(
        train.initial_state, model, tx, info.input_shape), jax.random.key(0)), replicated)

  def batch_of(size, with_mask):
    batch = {'image': jax.ShapeDtypeStruct((size,) + info.input_shape, jnp.float32,
                                           sharding=batched),
             'label': jax.ShapeDtypeStruct((size,), jnp.int32, sharding=batched)}
    if with_mask:
      batch['mask'] = jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=batched)
    return batch

  train_step, eval_step = train.jit_steps(config, model, tx, mesh)
  costs = {}
  with autotune.scoring(Estimator(devices)), autotune.installed(plan):
    for label, step, batch in (('train', train_step, batch_of(config.batch_size, False)),
                               ('eval', eval_step, batch_of(config.eval_batch_size, True))):
      start = time.perf_counter()
      try:
        compiled = step.lower(state, batch).compile()
      except jax.errors.JaxRuntimeError as error:
        raise _compile_error(error, name or config.model.name, label, devices) from None
      costs[label] = hlo_cost.program_cost(compiled, time.perf_counter() - start)
  return Steps(config.batch_size, config.eval_batch_size, costs['train'], costs['eval'])
