"""The lowering plan of a run: chosen once, kept in the workdir, the same on every process.

`config.lowering` forces one lowering on every SSC layer ('dense',
'grouped', 'taps+matmul', ...); 'auto' lets the autotuner choose per layer
and per pass (`ssc_jax.ssc.autotune`): measured where `config.autotune` is
True (and the cache file does not know the layer yet), else the cost rule.
The choices are written to `<workdir>/lowerings.json`, and a resumed run
reads them back, so it compiles the same program as the run it resumes.
With several processes, process 0 decides and broadcasts.
"""

import json
import time
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ssc_jax import console
from ssc_jax.ssc import autotune

PLAN_FILE = 'lowerings.json'


def _layers(model, config, image_shape):
  """The SSC layers of the train step and of the eval step, traced abstractly."""
  def batch(size):
    return jax.ShapeDtypeStruct((size,) + tuple(image_shape), jnp.float32)

  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + tuple(
      image_shape)), train=False))
  train = autotune.layers_of(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables,
      batch(config.batch_size))
  evaluate = autotune.layers_of(lambda v, x: model.apply(v, x, train=False), variables,
                                batch(config.eval_batch_size))
  return train, {k: v for k, v in evaluate.items() if k not in train}


def decide_plan(model, config, image_shape) -> autotune.Plan:
  """This process's plan: measured (or cached) where autotune is on, else cache or rule."""
  train, evaluate = _layers(model, config, image_shape)
  if config.autotune:
    plan = autotune.tune(train, jax.device_count(), log=logging.info)
    plan.choices.update(autotune.tune(evaluate, jax.device_count(), passes=('forward',),
                                      log=logging.info).choices)
    return plan
  return autotune.Plan({key_id: autotune.choose(layout, geometry, key.batch, key.dtype)
                        for key_id, (key, layout, geometry) in {**train, **evaluate}.items()})


def _broadcast(plan: autotune.Plan) -> autotune.Plan:
  """Process 0's plan on every process."""
  if jax.process_count() == 1:
    return plan
  data = np.frombuffer(json.dumps(plan.to_json()).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
  padded = np.zeros(size, np.uint8)
  padded[:min(size, len(data))] = data[:size]
  data = np.asarray(multihost_utils.broadcast_one_to_all(padded))
  return autotune.Plan.from_json(json.loads(bytes(data).decode()))


def run_plan(config, model, image_shape, workdir: epath.Path) -> Tuple[autotune.Plan, float]:
  """(the run's plan, seconds spent choosing it); reads or writes `workdir`/lowerings.json."""
  start = time.perf_counter()
  if config.lowering != 'auto':
    return autotune.Plan(force=config.lowering), 0.0
  path = workdir / PLAN_FILE
  if path.exists():
    plan = autotune.Plan.from_json(json.loads(path.read_text()))
    logging.info('Lowerings of %d SSC layer shapes read from %s.', len(plan.choices), path)
    return plan, time.perf_counter() - start
  plan = _broadcast(decide_plan(model, config, image_shape) if jax.process_index() == 0
                    else autotune.Plan())
  if jax.process_index() == 0:
    path.write_text(json.dumps(plan.to_json(), indent=1) + '\n')
  seconds = time.perf_counter() - start
  console.show('Lowerings of %d SSC layer shapes chosen in %.1f s (%s), kept in %s.',
               len(plan.choices), seconds, 'measured' if config.autotune else 'cost rule', path)
  return plan, seconds
