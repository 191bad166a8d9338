"""ResNet-50 v1.5 for ImageNet.

A 7x7 stride-2 stem with 3x3 max-pooling, four stages of [3, 4, 6, 3]
bottleneck blocks of widths [64, 128, 256, 512] (1x1, 3x3, 1x1 to 4*width;
v1.5: the stride sits on the 3x3 convolution), 1x1 projection shortcuts where
the shape changes, global average pooling and one Dense layer. The stem and
the Dense layer stay dense; each 3x3 convolution takes the (g, p) of its
filter count in `FILTER_COUNTS`; every 1x1 convolution, shortcuts included,
is an interleaved grouped pointwise convolution (g = None) with the p of its
filter count in `FILTER_COUNTS_1X1`. With `zero_init_residual` the last
BatchNorm of each block starts with scale 0 (Goyal et al. 2017, as in flax's
ImageNet example).
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ssc_jax.models import conv as conv_lib

FILTER_COUNTS = (64, 128, 256, 512)
FILTER_COUNTS_1X1 = (64, 128, 256, 512, 1024, 2048)
STAGE_SIZES = (3, 4, 6, 3)
EXPANSION = 4


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with BatchNorm and a residual connection."""
  width: int
  strides: int
  g: Optional[int]
  p: Optional[int]
  p_in: Optional[int]  # p of the 1x1 convolution to `width` filters
  p_out: Optional[int]  # p of the 1x1 convolutions to 4 * `width` filters
  taps: Any
  initialization: str
  zero_init_residual: bool
  dtype: Any
  inference: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    pointwise = dict(g=None, setting=conv_lib.P_1X1, dtype=self.dtype, padding=0,
                     init=self.initialization, inference=self.inference)
    norm = lambda name, zero=False: conv_lib.batch_norm(train, self.dtype, name, zero,
                                                        self.inference)
    out_features = EXPANSION * self.width
    y = conv_lib.conv(self, x, self.width, 1, p=self.p_in, name='conv1', **pointwise)
    y = nn.relu(norm('bn1')(y))
    y = conv_lib.conv(self, y, self.width, 3, strides=self.strides, padding=1,
                      g=self.g, p=self.p, taps=self.taps, setting=conv_lib.G_P,
                      dtype=self.dtype, init=self.initialization, name='conv2',
                      inference=self.inference)
    y = nn.relu(norm('bn2')(y))
    y = conv_lib.conv(self, y, out_features, 1, p=self.p_out, name='conv3', **pointwise)
    y = norm('bn3', self.zero_init_residual)(y)
    if self.strides != 1 or x.shape[-1] != out_features:
      x = conv_lib.conv(self, x, out_features, 1, strides=self.strides,
                        p=self.p_out, name='proj_conv', **pointwise)
      x = norm('proj_bn')(x)
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """ResNet-50 v1.5 with SSC convolutions.

  Attributes:
    num_classes: outputs of the Dense layer.
    g, p: (g, p) of the 3x3 convolutions per filter count of `FILTER_COUNTS`.
    p_1x1: p of the 1x1 convolutions per filter count of `FILTER_COUNTS_1X1`.
    taps: the KxK pattern of the 3x3 convolutions.
    initialization: 'he' or 'grasp' (`conv.INITS`, config.model.init).
    zero_init_residual: start each block's last BatchNorm scale at 0.
    dtype: compute dtype; parameters are float32.
    inference: None, or the folded inference network (`conv.batch_norm`) running its
      SSC layers by this lowering.
  """
  num_classes: int
  g: Tuple[Optional[int], ...] = (1, 1, 1, 1)
  p: Tuple[Optional[int], ...] = (None, None, None, None)
  p_1x1: Tuple[Optional[int], ...] = (1, 1, 1, 1, 1, 1)
  taps: Any = 'full'
  initialization: str = 'he'
  zero_init_residual: bool = True
  dtype: Any = jnp.float32
  inference: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
    p_1x1 = dict(zip(FILTER_COUNTS_1X1, self.p_1x1))
    x = jnp.asarray(x, self.dtype)
    x = conv_lib.conv(self, x, 64, 7, strides=2, padding=3, g=1, p=None,
                      setting=None, dtype=self.dtype, init=self.initialization, name='stem_conv',
                      inference=self.inference)
    x = nn.relu(conv_lib.batch_norm(train, self.dtype, 'stem_bn', inference=self.inference)(x))
    # 3x3 max-pooling, stride 2, padding 1: the padding written out (-inf, as max_pool's own),
    # which exports to ONNX as Pad + MaxPool.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2))
    for stage, (width, g, p, size) in enumerate(
        zip(FILTER_COUNTS, self.g, self.p, STAGE_SIZES)):
      for block in range(size):
        strides = 2 if stage and not block else 1
        x = Bottleneck(width, strides, g, p, p_1x1[width], p_1x1[EXPANSION * width],
                       self.taps, self.initialization, self.zero_init_residual, self.dtype,
                       self.inference, name=f'stage{stage + 1}_block{block}')(x, train)
    return conv_lib.classifier(x, self.num_classes, self.dtype, self.initialization)
