"""The optimiser of the paper's recipe, from small optax pieces.

    g_t   = grad L(w_t) + wd * w_t          (coupled decay, on `weight_decay_on` params)
    v_t   = momentum * v_{t-1} + g_t        (v_0 = g_0)
    w_t+1 = w_t - lr(t) * v_t               (Nesterov: w_t - lr(t) * (g_t + momentum * v_t))

This is PyTorch's `SGD(momentum, weight_decay, dampening=0)`: with
`weight_decay_on='all'` the decay reaches every parameter (BatchNorm scale
and bias, biases), as it does there; with 'kernels' only conv and Dense weights.

lr(t) is piecewise constant: `learning_rate`, times `lr_decay_factor` at each
epoch of `lr_boundaries_epochs`, after an optional linear warm-up
(lr * (t + 1) / warmup_steps for t < warmup_steps, so the first step moves),
optionally scaled by batch_size / base_batch_size.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# Parameter names of weights that take weight decay (SSCConv: kernel, mix; Dense: kernel).
DECAYED_PARAMS = ('kernel', 'mix')
WEIGHT_DECAY_ON = ('all', 'kernels')


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Warm-up, then piecewise-constant decay at epoch boundaries."""
  base = config.learning_rate
  if config.lr_scale_with_batch:
    base *= config.batch_size / config.base_batch_size
  warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
  boundaries = {int(epoch * steps_per_epoch) - warmup_steps: config.lr_decay_factor
                for epoch in config.lr_boundaries_epochs}
  decay = optax.piecewise_constant_schedule(base, boundaries)
  if not warmup_steps:
    return decay
  warmup = lambda step: base * jnp.minimum(step + 1, warmup_steps) / warmup_steps
  return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for conv and Dense weights; False for biases and BatchNorm."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) in DECAYED_PARAMS, params)


def _decay_everywhere(params: Any) -> Any:
  return jax.tree.map(lambda _: True, params)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay on the parameters `weight_decay_on` names.

  Both choices go through a mask, so the optimiser state has one structure and
  a checkpoint restores under either.
  """
  if config.optimizer != 'sgd':
    raise ValueError(f"config.optimizer={config.optimizer!r}: only 'sgd' (the paper's) is supported")
  if config.weight_decay_on not in WEIGHT_DECAY_ON:
    raise ValueError(f'config.weight_decay_on={config.weight_decay_on!r} must be one of '
                     f'{WEIGHT_DECAY_ON}')
  mask = decay_mask if config.weight_decay_on == 'kernels' else _decay_everywhere
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=mask),
      optax.sgd(learning_rate_schedule(config, steps_per_epoch),
                momentum=config.momentum or None, nesterov=config.nesterov))
