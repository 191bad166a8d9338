"""SSCConv: the Flax linen module of the structured sparse convolution."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssc_jax.ssc import apply
from ssc_jax.ssc import geometry as geometry_lib
from ssc_jax.ssc import initializers
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc.structure import SSCStructure, ssc_structure

Array = jax.Array


class SSCConv(nn.Module):
  """Structured sparse convolution: grouped KxK conv plus structured 1x1 mixing.

  Input (..., H, W, M), output (..., H', W', N). ``g`` sets the KxK groups
  (None: no KxK part), ``p`` the 1x1 mixing period (None: no mixing),
  ``taps`` the positions each KxK kernel keeps; see `ssc_jax.ssc.structure`.
  Special cases: g=1 is a dense conv; g=G, p=None a grouped conv (g=M=N
  depthwise); K=1, g=None, p=P an interleaved grouped pointwise conv; g=P,
  p=1 HetConv-like. Parameters hold only kept weights (`ssc_jax.ssc.layout`).

  Attributes:
    features: N, the number of output channels.
    kernel_size: K, an int or (KH, KW).
    strides: an int or a pair.
    padding: 'SAME', 'VALID', an int, or ((lo, hi), (lo, hi)).
    g: groups of the KxK part, in [1, min(M, N)], or None.
    p: period of the 1x1 mixing, in [1, max(M, N)], or None. The spec asks
      for [1, M]; the seed's CIFAR-100 ResNet-32 2% row uses p = 64 on a
      32 -> 64 channel conv, where the mix joins c only to n = c (outside
      c's own KxK group).
    taps: the KxK pattern: 'full' (default), 'cross', 'x', 'alternate', or a
      KxK grid of 0/1 containing the centre. The mix stays at the centre.
    use_bias: add a bias per output channel.
    dtype: compute dtype (None: from the inputs and parameters).
    param_dtype: parameter dtype.
    precision: lax precision of the convolutions, matmuls and einsums.
    kernel_init: an SSC initializer `(key, fans, dtype)`
      (`ssc_jax.ssc.initializers`); each weight is drawn with the real fan-in
      of the output it feeds or the real fan-out of the input it reads.
    bias_init: a flax initializer for the bias.
    implementation: how the layer runs; every choice computes the same
      function. A lowering name (`ssc_jax.ssc.lowerings`: 'dense', 'grouped',
      'grouped4+matmul', 'taps', ...) for every pass, a (forward, input_grad,
      weight_grad) triple of names, or 'auto': the installed tuning plan's
      choice for this layer's shape, else the autotuner's cache file, else
      its cost rule (`ssc_jax.ssc.autotune`).
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: geometry_lib.PaddingLike = 'SAME'
  g: Optional[int] = 1
  p: Optional[int] = None
  taps: Union[str, Sequence[Sequence[int]]] = 'full'
  use_bias: bool = True
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: initializers.SSCInitializer = dataclasses.field(
      default_factory=initializers.lecun_normal)
  bias_init: Callable = nn.initializers.zeros_init()
  implementation: str = 'auto'

  @property
  def _owner(self) -> str:
    return f"SSCConv '{self.name}'" if self.name else 'SSCConv'

  def structure(self, in_features: int) -> SSCStructure:
    """The validated structure of this layer for M = in_features."""
    return ssc_structure(in_features, self.features, self.kernel_size, self.g, self.p,
                         self.taps, self._owner)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 3:
      raise ValueError(f'{self._owner}: input of shape {x.shape} must be (..., H, W, C)')
    structure = self.structure(x.shape[-1])
    geometry_lib.geometry(x.shape[-3:-1], structure.kernel_size, self.strides, self.padding,
                          self._owner)  # a kernel that does not fit fails before any init
    layout = layout_lib.layout(structure)
    kernel = mix = bias = None
    if layout.kernel is not None:
      kernel = self.param('kernel', lambda key: self.kernel_init(
          key, layout.kernel.fans, self.param_dtype))
    if layout.mix is not None:
      mix = self.param('mix', lambda key: self.kernel_init(
          key, layout.mix.fans, self.param_dtype))
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    return apply.conv(x, kernel, mix, bias, structure, strides=self.strides,
                      padding=self.padding, precision=self.precision,
                      implementation=self.implementation, dtype=self.dtype, owner=self._owner)
