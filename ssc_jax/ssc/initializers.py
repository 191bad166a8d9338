"""Initialisers of SSC weights from each weight's real fan-in or fan-out.

An SSC initializer is called as ``init(key, fans, dtype)``, where `fans` is a
`layout.Fans` of numpy arrays in the parameter's shape: for each stored
weight, the real number of inputs of the output it feeds (``fan_in``) and the
real number of outputs (kernel positions x channels) that its input feeds
(``fan_out``). For a dense KxK convolution these are K*K*M and K*K*N, the
usual definitions; for a sparse layer they count only the kept weights.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ssc_jax.ssc.layout import Fans

Array = jax.Array
SSCInitializer = Callable[[Array, Fans, Any], Array]

_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]
_DISTRIBUTIONS = ('truncated_normal', 'normal', 'uniform')
_MODES = ('fan_in', 'fan_out', 'fan_avg')


def variance_scaling(scale: float = 1.0, distribution: str = 'truncated_normal',
                     mode: str = 'fan_in') -> SSCInitializer:
  """Var[w] = scale / fan, with each weight's real fan ('fan_in', 'fan_out' or their mean).

  `distribution` is 'truncated_normal' (at 2 std, corrected), 'normal' or
  'uniform'. scale=1, fan_in is LeCun init (flax's default for nn.Conv);
  scale=2, fan_in is He init for ReLU networks; scale=2, fan_out, 'normal' is
  PyTorch's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``.
  """
  if distribution not in _DISTRIBUTIONS:
    raise ValueError(f'variance_scaling: distribution={distribution!r} must be one of '
                     f'{_DISTRIBUTIONS}')
  if mode not in _MODES:
    raise ValueError(f'variance_scaling: mode={mode!r} must be one of {_MODES}')

  def init(key: Array, fans: Fans, dtype: Any = jnp.float32) -> Array:
    fan_in, fan_out = (np.asarray(f, np.float64) for f in fans)
    fan = {'fan_in': fan_in, 'fan_out': fan_out, 'fan_avg': (fan_in + fan_out) / 2}[mode]
    std = jnp.asarray(np.sqrt(scale / fan), dtype)
    shape = np.shape(fan)
    if distribution == 'truncated_normal':
      unit = jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
      unit = unit / jnp.asarray(_TRUNCATED_NORMAL_STD, dtype)
    elif distribution == 'normal':
      unit = jax.random.normal(key, shape, dtype)
    else:
      unit = jax.random.uniform(key, shape, dtype, -np.sqrt(3.0), np.sqrt(3.0))
    return unit * std

  return init


lecun_normal = functools.partial(variance_scaling, 1.0, 'truncated_normal', 'fan_in')
he_normal = functools.partial(variance_scaling, 2.0, 'truncated_normal', 'fan_in')
kaiming_normal_fan_out = functools.partial(variance_scaling, 2.0, 'normal', 'fan_out')
