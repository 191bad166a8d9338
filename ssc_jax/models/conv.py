"""The convolution, classifier and normalisation that every paper network is built from.

Each convolution of a network is an `SSCConv` tagged with the config field
that sets its (g, p): `G_P` (``config.model.g`` / ``config.model.p`` by filter
count), `P_1X1` (``config.model.p_1x1`` by filter count, g = None) or None for
a layer that always stays dense. The budget reads the tag to group layers.
The spatial pattern (``config.model.taps``) applies to the KxK `G_P` layers
only, g = 1 included; the layers that stay dense keep every position.

Initialisation (``config.model.init``):

* 'he': convolutions He normal (truncated at 2 std) on each output's real
  fan-in; the Dense layer flax's default (LeCun normal), zero bias.
* 'grasp': what the paper inherits from GraSP (``kaiming_normal_(mode='fan_out',
  nonlinearity='relu')`` for convolutions, N(0, 0.01^2) weights and zero
  bias for Linear): convolutions normal with variance 2 / fan-out, where the
  fan-out of a weight is the real number of outputs (kernel positions x
  output channels) that its input channel feeds, N*K*K for a dense layer and
  only the kept ones for an SSC layer; the Dense layer normal with std 0.01
  and zero bias.

BatchNorm starts at scale 1 and bias 0 under both.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from ssc_jax import errors
from ssc_jax import ssc

G_P = 'g_p'
P_1X1 = 'p_1x1'
INITS = ('he', 'grasp')
_G_FIELD = {G_P: 'config.model.g'}
_P_FIELD = {G_P: 'config.model.p', P_1X1: 'config.model.p_1x1'}
CONV_INITS = {'he': ssc.he_normal, 'grasp': ssc.kaiming_normal_fan_out}
DENSE_INITS = {'he': nn.initializers.lecun_normal, 'grasp': lambda: nn.initializers.normal(0.01)}

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class NetworkConv(ssc.SSCConv):
  """An SSCConv that records which config field sets its (g, p).

  Attributes:
    setting: `G_P`, `P_1X1`, or None for a layer that stays dense.
  """
  setting: Optional[str] = None


def check_setting(path: str, in_features: int, features: int, kernel_size: int,
                  g: Optional[int], p: Optional[int], setting: Optional[str],
                  taps: Any = 'full') -> None:
  """Raises a ConfigError, naming the config field that set (g, p) and the layer at
  `path` (M, N), where the layer cannot take them."""
  try:
    ssc.ssc_structure(in_features, features, kernel_size, g, p, taps)
  except ValueError as error:
    g_ok = g is None or (isinstance(g, int) and 1 <= g <= min(in_features, features))
    field = _G_FIELD.get(setting) if not g_ok else _P_FIELD.get(setting)
    if field is None and setting is not None:
      field = f'{_G_FIELD[setting]} / {_P_FIELD[setting]}'
    where = f'{field} entry for {features} filters' if field else 'a dense layer'
    raise errors.ConfigError(
        f'{where}: (g={g}, p={p}) cannot be used by layer {path!r} '
        f'(M={in_features} input, N={features} output channels, K={kernel_size}): '
        f'{error}') from None


def conv(parent: nn.Module, x: jnp.ndarray, features: int, kernel_size: int, *,
         g: Optional[int], p: Optional[int], setting: Optional[str], dtype: Any,
         init: str, name: str, strides: int = 1, padding: Any = 'SAME',
         taps: Any = 'full', inference: Optional[str] = None) -> jnp.ndarray:
  """Applies a bias-free `NetworkConv` named `name` in `parent`, initialised by `init`.

  In an inference network (`inference` a lowering name, see `batch_norm`) the
  convolution has a bias, the BatchNorm after it folded in, and runs by that lowering.
  A (g, p) that the layer cannot take raises a ConfigError (`check_setting`).
  """
  check_setting('/'.join(parent.path + (name,)), x.shape[-1], features, kernel_size, g, p,
                setting, taps)
  return NetworkConv(
      features, kernel_size, strides=strides, padding=padding, g=g, p=p, taps=taps,
      use_bias=inference is not None, dtype=dtype, kernel_init=CONV_INITS[init](),
      implementation=inference or 'auto', setting=setting, name=name)(x)


def batch_norm(train: bool, dtype: Any, name: str, zero_scale: bool = False,
               inference: Optional[str] = None) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """BatchNorm with momentum 0.9, epsilon 1e-5; `zero_scale` starts its scale at 0.

  In an inference network (`inference` set: `ssc_jax.deploy` folds each BatchNorm into
  the convolution before it) there is none: the identity.
  """
  if inference is not None:
    return lambda x: x
  return nn.BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      dtype=dtype,
      scale_init=nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init(),
      name=name)


def classifier(x: jnp.ndarray, num_classes: int, dtype: Any, init: str) -> jnp.ndarray:
  """Global average pooling, then one Dense layer initialised by `init`; float32 logits."""
  x = jnp.mean(x, axis=(-3, -2))
  return nn.Dense(num_classes, dtype=dtype, kernel_init=DENSE_INITS[init](),
                  bias_init=nn.initializers.zeros_init(), name='dense')(x).astype(jnp.float32)
