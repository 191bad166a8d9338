"""The lowering plan of a run: chosen once, kept in the workdir, the same on every process.

`config.lowering` forces one lowering on every SSC layer ('dense',
'grouped', 'taps+matmul', ...); 'auto' lets the autotuner choose per layer
and per pass (`ssc_jax.ssc.autotune`): from the cache file where it knows
the layer, else measured where `config.autotune` is True, else the cost rule.
The choices are written to `<workdir>/lowerings.json`, and a resumed run
reads them back, so it compiles the same program as the run it resumes.
With several processes, process 0 decides and broadcasts.
"""

import dataclasses
import functools
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
UNIFORM_FORWARD = ('dense', 'split')  # tried on every layer at once for inference
MARGIN = 0.97  # a whole-network check changes the choices only to gain 3% or more


def _init(model, image_shape):
  """The model's variables, from an init on one image (its forward pass is dead code)."""
  return model.init(jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)), train=False)


def _layers(model, config, image_shape):
  """The SSC layers of the train step and of the eval step, traced abstractly."""
  def batch(size):
    return jax.ShapeDtypeStruct((size,) + tuple(image_shape), jnp.float32)

  variables = jax.eval_shape(functools.partial(_init, model, image_shape))
  train = autotune.layers_of(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), variables,
      batch(config.batch_size))
  evaluate = autotune.layers_of(lambda v, x: model.apply(v, x, train=False), variables,
                                batch(config.eval_batch_size))
  return train, {k: v for k, v in evaluate.items() if k not in train}


def _pass_ms(model, variables, x, plan: autotune.Plan, backward: bool) -> float:
  """Median ms of the model's inference forward pass on `x`, or (backward) of
  its training forward and backward pass, under `plan`."""
  def loss(params, x):
    out, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32))

  fn = (jax.grad(loss) if backward else
        lambda params, x: model.apply({**variables, 'params': params}, x, train=False))
  with autotune.installed(plan):  # traced at the warm-up call
    return autotune.median_ms(jax.jit(fn), (variables['params'], x), 3, calls=1)


def _prefer_uniform_where_faster(model, config, image_shape, layers,
                                 plan: autotune.Plan) -> None:
  """Replaces tuned choices of `layers` by one lowering on every layer where the
  whole network runs faster so.

  Layers timed alone can rank lowerings otherwise than the network does (its
  fusions, caches and launches; on CPU, 'split' forward passes beat every
  per-layer winner in ResNet-32's inference), and 'dense' everywhere costs
  what the dense network costs. Timed on one device at the per-device batch:
  first the inference forward pass (the tuned forward choices against
  `UNIFORM_FORWARD` on every layer), then the training forward and backward
  pass (the choices so far against 'dense' everywhere and, where the first
  step changed them, the per-layer winners). A change must gain `MARGIN`.
  """
  per_device = max(1, config.batch_size // jax.device_count())
  tuned = {key_id: plan.choices[key_id] for key_id in layers}

  def at_batch(choices):
    return autotune.Plan({dataclasses.replace(key, batch=per_device).id: choices[key_id]
                          for key_id, (key, _, _) in layers.items()})

  with autotune.installed(autotune.Plan(force='dense')):
    variables = jax.jit(functools.partial(_init, model, image_shape))()
  x = jax.random.normal(jax.random.key(1), (per_device,) + tuple(image_shape))
  for backward, names in ((False, UNIFORM_FORWARD), (True, ('dense',))):
    passes = slice(0, 3 if backward else 1)
    current = {key_id: plan.choices[key_id] for key_id in layers}
    options = {n: {key_id: autotune.Choice(n, n, n) if backward else c._replace(forward=n)
                   for key_id, c in current.items()} for n in names}
    if backward and current != tuned:
      options['per-layer winners'] = tuned
    options = {n: o for n, o in options.items()
               if any(o[k][passes] != current[k][passes] for k in layers)}
    if not options:
      continue
    current_ms = _pass_ms(model, variables, x, at_batch(current), backward)
    times = {n: _pass_ms(model, variables, x, at_batch(o), backward) for n, o in options.items()}
    best = min(times, key=times.get)
    faster = times[best] < MARGIN * current_ms
    logging.info('%s at batch %d: %.1f ms as chosen, %s: %s.',
                 'Forward and backward' if backward else 'Inference forward', per_device,
                 current_ms, ', '.join(f'{ms:.1f} ms {n}' for n, ms in times.items()),
                 best if faster else 'kept')
    if faster:
      plan.choices.update(options[best])


def decide_plan(model, config, image_shape) -> autotune.Plan:
  """This process's plan: cached or measured where autotune is on, else cache or rule.

  Measured choices give way to one lowering on every layer where the whole
  network runs faster so (`_prefer_uniform_where_faster`). The eval step's
  layers take the forward choice of the same layer in the train step (only
  their batch differs); eval-only layers are tuned for the forward pass.
  """
  train, evaluate = _layers(model, config, image_shape)
  if not config.autotune:
    return autotune.Plan({key_id: autotune.choose(layout, geometry, key.batch, key.dtype)
                          for key_id, (key, layout, geometry) in {**train, **evaluate}.items()})
  plan = autotune.tune(train, jax.device_count(), log=logging.info)
  if train:
    _prefer_uniform_where_faster(model, config, image_shape, train, plan)
  twins = {dataclasses.replace(key, batch=0): plan.choices[key_id]
           for key_id, (key, _, _) in train.items()}
  alone = {}
  for key_id, value in evaluate.items():
    twin = twins.get(dataclasses.replace(value[0], batch=0))
    if twin is None:
      alone[key_id] = value
    else:
      plan.choices[key_id] = autotune.Choice(*(twin.forward,) * 3)
  plan.choices.update(autotune.tune(alone, jax.device_count(), passes=('forward',),
                                    log=logging.info).choices)
  return plan


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


def init_plan(plan: autotune.Plan) -> autotune.Plan:
  """The plan to trace the parameter init under: the run's forced lowering, else 'dense'.

  The init's forward pass (batch 1) is dead code that jit removes; fixing its
  lowering keeps the init program the same on every process without asking
  the cache file about batch-1 layers that the run's plan does not hold.
  """
  return plan if plan.force is not None else autotune.Plan(force='dense')


def run_plan(config, model, image_shape, workdir: epath.Path) -> Tuple[autotune.Plan, float]:
  """(the run's plan, seconds spent choosing it); reads or writes `workdir`/lowerings.json."""
  start = time.perf_counter()
  if config.lowering != 'auto':
    return autotune.Plan(force=config.lowering), 0.0
  path = workdir / PLAN_FILE
  resumed = path.exists() if jax.process_index() == 0 else False
  plan = autotune.Plan()
  if jax.process_index() == 0:
    plan = (autotune.Plan.from_json(json.loads(path.read_text())) if resumed
            else decide_plan(model, config, image_shape))
  plan = _broadcast(plan)  # process 0 read or decided it; every process compiles it
  seconds = time.perf_counter() - start
  if jax.process_index() != 0:
    logging.info('Lowerings of %d SSC layer shapes received from process 0.', len(plan.choices))
    return plan, seconds
  if resumed:
    logging.info('Lowerings of %d SSC layer shapes read from %s.', len(plan.choices), path)
    return plan, seconds
  temporary = workdir / (PLAN_FILE + '.tmp')  # a kill mid-write leaves no broken plan
  temporary.write_text(json.dumps(plan.to_json(), indent=1) + '\n')
  temporary.rename(path)
  console.show('Lowerings of %d SSC layer shapes chosen in %.1f s (%s), kept in %s.',
               len(plan.choices), seconds,
               'measured or cached' if config.autotune else 'cache file or cost rule', path)
  return plan, seconds
