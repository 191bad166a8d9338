"""The layer's computation on given parameters, shared by the linen and NNX modules.

Both `ssc_jax.ssc.module.SSCConv` (linen) and `ssc_jax.nnx.SSCConv` hold the
same compact parameters (`ssc_jax.ssc.layout`) and call `conv` here, so the
two modules run the same lowerings under the same tuning plan.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
from flax.linen import dtypes

from ssc_jax.ssc import autotune
from ssc_jax.ssc import geometry as geometry_lib
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc import lowerings
from ssc_jax.ssc.structure import SSCStructure

Array = jax.Array
Implementation = Union[str, Sequence[str]]


def checked_implementation(implementation: Implementation, layout: layout_lib.Layout,
                           owner: str) -> Optional[lowerings.Choice]:
  """`implementation` as a Choice, None for 'auto'; ValueError naming `owner` otherwise."""
  if implementation == 'auto':
    return None
  if isinstance(implementation, str):
    names = (implementation,)
  elif not isinstance(implementation, (list, tuple)) or len(implementation) != 3:
    raise ValueError(f"{owner}: implementation={implementation!r} must be 'auto', "
                     'a lowering name or a (forward, input_grad, weight_grad) triple of names')
  else:
    names = tuple(implementation)
  for name in names:
    lowerings.check(name, layout, f'{owner}: implementation={implementation!r}')
  return lowerings.as_choice(implementation if isinstance(implementation, str) else names)


def conv(x: Array, kernel: Optional[Array], mix: Optional[Array], bias: Optional[Array],
         structure: SSCStructure, *, strides: Union[int, Sequence[int]],
         padding: geometry_lib.PaddingLike, precision: Any, implementation: Implementation,
         dtype: Any, owner: str) -> Array:
  """The SSC layer on x of shape (..., H, W, M): (..., H', W', N).

  `kernel` and `mix` are the compact parameters of `structure`'s layout (None
  for a part the layer does not have), `bias` the (N,) bias or None. Inputs
  and parameters are promoted to `dtype` (None: their common dtype), as flax
  layers do; `implementation` is 'auto' (the plan, the cache file, the rule:
  `ssc_jax.ssc.autotune.choose`), a lowering name or a per-pass triple.
  """
  if x.ndim < 3:
    raise ValueError(f'{owner}: input of shape {x.shape} must be (..., H, W, C)')
  if x.shape[-1] != structure.in_features:
    raise ValueError(f'{owner}: input of shape {x.shape} has {x.shape[-1]} channels; the '
                     f'layer was built for in_features={structure.in_features}')
  geometry = geometry_lib.geometry(x.shape[-3:-1], structure.kernel_size, strides, padding,
                                   owner)
  layout = layout_lib.layout(structure)
  x, kernel, mix, bias = dtypes.promote_dtype(x, kernel, mix, bias, dtype=dtype)
  batch_shape = x.shape[:-3]
  x = x.reshape((-1,) + x.shape[-3:])
  choice = checked_implementation(implementation, layout, owner)
  if choice is None:
    choice = autotune.choose(layout, geometry, x.shape[0], x.dtype)
  y = lowerings.apply(choice, x, kernel, mix, layout, geometry, precision)
  if bias is not None:
    y = y + bias
  return y.reshape(batch_shape + y.shape[1:])
