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
import hashlib
import json
import time
from typing import Dict, Tuple

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
  return train, evaluate


def _pass_score(model, variables, x, plan: autotune.Plan, backward: bool) -> float:
  """The scorer's score (`autotune.scorer()`; a Timer's: median ms) of the model's inference
  forward pass on `x`, or (backward) of its training forward and backward pass, under `plan`."""
  def forward(params, batch_stats, x, train):
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=train,
                       mutable=['batch_stats'] if train else False)

  def loss(params, batch_stats, x):
    return jnp.sum(forward(params, batch_stats, x, True)[0].astype(jnp.float32))

  fn = jax.grad(loss) if backward else functools.partial(forward, train=False)
  args = (variables['params'], variables.get('batch_stats', {}), x)
  target = autotune.scorer()
  with autotune.installed(plan):  # traced when compiled
    compiled = target.compile(fn, *args)
  return target.score(compiled, *args, calls=1)


def _whole_network_checks(model, config, image_shape, layers, plan: autotune.Plan
                          ) -> Dict[str, str]:
  """The inference forward lowering of each of `layers`; the training choices
  in `plan` give way to faster ones for the whole network.

  Layers timed alone can rank lowerings otherwise than the network does (its
  fusions, caches and launches; on CPU, 'split' forward passes beat every
  per-layer winner in ResNet-32's inference), and 'dense' everywhere costs
  what the dense network costs. Scored by `autotune.scorer()` (timed, or the TPU
  compiler's estimate) on one device at the per-device batch:
  the inference forward pass, with the tuned forward choices against
  `UNIFORM_FORWARD` on every layer; then the training forward and backward
  pass, with the tuned choices against 'dense' everywhere and, where the
  inference pass chose otherwise, against the tuned choices with its forward
  lowerings. A change must gain `MARGIN`. The verdict is kept in the
  autotuner's cache file, keyed by the model config, the image shape, the
  layers and their tuned choices, so a later run with a warm cache skips the
  checks.
  """
  tuned = {key_id: plan.choices[key_id] for key_id in layers}
  cache = autotune.Cache.default()
  per_device_id = {key_id: key.per_device_id for key_id, (key, _, _) in layers.items()}
  checked = [repr(sorted(config.model.to_dict().items())), list(image_shape),
             {per_device_id[k]: list(c) for k, c in sorted(tuned.items())}]
  verdict_id = 'network|' + hashlib.sha256(json.dumps(checked).encode()).hexdigest()[:24]
  known = cache.entry(verdict_id)
  if known is not None:  # these layers with these choices were checked before
    logging.info('Whole-network checks of these %d layers read from %s.', len(layers), cache.path)
    plan.choices.update({k: autotune.Choice(*known['choices'][per_device_id[k]])
                         for k in layers})
    return {k: known['inference'][per_device_id[k]] for k in layers}
  target = autotune.scorer()
  per_device = max(1, config.batch_size // target.device_count)

  def at_batch(choices):
    return autotune.Plan({dataclasses.replace(key, batch=per_device).id: choices[key_id]
                          for key_id, (key, _, _) in layers.items()})

  with autotune.installed(autotune.Plan(force='dense')):
    variables = target.materialize(functools.partial(_init, model, image_shape))
  x = target.normal(jax.random.key(1), (per_device,) + tuple(image_shape))

  def fastest(backward, current, options):
    """`current` or the fastest of `options` ({name: choices}) where it gains `MARGIN`."""
    passes = slice(0, 3 if backward else 1)
    options = {n: o for n, o in options.items()
               if any(o[k][passes] != current[k][passes] for k in layers)}
    if not options:
      return current
    current_score = _pass_score(model, variables, x, at_batch(current), backward)
    scores = {n: _pass_score(model, variables, x, at_batch(o), backward)
              for n, o in options.items()}
    best = min(scores, key=scores.get)
    faster = scores[best] < MARGIN * current_score
    logging.info('%s at batch %d: %.1f %s as chosen, %s: %s.',
                 'Forward and backward' if backward else 'Inference forward', per_device,
                 current_score, target.unit,
                 ', '.join(f'{score:.1f} {n}' for n, score in scores.items()),
                 best if faster else 'kept')
    return options[best] if faster else current

  inference = fastest(False, tuned, {n: {k: autotune.Choice(n, n, n) for k in layers}
                                     for n in UNIFORM_FORWARD})
  options = {'dense': {k: autotune.Choice('dense', 'dense', 'dense') for k in layers},
             'inference forward passes': {k: c._replace(forward=inference[k].forward)
                                          for k, c in tuned.items()}}
  plan.choices.update(fastest(True, tuned, options))
  cache.put({verdict_id: {
      'choices': {per_device_id[k]: list(plan.choices[k]) for k in layers},
      'inference': {per_device_id[k]: c.forward for k, c in inference.items()}}})
  return {k: c.forward for k, c in inference.items()}


def decide_plan(model, config, image_shape) -> autotune.Plan:
  """This process's plan: cached or measured where autotune is on, else cache or rule.

  Measured choices give way to faster ones for the whole network
  (`_whole_network_checks`). The eval step's layers take the inference
  forward lowering of the same layer in the train step (only their batch
  differs); eval-only layers are tuned for the forward pass. With autotune off
  nothing is timed or checked: each layer takes its cache entry's own choice
  (the eval step's from an entry that timed its forward pass) or the cost rule.
  """
  train, evaluate = _layers(model, config, image_shape)
  if not config.autotune:
    def chosen(layers):
      return {key_id: autotune.choose(layout, geometry, key.batch, key.dtype)
              for key_id, (key, layout, geometry) in layers.items()}
    with autotune.inference():
      inference = {k: c.forward for k, c in chosen(evaluate).items()}
    return autotune.Plan(chosen(train), inference=inference)
  devices = autotune.scorer().device_count
  plan = autotune.tune(train, devices, log=logging.info)
  inference = (_whole_network_checks(model, config, image_shape, train, plan) if train else {})
  twins = {dataclasses.replace(train[key_id][0], batch=0): forward
           for key_id, forward in inference.items()}
  alone = {}
  for key_id, value in evaluate.items():
    twin = twins.get(dataclasses.replace(value[0], batch=0))
    if twin is None:
      alone[key_id] = value
    else:
      plan.inference[key_id] = twin
  tuned = autotune.tune(alone, devices, passes=('forward',), log=logging.info)
  plan.inference.update({key_id: choice.forward for key_id, choice in tuned.choices.items()})
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
