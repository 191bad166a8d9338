"""The optimiser of the paper's recipe, from small optax pieces.

    g_t   = grad L(w_t) + wd * w_t          (coupled decay, conv/Dense kernels only)
    v_t   = momentum * v_{t-1} + g_t
    w_t+1 = w_t - lr(t) * v_t               (Nesterov: w_t - lr(t) * (g_t + momentum * v_t))

lr(t) is piecewise constant: `learning_rate`, times `lr_decay_factor` at each
epoch of `lr_boundaries_epochs`, after an optional linear warm-up, optionally
scaled by batch_size / base_batch_size.
"""

from typing import Any

import jax
import ml_collections
import optax

# Parameter names of weights that take weight decay (SSCConv: kernel, mix; Dense: kernel).
DECAYED_PARAMS = ('kernel', 'mix')


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
  warmup = optax.linear_schedule(0.0, base, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def decay_mask(params: Any) -> Any:
  """True for conv and Dense weights; False for biases and BatchNorm."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) in DECAYED_PARAMS, params)


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
  """SGD with momentum and coupled weight decay on the kernels."""
  if config.optimizer != 'sgd':
    raise ValueError(f"config.optimizer={config.optimizer!r}: only 'sgd' (the paper's) is supported")
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.sgd(learning_rate_schedule(config, steps_per_epoch),
                momentum=config.momentum or None, nesterov=config.nesterov))
