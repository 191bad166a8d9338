"""Whole-layer lowerings of SSC: pure functions that compute one function.

Each lowering is ``fn(x, kernel, mix, layout, geometry, precision) -> y`` on
a (B, H, W, M) input and the stored parameters (None for a part the layer
does not have), returning (B, H', W', N) without bias. They differ only in
how XLA is asked to compute the layer:

* 'dense': the dense kernel (`layout.dense_index`) through one convolution.
* 'grouped': one `lax.conv_general_dilated` with ``feature_group_count=g``
  on the padded grouped kernel (positions outside the pattern are zeros),
  plus the mixing einsum.
* 'taps': the KxK part as batched matmuls over the shifted inputs of the
  kept positions only (5 for a 3x3 'cross', not 9), one set per group of
  outputs that share a pattern, plus the mixing einsum.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from ssc_jax.ssc.geometry import Geometry
from ssc_jax.ssc.layout import KernelLayout, Layout, MixLayout

Array = jax.Array
Lowering = Callable[[Array, Optional[Array], Optional[Array], Layout, Geometry, object], Array]
LOWERINGS: Dict[str, Lowering] = {}
_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def register(name: str) -> Callable[[Lowering], Lowering]:
  """Adds a lowering to `LOWERINGS` under `name`."""

  def add(fn: Lowering) -> Lowering:
    LOWERINGS[name] = fn
    return fn

  return add


def _explicit_axes() -> Tuple[str, ...]:
  """The explicit axes of the mesh being traced under (`jax.set_mesh`), if any."""
  mesh = jax.sharding.get_abstract_mesh()
  return () if mesh.empty else tuple(mesh.explicit_axes)


def _window(x: Array, geometry: Geometry, position: Tuple[int, int]) -> Array:
  """The input under kernel position (i, j) at every output position: (..., H', W', C).

  Zero padding is added only where the window reaches past the input.
  """
  lead = x.ndim - 3
  config = [(0, 0, 0)] * lead
  for dim, (offset, (lo, _), stride, out) in enumerate(
      zip(position, geometry.pads, geometry.strides, geometry.output_size)):
    low = lo - offset  # output o reads x[o * stride - lo + offset]
    high = (out - 1) * stride + 1 - (x.shape[lead + dim] + low)
    config.append((low, high, 0))
  config.append((0, 0, 0))
  shifted = lax.pad(x, jnp.zeros((), x.dtype), config)
  return lax.slice(shifted, (0,) * x.ndim, shifted.shape,
                   (1,) * lead + tuple(geometry.strides) + (1,))


def _mix_part(x: Array, mix: Array, mix_layout: MixLayout, geometry: Geometry,
              precision) -> Array:
  """Interleaved grouped 1x1 on the centre tap: y[..., b*p + r] = sum_a x[..., a*p + r] W[r, a, b]."""
  s = mix_layout.structure
  x = _window(x, geometry, s.centre)
  p = s.p
  blocks_in, blocks_out = mix_layout.blocks
  extra = blocks_in * p - s.in_features
  if extra:
    x = jnp.pad(x, [(0, 0)] * 3 + [(0, extra)])
  x = x.reshape(x.shape[:-1] + (blocks_in, p))
  y = jnp.einsum('...ar,rab->...br', x, mix_layout.box(mix), precision=precision)
  y = y.reshape(y.shape[:-2] + (blocks_out * p,))
  return y[..., :s.features]


def _grouped_input(x: Array, kernel_layout: KernelLayout) -> Array:
  """x with channels gathered into equal padded groups (g * max_in)."""
  index = kernel_layout.conv_input_index
  return x if index is None else jnp.take(x, jnp.asarray(index), axis=-1)


def _real_outputs(y: Array, index) -> Array:
  return y if index is None else jnp.take(y, jnp.asarray(index), axis=-1)


def _grouped_conv(x: Array, kernel: Array, kernel_layout: KernelLayout, geometry: Geometry,
                  precision) -> Array:
  """The KxK part as one grouped convolution on the padded grouped kernel."""
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=geometry.strides, padding=geometry.pads,
      dimension_numbers=_DIMENSIONS, feature_group_count=kernel_layout.structure.g,
      precision=precision)
  explicit = _explicit_axes()
  if explicit:
    # JAX cannot type the kernel gradient of a grouped convolution under
    # explicit sharding: the partitioner places it, in auto mode.
    conv = jax.sharding.auto_axes(conv, axes=explicit,
                                  out_sharding=P(*jax.typeof(x).sharding.spec[:-1]))
  y = conv(_grouped_input(x, kernel_layout), kernel_layout.padded_kernel(kernel))
  return _real_outputs(y, kernel_layout.conv_output_index)


def _tap_matmuls(x: Array, kernel: Array, kernel_layout: KernelLayout, geometry: Geometry,
                 precision) -> Array:
  """The KxK part as one batched matmul per tap class over its kept positions.

  The input is moved group-major once, so the (g, B, H', W', T, Mg) windows
  feed a batched matmul without a transpose of the T-times larger tensor.
  The batch axis stays its own dimension (never merged), so a batch sharded
  under explicit axes keeps a well-typed sharding.
  """
  s = kernel_layout.structure
  g, max_in = s.g, kernel_layout.max_in
  kw = s.kernel_size[1]
  batch, height, width = x.shape[:3]
  out_h, out_w = geometry.output_size
  x = _grouped_input(x, kernel_layout).reshape(batch, height, width, g, max_in)
  grouped = jnp.transpose(x, (3, 0, 1, 2, 4))  # (g, B, H, W, max_in)
  outputs = []
  for tap_class in kernel_layout.tap_classes:
    windows = [_window(grouped, geometry, divmod(position, kw))
               for position in tap_class.positions]
    patches = jnp.stack(windows, axis=-2)  # (g, B, H', W', T, max_in)
    weights = kernel_layout.class_kernel(tap_class, kernel)  # (T, max_in, g * max_out)
    weights = jnp.transpose(weights.reshape(len(windows), max_in, g, tap_class.max_out),
                            (2, 0, 1, 3))
    y = lax.dot_general(patches, weights, (((4, 5), (1, 2)), ((0,), (0,))),
                        precision=precision)  # (g, B, H', W', max_out)
    outputs.append(jnp.transpose(y, (1, 2, 3, 0, 4)).reshape(batch, out_h, out_w, -1))
  y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
  return _real_outputs(y, kernel_layout.taps_output_index)


def _sum_parts(x, kernel, mix, layout: Layout, geometry: Geometry, precision, kxk) -> Array:
  """The KxK part by `kxk` plus the mixing einsum; at least one part exists."""
  parts = []
  if layout.kernel is not None:
    parts.append(kxk(x, kernel, layout.kernel, geometry, precision))
  if layout.mix is not None:
    parts.append(_mix_part(x, mix, layout.mix, geometry, precision))
  return parts[0] if len(parts) == 1 else parts[0] + parts[1]


@register('dense')
def dense(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  """One convolution with the layer's dense kernel."""
  parts = [w.reshape(-1) for w in (kernel, mix) if w is not None]
  flat = jnp.concatenate(parts + [jnp.zeros((1,), parts[0].dtype)])
  weights = jnp.take(flat, jnp.asarray(layout.dense_index), mode='clip')
  return lax.conv_general_dilated(x, weights, geometry.strides, geometry.pads,
                                  dimension_numbers=_DIMENSIONS, precision=precision)


@register('grouped')
def grouped(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  """A grouped convolution (masked to the pattern) plus the mixing einsum."""
  return _sum_parts(x, kernel, mix, layout, geometry, precision, _grouped_conv)


@register('taps')
def taps(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  """Batched matmuls over the kept positions plus the mixing einsum."""
  return _sum_parts(x, kernel, mix, layout, geometry, precision, _tap_matmuls)
