"""ResNet-32 for CIFAR and Tiny-ImageNet, with a width multiplier.

A 3x3 stem of 16*width filters, three stages of five basic blocks with
[16, 32, 64]*width filters (stride 2 at the start of stages 2 and 3), 1x1
projection shortcuts (convolution + BatchNorm) where the shape changes, global
average pooling and one Dense layer. The paper (after GraSP) uses width 2. The
stem, the shortcuts and the Dense layer stay dense; every 3x3 convolution of a
stage takes that stage's (g, p). No BatchNorm scale is zero-initialised.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ssc_jax.models import conv as conv_lib

STAGE_FILTERS = (16, 32, 64)
BLOCKS_PER_STAGE = 5


def filter_counts(width: int) -> Tuple[int, ...]:
  """Filters of the three stages for a width multiplier."""
  return tuple(f * width for f in STAGE_FILTERS)


class BasicBlock(nn.Module):
  """Two 3x3 SSC convolutions with BatchNorm and a residual connection."""
  features: int
  strides: int
  g: Optional[int]
  p: Optional[int]
  taps: Any
  initialization: str
  dtype: Any
  inference: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    ssc = dict(g=self.g, p=self.p, taps=self.taps, setting=conv_lib.G_P, dtype=self.dtype,
               init=self.initialization, inference=self.inference)
    norm = lambda name: conv_lib.batch_norm(train, self.dtype, name, inference=self.inference)
    y = conv_lib.conv(self, x, self.features, 3, strides=self.strides,
                      padding=1, name='conv1', **ssc)
    y = nn.relu(norm('bn1')(y))
    y = conv_lib.conv(self, y, self.features, 3, name='conv2', **ssc)
    y = norm('bn2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = conv_lib.conv(self, x, self.features, 1, strides=self.strides,
                        padding=0, g=1, p=None, setting=None, dtype=self.dtype,
                        init=self.initialization, name='proj_conv', inference=self.inference)
      x = norm('proj_bn')(x)
    return nn.relu(x + y)


class ResNet32(nn.Module):
  """ResNet-32 with SSC convolutions.

  Attributes:
    num_classes: outputs of the Dense layer.
    width: filter multiplier of every stage (2 in the paper).
    g, p: (g, p) of the three stages, in order.
    taps: the KxK pattern of the stages' 3x3 convolutions.
    initialization: 'he' or 'grasp' (`conv.INITS`, config.model.init).
    dtype: compute dtype; parameters are float32.
    inference: None, or the folded inference network (`conv.batch_norm`) running its
      SSC layers by this lowering.
  """
  num_classes: int
  width: int = 1
  g: Tuple[Optional[int], ...] = (1, 1, 1)
  p: Tuple[Optional[int], ...] = (None, None, None)
  taps: Any = 'full'
  initialization: str = 'he'
  dtype: Any = jnp.float32
  inference: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
    filters = filter_counts(self.width)
    x = jnp.asarray(x, self.dtype)
    x = conv_lib.conv(self, x, filters[0], 3, g=1, p=None, setting=None,
                      dtype=self.dtype, init=self.initialization, name='stem_conv',
                      inference=self.inference)
    x = nn.relu(conv_lib.batch_norm(train, self.dtype, 'stem_bn', inference=self.inference)(x))
    for stage, (features, g, p) in enumerate(zip(filters, self.g, self.p)):
      for block in range(BLOCKS_PER_STAGE):
        strides = 2 if stage and not block else 1
        x = BasicBlock(features, strides, g, p, self.taps, self.initialization, self.dtype,
                       self.inference, name=f'stage{stage + 1}_block{block}')(x, train)
    return conv_lib.classifier(x, self.num_classes, self.dtype, self.initialization)
