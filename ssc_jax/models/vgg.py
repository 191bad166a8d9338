"""VGG networks: VGG-19 for CIFAR and Tiny-ImageNet, and a small one for digits.

VGG-19 is GraSP's low-resolution variant: sixteen bias-free 3x3 convolutions
in five blocks of [64, 128, 256, 512, 512] filters (2, 2, 4, 4, 4
convolutions), each followed by BatchNorm and ReLU, a
2x2 max-pool between blocks, global average pooling (GraSP's CIFAR head is a
2x2 average pool on the 2x2 map, the same thing) and one Dense layer on the
512 features. The first convolution and the Dense layer stay dense; every
other convolution takes the (g, p) of its filter count. The digits network
(8x8x1 inputs) is the same design with blocks of [16, 32, 64] filters.
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ssc_jax.models import conv as conv_lib

# (filters, convolutions) of each block.
VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
DIGITS_BLOCKS = ((16, 2), (32, 2), (64, 2))


def filter_counts(blocks: Tuple[Tuple[int, int], ...]) -> Tuple[int, ...]:
  """The distinct filter counts of `blocks`, ascending: (64, 128, 256, 512) for VGG-19."""
  return tuple(sorted({features for features, _ in blocks}))


class VGG(nn.Module):
  """A VGG network with SSC convolutions.

  Attributes:
    num_classes: outputs of the Dense layer.
    blocks: (filters, convolutions) per block; a 2x2 max-pool between blocks.
    g, p: (g, p) per filter count of `filter_counts(blocks)`.
    taps: the KxK pattern of every convolution but the first.
    initialization: 'he' or 'grasp' (`conv.INITS`, config.model.init).
    dtype: compute dtype; parameters are float32.
    inference: None, or the folded inference network (`conv.batch_norm`) running its
      SSC layers by this lowering.
  """
  num_classes: int
  blocks: Tuple[Tuple[int, int], ...] = VGG19_BLOCKS
  g: Tuple[Optional[int], ...] = (1, 1, 1, 1)
  p: Tuple[Optional[int], ...] = (None, None, None, None)
  taps: Any = 'full'
  initialization: str = 'he'
  dtype: Any = jnp.float32
  inference: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
    settings = dict(zip(filter_counts(self.blocks), zip(self.g, self.p)))
    x = jnp.asarray(x, self.dtype)
    index = 0
    for block, (features, num_convs) in enumerate(self.blocks):
      if block:
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
      for _ in range(num_convs):
        if index == 0:
          g, p, setting, taps = 1, None, None, 'full'
        else:
          (g, p), setting, taps = settings[features], conv_lib.G_P, self.taps
        x = conv_lib.conv(self, x, features, 3, g=g, p=p, setting=setting, taps=taps,
                          dtype=self.dtype, init=self.initialization, name=f'conv{index}',
                          inference=self.inference)
        x = nn.relu(conv_lib.batch_norm(train, self.dtype, f'bn{index}',
                                        inference=self.inference)(x))
        index += 1
    return conv_lib.classifier(x, self.num_classes, self.dtype, self.initialization)
