"""Lowerings of SSC: the ways XLA can be asked to compute one layer, all exact.

A lowering is named by how it computes each part of the layer:

* ``'dense'``: the whole layer as one convolution with its dense kernel
  (`layout.Layout.dense_index`; the mix folded in at the centre tap).
* ``'shifts'``: the whole layer as one matmul per kept kernel position, of
  the shifted input with that position's masked dense (M, N) weight (the mix
  folded in at the centre): 5 matmuls for a 3x3 'cross', no grouping.
* ``'split'``: the whole layer as one convolution per dilated rectangle of
  kept positions (`layout.Layout.subgrids`) with its masked dense kernel,
  summed: a 3x3 'cross' is a 1x3 and a dilated 2x1 convolution, 5 taps'
  work with no shifted copies of the input.
* ``'<kxk>+<mix>'`` (``'+<mix>'`` may be left out: ``+einsum``), where
  ``<kxk>`` computes the KxK part:

  - ``grouped``: one grouped convolution with ``feature_group_count=g``
    (positions outside the pattern are zeros);
  - ``grouped<G>``: a coarser grouped convolution with G groups, G a divisor
    of g, on a block-diagonal masked kernel (``grouped1`` is the masked dense
    KxK kernel);
  - ``sliced`` / ``sliced<G>``: the same G physical groups (default g) as G
    plain convolutions, one per slice of channels, each computed as 'split'
    computes the layer (one convolution per dilated rectangle of kept
    positions): no grouped convolution in any pass, whose gradients XLA:CPU
    runs 10-1000x slower than a plain convolution's;
  - ``taps``: batched matmuls over the shifted inputs of the kept positions
    only (5 for a 3x3 'cross', not 9), one set per group of outputs that
    share a pattern;
  - ``rects`` / ``rects<G>``: one grouped convolution (G physical groups,
    default g) per dilated rectangle of kept positions: only the kept taps,
    no shifted copies, no scatter at run time where the weights are constants
    (an export: `_frozen`);

  and ``<mix>`` the 1x1 mixing part on the centre tap:

  - ``einsum``: the interleaved grouped 1x1 as an einsum over residues;
  - ``matmul``: one matmul with the masked dense (M, N) weight (p times the
    ideal work, no transposes);
  - ``pconv``: a 1x1 convolution with p groups on the channels permuted into
    residue order (c = a*p + r read as r*A + a), and the outputs permuted back;
  - ``dconv``: a 1x1 convolution with the masked dense (M, N) weight.

``'plain'`` runs the layer as plain convolutions only, which runtimes outside
XLA (ONNX Runtime, OpenVINO) run well (`plain_name`).

A part the layer does not have is skipped. `apply` runs a lowering, or a
`Choice` of one lowering per pass (forward, input gradient, weight gradient)
through a `jax.custom_vjp`: the input gradient is the VJP of its lowering with
respect to x only, the weight gradient the VJP of its own with respect to the
weights only, as cuDNN picks one algorithm per pass. All lowerings compute
one linear function, so any choice gives the same gradients up to rounding.
"""

from __future__ import annotations

import functools
import re
from typing import List, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from ssc_jax.ssc.geometry import Geometry
from ssc_jax.ssc.layout import KernelLayout, Layout, MixLayout

Array = jax.Array
_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
_NAME = re.compile(r'^(grouped|sliced|taps|rects)(\d*)(\+(einsum|matmul|pconv|dconv))?$')
MIXES = ('einsum', 'matmul')  # the mixes the autotuner times ('pconv', 'dconv': for export)


class Choice(NamedTuple):
  """One lowering per pass."""
  forward: str
  input_grad: str
  weight_grad: str


LoweringLike = Union[str, Choice, Tuple[str, str, str]]


def _explicit_axes() -> Tuple[str, ...]:
  """The explicit axes of the mesh being traced under (`jax.set_mesh`), if any."""
  mesh = jax.sharding.get_abstract_mesh()
  return () if mesh.empty else tuple(mesh.explicit_axes)


def _materialized(x: Array) -> Array:
  """x, kept from fusing into its consumers.

  The lowerings that read shifted windows of x would otherwise take the
  producer of x (in a network, the batch norm and ReLU before the layer)
  into each window's copy: on CPU, ResNet-32's inference forward pass with
  every layer on 'taps+matmul' took 1,016 ms, and 474 ms with this barrier
  on each layer's input (2026-11-27, benchmarks/network_speed.py
  --lowering=taps+matmul). The autotuner times every
  layer on a materialized input, so this also keeps the network's layer
  the program that was timed.
  """
  return lax.optimization_barrier(x)


def _frozen(fn, *weights):
  """fn(*weights): the derived weights of a lowering, computed at trace time where the
  stored weights are constants (a model exported with its weights closed over: the
  exported graph holds the derived kernels, not the gathers that build them), traced
  with the rest otherwise."""
  with jax.ensure_compile_time_eval():
    return fn(*weights)


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


def _take_channels(x: Array, index: Optional[np.ndarray]) -> Array:
  """x[..., index] (None: x itself); entries past the channel count read zero.

  No index repeats, so the gather is marked unique and its gradient is a
  scatter without collisions (a scatter-add into colliding positions runs
  serialised on GPUs).
  """
  if index is None:
    return x
  mode = 'fill' if np.any(index >= x.shape[-1]) else 'clip'
  return x.at[..., jnp.asarray(index)].get(mode=mode, fill_value=0, unique_indices=True)


# --- the 1x1 mixing part --------------------------------------------------------

def _mix_einsum(x: Array, mix: Array, mix_layout: MixLayout, geometry: Geometry,
                precision) -> Array:
  """y[..., b*p + r] = sum_a x[..., a*p + r] W[r, a, b] on the centre tap."""
  s = mix_layout.structure
  x = _window(x, geometry, s.centre)
  p = s.p
  blocks_in, blocks_out = mix_layout.blocks
  extra = blocks_in * p - s.in_features
  if extra:
    x = jnp.pad(x, [(0, 0)] * 3 + [(0, extra)])
  x = x.reshape(x.shape[:-1] + (blocks_in, p))
  y = jnp.einsum('...ar,rab->...br', x, _frozen(mix_layout.box, mix), precision=precision)
  y = y.reshape(y.shape[:-2] + (blocks_out * p,))
  return y[..., :s.features]


def _mix_matmul(x: Array, mix: Array, mix_layout: MixLayout, geometry: Geometry,
                precision) -> Array:
  """The centre tap times the masked dense (M, N) mixing weight."""
  x = _window(x, geometry, mix_layout.structure.centre)
  return jnp.matmul(x, _frozen(mix_layout.matrix, mix), precision=precision)


# --- the KxK part ---------------------------------------------------------------

def _grouped_conv(x: Array, kernel: Array, kernel_layout: KernelLayout, geometry: Geometry,
                  precision, groups: int) -> Array:
  """The KxK part as one grouped convolution with `groups` physical groups."""
  physical = kernel_layout.physical(groups)
  conv = functools.partial(
      lax.conv_general_dilated, window_strides=geometry.strides, padding=geometry.pads,
      dimension_numbers=_DIMENSIONS, feature_group_count=groups, precision=precision)
  explicit = _explicit_axes()
  if explicit and groups > 1:
    # JAX cannot type the kernel gradient of a grouped convolution under
    # explicit sharding: the partitioner places it, in auto mode.
    conv = jax.sharding.auto_axes(conv, axes=explicit,
                                  out_sharding=P(*jax.typeof(x).sharding.spec[:-1]))
  y = conv(_take_channels(x, physical.input_index), _frozen(physical.kernel, kernel))
  return _take_channels(y, physical.output_index)


def _rectangle_conv(x: Array, w: Array, rows: Tuple[int, ...], cols: Tuple[int, ...],
                    kernel_size: Tuple[int, int], geometry: Geometry, precision,
                    groups: int = 1) -> Array:
  """The convolution of x with the taps of a KxK kernel at one dilated rectangle
  of positions (`layout.rectangles`); w is the (len(rows), len(cols), I/groups, O)
  kernel there, `groups` its feature groups.

  The window moves as the full KxK window does: the padding is shifted by the
  rectangle's offset. Where that is negative (the rectangle starts inside the
  padding, or ends before the kernel's last row), x is cropped instead: ONNX
  Conv takes no negative padding.
  """
  pads, crop_start, crop_end = [], [0] * x.ndim, list(x.shape)
  for dim, ((lo, hi), size, taps) in enumerate(zip(geometry.pads, kernel_size, (rows, cols))):
    extent = taps[-1] - taps[0] + 1  # the dilated sub-kernel's span
    low, high = lo - taps[0], hi - size + taps[0] + extent
    axis = x.ndim - 3 + dim
    crop_start[axis], crop_end[axis] = max(0, -low), x.shape[axis] - max(0, -high)
    pads.append((max(0, low), max(0, high)))
  if crop_start != [0] * x.ndim or crop_end != list(x.shape):
    x = lax.slice(x, crop_start, crop_end)
  return lax.conv_general_dilated(x, w, geometry.strides, pads,
                                  rhs_dilation=(_step(rows), _step(cols)),
                                  dimension_numbers=_DIMENSIONS, precision=precision,
                                  feature_group_count=groups)


def _step(taps: Tuple[int, ...]) -> int:
  """The spacing of equally spaced kernel rows or columns (1 for one)."""
  return taps[1] - taps[0] if len(taps) > 1 else 1


def _sliced_conv(x: Array, kernel: Array, kernel_layout: KernelLayout, geometry: Geometry,
                 precision, groups: int) -> Array:
  """The KxK part as one plain convolution per physical group, on that group's own
  channels (sliced unpadded: no gather of the input or output), each summed over
  the dilated rectangles of kept positions."""
  physical = kernel_layout.physical(groups)
  kernel_size = kernel_layout.structure.kernel_size
  w = _frozen(physical.kernel, kernel)  # (KH, KW, max_in, groups * max_out), padding last
  outputs = []
  for group in range(groups):
    first_in, end_in = (int(v) for v in physical.in_starts[group:group + 2])
    first_out = group * physical.max_out
    end_out = first_out + int(physical.out_starts[group + 1] - physical.out_starts[group])
    x_group = lax.slice_in_dim(x, first_in, end_in, axis=x.ndim - 1)
    y = None
    for rows, cols in kernel_layout.rectangles:
      w_rect = lax.slice(w, (rows[0], cols[0], 0, first_out),
                         (rows[-1] + 1, cols[-1] + 1, end_in - first_in, end_out),
                         (_step(rows), _step(cols), 1, 1))
      term = _rectangle_conv(x_group, w_rect, rows, cols, kernel_size, geometry, precision)
      y = term if y is None else y + term
    outputs.append(y)
  return outputs[0] if groups == 1 else jnp.concatenate(outputs, axis=-1)


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
  x = _take_channels(_materialized(x), kernel_layout.physical(g).input_index)
  grouped = jnp.transpose(x.reshape(batch, height, width, g, max_in), (3, 0, 1, 2, 4))
  outputs = []
  for tap_class in kernel_layout.tap_classes:
    windows = [_window(grouped, geometry, divmod(position, kw))
               for position in tap_class.positions]
    patches = jnp.stack(windows, axis=-2)  # (g, B, H', W', T, max_in)
    weights = _frozen(kernel_layout.class_kernel, tap_class, kernel)  # (T, max_in, g * max_out)
    weights = jnp.transpose(weights.reshape(len(windows), max_in, g, tap_class.max_out),
                            (2, 0, 1, 3))
    y = lax.dot_general(patches, weights, (((4, 5), (1, 2)), ((0,), (0,))),
                        precision=precision)  # (g, B, H', W', max_out)
    outputs.append(jnp.transpose(y, (1, 2, 3, 0, 4)).reshape(batch, out_h, out_w, -1))
  y = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)
  return _take_channels(y, kernel_layout.taps_output_index)


def _gathered_channels(x: Array, index: Optional[np.ndarray]) -> Array:
  """x[..., index] (None: x), entries past the channel count reading a zero channel
  appended to x: a plain gather (ONNX Gather), no out-of-bounds handling."""
  if index is None:
    return x
  channels = x.shape[-1]
  if np.any(index >= channels):
    x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)
    index = np.minimum(index, channels)
  return jnp.take(x, jnp.asarray(index, np.int32), axis=-1, mode='clip')


def _rect_convs(x: Array, kernel: Array, kernel_layout: KernelLayout, geometry: Geometry,
                precision, groups: int) -> Array:
  """The KxK part as one grouped convolution (`groups` physical groups) per dilated
  rectangle of kept positions, summed: only the kept taps, no window copies."""
  physical = kernel_layout.physical(groups)
  kernel_size = kernel_layout.structure.kernel_size

  def rectangle_kernels(kernel):
    w = physical.kernel(kernel)  # (KH, KW, max_in, groups * max_out)
    return [w[rows[0]:rows[-1] + 1:_step(rows), cols[0]:cols[-1] + 1:_step(cols)]
            for rows, cols in kernel_layout.rectangles]

  x = _gathered_channels(x, physical.input_index)
  y = None
  for (rows, cols), w in zip(kernel_layout.rectangles, _frozen(rectangle_kernels, kernel)):
    term = _rectangle_conv(x, w, rows, cols, kernel_size, geometry, precision, groups)
    y = term if y is None else y + term
  return _gathered_channels(y, physical.output_index)


def _residue_order(channels: int, p: int) -> np.ndarray:
  """(p * ceil(channels / p),): the channel a*p + r at position r*A + a (past the end: padding)."""
  blocks = -(-channels // p)
  return (np.arange(blocks)[None, :] * p + np.arange(p)[:, None]).reshape(-1)


def _mix_grouped_conv(x: Array, mix: Array, mix_layout: MixLayout, geometry: Geometry,
                      precision) -> Array:
  """The mix as a 1x1 convolution with p groups, on the channels in residue order."""
  s = mix_layout.structure
  p, (blocks_in, blocks_out) = s.p, mix_layout.blocks
  w = _frozen(lambda mix: jnp.transpose(mix_layout.box(mix), (1, 0, 2)).reshape(
      1, 1, blocks_in, p * blocks_out), mix)  # [a, r*B + b] = W[r, a, b]
  x = _gathered_channels(x, _residue_order(s.in_features, p))
  y = _rectangle_conv(x, w, (s.centre[0],), (s.centre[1],), s.kernel_size, geometry,
                      precision, p)
  n = np.arange(s.features)
  return _gathered_channels(y, (n % p) * blocks_out + n // p)


def _mix_dense_conv(x: Array, mix: Array, mix_layout: MixLayout, geometry: Geometry,
                    precision) -> Array:
  """The mix as a 1x1 convolution with the masked dense (M, N) weight."""
  s = mix_layout.structure
  w = _frozen(mix_layout.matrix, mix)[None, None]
  return _rectangle_conv(x, w, (s.centre[0],), (s.centre[1],), s.kernel_size, geometry,
                         precision)


_MIX_FNS = {'einsum': _mix_einsum, 'matmul': _mix_matmul, 'pconv': _mix_grouped_conv,
            'dconv': _mix_dense_conv}


# --- whole lowerings ------------------------------------------------------------

def _dense(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  weights = _frozen(layout.gather, kernel, mix, layout.dense_index)
  conv = functools.partial(lax.conv_general_dilated, window_strides=geometry.strides,
                           padding=geometry.pads, dimension_numbers=_DIMENSIONS,
                           precision=precision)
  return conv(x, weights)


def _shifts(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  weights = _frozen(layout.gather, kernel, mix, layout.shift_index)  # (T, M, N)
  kw = layout.structure.kernel_size[1]
  x = _materialized(x)
  y = None
  for t, position in enumerate(layout.shift_positions):
    term = jnp.matmul(_window(x, geometry, divmod(position, kw)), weights[t], precision=precision)
    y = term if y is None else y + term
  return y


def _split(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  y = None
  for grid in layout.subgrids:
    term = _rectangle_conv(x, _frozen(layout.gather, kernel, mix, grid.index), grid.rows, grid.cols,
                           layout.structure.kernel_size, geometry, precision)
    y = term if y is None else y + term
  return y


def plain_name(layout: Layout) -> str:
  """The lowering that 'plain' runs for this layer, by a rule from ONNX Runtime's timings
  (docs/deploy.md): the kept taps as grouped convolutions and the mix as a masked dense
  1x1 convolution ('rects+dconv') where g divides the channels; else the kept taps as
  dense convolutions with the mix folded into the centre ('split'). Channel gathers (the
  padding of unequal groups, 'pconv''s residue order) keep ONNX Runtime from fusing and
  cost more than they save, so neither is used.
  """
  s = layout.structure
  return 'rects+dconv' if s.g is None or s.kernel_divisible else 'split'


def _plain(x, kernel, mix, layout: Layout, geometry: Geometry, precision) -> Array:
  return run(plain_name(layout), x, kernel, mix, layout, geometry, precision)


WHOLE = {'dense': _dense, 'shifts': _shifts, 'split': _split, 'plain': _plain}


NAMES = ("'dense', 'shifts', 'split', 'plain', or '<kxk>+<mix>' with <kxk> 'grouped', "
         "'grouped<G>', 'sliced', 'sliced<G>', 'rects', 'rects<G>' (G >= 1 dividing the "
         "layer's g) or 'taps', and <mix> 'einsum', 'matmul', 'pconv' or 'dconv' (e.g. "
         "'grouped4+matmul'; '+einsum' may be left out)")


def _parsed(name) -> Optional[re.Match]:
  """The match of a '<kxk>+<mix>' name, or None where `name` is not one ('taps' takes no G)."""
  match = _NAME.match(name) if isinstance(name, str) else None
  if match is None or (match.group(2) and (match.group(1) == 'taps' or int(match.group(2)) < 1)):
    return None
  return match


def is_name(name: str) -> bool:
  """Whether `name` is written as a lowering (a layer may still be unable to run it)."""
  return isinstance(name, str) and (name in WHOLE or _parsed(name) is not None)


def check(name: str, layout: Layout, owner: str = 'SSC layer') -> None:
  """Raises ValueError unless `name` is a lowering this layer can run."""
  if name in WHOLE:
    return
  match = _parsed(name)
  if match is None:
    raise ValueError(f'{owner}: lowering {name!r} must be {NAMES}')
  groups = match.group(2)
  g = layout.structure.g
  if groups and g is None:
    raise ValueError(f'{owner}: lowering {name!r} gives {groups} physical groups, but the layer '
                     'has no KxK part (g=None): drop the number')
  if groups and g % int(groups):
    raise ValueError(f'{owner}: lowering {name!r}: {groups} physical groups must divide '
                     f'g={g}')


def physical_groups(name: str, layout: Layout) -> Optional[int]:
  """The groups of the grouped KxK convolution that lowering `name` runs (None: none)."""
  match = _NAME.match(name)
  if not match or match.group(1) != 'grouped' or layout.kernel is None:
    return None
  return int(match.group(2) or layout.structure.g)


def run(name: str, x: Array, kernel: Optional[Array], mix: Optional[Array], layout: Layout,
        geometry: Geometry, precision) -> Array:
  """The layer (no bias) on a (B, H, W, M) input by the lowering `name` (`check` it first)."""
  if name in WHOLE:
    return WHOLE[name](x, kernel, mix, layout, geometry, precision)
  match = _NAME.match(name)
  if match is None:
    raise ValueError(f'lowering {name!r} is not a lowering name (see ssc_jax.ssc.lowerings)')
  parts = []
  if layout.kernel is not None:
    kind, groups = match.group(1), int(match.group(2) or layout.structure.g)
    if kind == 'taps':
      parts.append(_tap_matmuls(x, kernel, layout.kernel, geometry, precision))
    elif kind == 'rects':
      parts.append(_rect_convs(x, kernel, layout.kernel, geometry, precision, groups))
    elif kind == 'sliced':
      parts.append(_sliced_conv(x, kernel, layout.kernel, geometry, precision, groups))
    else:
      parts.append(_grouped_conv(x, kernel, layout.kernel, geometry, precision, groups))
  if layout.mix is not None:
    parts.append(_MIX_FNS[match.group(4) or 'einsum'](x, mix, layout.mix, geometry, precision))
  return parts[0] if len(parts) == 1 else parts[0] + parts[1]


COARSE_CHANNELS = 32  # a coarser grouped convolution keeps at least this many channels a group
SLICE_CHANNELS = 16  # a coarser slicing keeps at least this many channels a slice
LANES = 128  # the width of a TPU matrix unit (v5e: 128x128), and of a vector register's lanes


def _coarser(g: int, width: int, channels: int) -> List[int]:
  """The largest divisor G of g below g (above 1) that leaves `channels` channels a group."""
  return [d for d in range(g - 1, 1, -1) if g % d == 0 and width // d >= channels][:1]


def lane_packing(layout: Layout) -> Optional[str]:
  """'grouped<G>' with the groups packed into blocks of at least `LANES` channels (G the
  largest divisor of g that leaves that many; the logical groups of a block are its
  block-diagonal kernel), where that is coarser than g and finer than the masked dense
  kernel; else None. A 512-channel layer with g = 16 runs as 4 blocks of 128 channels."""
  s = layout.structure
  if s.g is None or s.g == 1:
    return None
  packed = [d for d in range(s.g, 0, -1)
            if s.g % d == 0 and min(s.in_features, s.features) // d >= LANES][:1]
  return f'grouped{packed[0]}' if packed and 1 < packed[0] < s.g else None


def coarse_slicing(layout: Layout) -> str:
  """'sliced<G>' at the coarser slicing that `candidates` times, else 'sliced' (at g)."""
  s = layout.structure
  coarser = _coarser(s.g, min(s.in_features, s.features), SLICE_CHANNELS)
  return f'sliced{coarser[0]}' if coarser else 'sliced'


def candidates(layout: Layout, platform: str = 'cpu') -> List[str]:
  """The lowerings of this layer that the autotuner scores on `platform`.

  The KxK part: the grouped convolution, one coarser grouping (`_coarser`,
  `COARSE_CHANNELS` a group), on TPU also the groups packed into
  `LANES`-channel blocks (`lane_packing`), the masked dense kernel (G = 1),
  'sliced' at g and at one coarser slicing (`SLICE_CHANNELS` a slice), and
  'taps'; the mix variants where the layer mixes. 'shifts' only where the
  kernel has more than one position (at 1x1 it is the masked dense matmul of
  'grouped+matmul'), 'split' only where the pattern leaves positions out
  (else it is 'dense').
  """
  s = layout.structure
  kxk = ['grouped']
  if layout.kernel is not None:
    width = min(s.in_features, s.features)
    kxk += [f'grouped{d}' for d in _coarser(s.g, width, COARSE_CHANNELS)]
    if platform == 'tpu':
      kxk += [name for name in [lane_packing(layout)] if name]
    if s.g > 1:
      kxk += ['grouped1', 'sliced', coarse_slicing(layout)]
    kxk.append('taps')
  kxk = list(dict.fromkeys(kxk))
  mixes = list(MIXES) if layout.mix is not None else ['einsum']
  names = [k if m == 'einsum' else f'{k}+{m}' for k in kxk for m in mixes]
  whole = ['dense'] + (['shifts'] if s.kernel_size != (1, 1) else [])
  if len(layout.shift_positions) < s.kernel_size[0] * s.kernel_size[1]:
    whole.append('split')
  return whole + names


def as_choice(lowering: LoweringLike) -> Choice:
  """A lowering name (every pass) or a (forward, input_grad, weight_grad) triple as a Choice."""
  if isinstance(lowering, str):
    return Choice(lowering, lowering, lowering)
  return Choice(*lowering)


def apply(lowering: LoweringLike, x: Array, kernel: Optional[Array], mix: Optional[Array],
          layout: Layout, geometry: Geometry, precision) -> Array:
  """The layer (no bias) with one lowering, or one per pass."""
  choice = as_choice(lowering)
  if choice.forward == choice.input_grad == choice.weight_grad:
    return run(choice.forward, x, kernel, mix, layout, geometry, precision)
  return _per_pass(choice, layout, geometry, precision)(x, kernel, mix)


@functools.lru_cache(maxsize=None)
def _per_pass(choice: Choice, layout: Layout, geometry: Geometry, precision):
  """f(x, kernel, mix) with each pass computed by its own lowering."""

  def by(name):
    return functools.partial(run, name, layout=layout, geometry=geometry, precision=precision)

  @jax.custom_vjp
  def layer(x, kernel, mix):
    return by(choice.forward)(x, kernel, mix)

  def forward(x, kernel, mix):
    return layer(x, kernel, mix), (x, kernel, mix)

  def backward(residuals, dy):
    x, kernel, mix = residuals
    _, input_vjp = jax.vjp(lambda x: by(choice.input_grad)(x, kernel, mix), x)
    _, weight_vjp = jax.vjp(lambda k, m: by(choice.weight_grad)(x, k, m), kernel, mix)
    return input_vjp(dy) + weight_vjp(dy)

  layer.defvjp(forward, backward)
  return layer
