"""SSCConv as a native Flax NNX module.

It holds the same compact parameters as the linen `ssc_jax.SSCConv` (`kernel`,
`mix` and `bias`, with the shapes of `ssc_jax.ssc.layout`) and computes
through `ssc_jax.ssc.apply.conv`, so both modules run the same lowerings under
the same tuning plan (`ssc_jax.ssc.autotune.installed`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from ssc_jax.ssc import apply
from ssc_jax.ssc import geometry as geometry_lib
from ssc_jax.ssc import initializers
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc.structure import SSCStructure, ssc_structure

Array = jax.Array


class SSCConv(nnx.Module):
  """Structured sparse convolution: grouped KxK conv plus structured 1x1 mixing.

  The NNX twin of `ssc_jax.SSCConv` (same definition, parameters and
  lowerings; `ssc_jax.ssc.structure` for what g, p and taps join). Input
  (..., H, W, in_features), output (..., H', W', out_features).

  Args:
    in_features: M, the input channels.
    out_features: N, the output channels.
    kernel_size: K, an int or (KH, KW).
    strides: an int or a pair.
    padding: 'SAME', 'VALID', an int, or ((lo, hi), (lo, hi)).
    g: groups of the KxK part, in [1, min(M, N)], or None (no KxK part).
    p: period of the 1x1 mixing, in [1, max(M, N)], or None (no mixing).
    taps: the KxK pattern: 'full', 'cross', 'x', 'alternate', or a KxK grid of 0/1.
    use_bias: add a bias per output channel.
    dtype: compute dtype (None: from the inputs and parameters).
    param_dtype: parameter dtype.
    precision: lax precision of the convolutions, matmuls and einsums.
    kernel_init: an SSC initializer `(key, fans, dtype)` (`ssc_jax.lecun_normal()` ...).
    bias_init: a flax initializer for the bias.
    implementation: 'auto', a lowering name or a (forward, input_grad,
      weight_grad) triple (`ssc_jax.ssc.lowerings`).
    rngs: the `nnx.Rngs` whose 'params' stream draws the parameters.
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: Union[int, Sequence[int]] = 3, *,
               strides: Union[int, Sequence[int]] = 1,
               padding: geometry_lib.PaddingLike = 'SAME', g: Optional[int] = 1,
               p: Optional[int] = None, taps: Union[str, Sequence[Sequence[int]]] = 'full',
               use_bias: bool = True, dtype: Optional[Any] = None,
               param_dtype: Any = jnp.float32, precision: Any = None,
               kernel_init: initializers.SSCInitializer = initializers.lecun_normal(),
               bias_init: Callable = nnx.initializers.zeros_init(),
               implementation: apply.Implementation = 'auto', rngs: nnx.Rngs):
    owner = 'nnx.SSCConv'
    structure = ssc_structure(in_features, out_features, kernel_size, g, p, taps, owner)
    layout = layout_lib.layout(structure)
    if not isinstance(implementation, str):
      implementation = tuple(implementation)
    apply.checked_implementation(implementation, layout, owner)
    self.in_features, self.out_features = in_features, out_features
    self.kernel_size = structure.kernel_size
    self.strides, self.padding = strides, padding
    self.g, self.p, self.taps = g, p, structure.taps
    self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision
    self.implementation = implementation
    draw = lambda fans: nnx.Param(kernel_init(rngs.params(), fans, param_dtype))
    self.kernel = draw(layout.kernel.fans) if layout.kernel is not None else None
    self.mix = draw(layout.mix.fans) if layout.mix is not None else None
    self.bias = (nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
                 if use_bias else None)

  @property
  def structure(self) -> SSCStructure:
    """The layer's structure (`ssc_jax.ssc_structure`), e.g. for `dense_kernel`."""
    return ssc_structure(self.in_features, self.out_features, self.kernel_size, self.g,
                         self.p, self.taps)

  def __call__(self, x: Array) -> Array:
    value = lambda param: None if param is None else param[...]
    return apply.conv(x, value(self.kernel), value(self.mix), value(self.bias), self.structure,
                      strides=self.strides, padding=self.padding, precision=self.precision,
                      implementation=self.implementation, dtype=self.dtype,
                      owner='nnx.SSCConv')
