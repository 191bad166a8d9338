"""Compact storage of an SSC layer's weights, and static gathers out of it.

The parameters hold only kept weights:

* ``kernel`` (the KxK part) stores entries (t, l, n): output n, the l-th
  input channel of n's group, the t-th position of n's pattern (row-major),
  ordered by (t, l, n). Its shape is (KH, KW, M//g, N) for the 'full'
  pattern with g dividing M and N (the layout of
  ``nn.Conv(feature_group_count=g)``), (T, M//g, N) for a T-position pattern
  with divisible g, (KH, KW, S) or (T, S) over the S kept (l, n) pairs when g
  does not divide, and a flat vector where outputs keep different numbers of
  positions ('alternate' with K = 5).
* ``mix`` (the 1x1 part) stores entries (r, a, b), joining c = a*p + r to
  n = b*p + r: a (p, ceil(M/p), ceil(N/p)) box when every entry is kept, else
  the flat vector of the kept ones in that order.

Every other layout a lowering needs (the padded grouped HWIO kernel, one
kernel per group of outputs sharing a pattern, the dense kernel) is described
by a static index and built by scattering the stored weights to unique
positions of a zero array (`take_flat`), so gradients never leave the pattern
and flow back as gathers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ssc_jax.ssc.structure import SSCStructure
from ssc_jax.ssc.structure import group_starts
from ssc_jax.ssc.structure import read_only as _read_only

Array = jax.Array


class Fans(NamedTuple):
  """Per stored weight: the real fan-in of the output it feeds and the real
  fan-out (positions x outputs) of the input it reads, in the parameter's shape."""
  fan_in: np.ndarray
  fan_out: np.ndarray


def _index(shape: Tuple[int, ...], targets: Tuple[np.ndarray, ...], size: int) -> np.ndarray:
  """An int32 array of `shape` holding i at targets[i] and `size` (the zero slot) elsewhere."""
  index = np.full(shape, size, np.int32)
  index[targets] = np.arange(size, dtype=np.int32)
  return _read_only(index)


_PLACEMENTS: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = {}


def _placement(index: np.ndarray, size: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
  """(targets, entries) of an index into `size` entries: derived.ravel()[targets] = flat[entries].

  Positions of `index` below `size` (the zero slot) hold one stored entry
  each, and no entry appears twice. `entries` is None when it is every entry
  in order.
  """
  cached = _PLACEMENTS.get((id(index), size))
  if cached is None:  # the cache holds `index` itself, so its id is not reused
    flat = index.reshape(-1)
    placed = np.flatnonzero(flat < size)
    entries = flat[placed]
    order = np.argsort(entries, kind='stable')
    targets, entries = placed[order].astype(np.int32), entries[order]
    assert len(np.unique(entries)) == len(entries)
    every = len(entries) == size and np.array_equal(entries, np.arange(size))
    cached = (index, targets, None if every else entries.astype(np.int32))
    _PLACEMENTS[(id(index), size)] = cached
  return cached[1], cached[2]


def take_flat(stored: Array, index: np.ndarray) -> Array:
  """The array of `index`'s shape holding stored.ravel()[i] where index is i, zeros elsewhere.

  Built as a scatter of the stored entries to unique positions: its gradient
  is a gather, with no accumulation into a shared zero slot (which, as a
  scatter-add with colliding indices, runs serialised on GPUs).
  """
  flat = stored.reshape(-1)
  targets, entries = _placement(index, flat.shape[0])
  values = flat if entries is None else flat.at[jnp.asarray(entries)].get(unique_indices=True)
  out = jnp.zeros(index.size, stored.dtype).at[jnp.asarray(targets)].add(
      values, unique_indices=True)
  return out.reshape(index.shape)


@dataclasses.dataclass(frozen=True)
class TapClass:
  """Outputs that share one spatial pattern, as a padded grouped layout.

  Attributes:
    positions: flat kernel positions (i * KW + j) of the pattern, row-major.
    max_out: outputs of the class per group, padded to the largest group.
    kernel_index: (T, max_in, g * max_out) into the flat kernel (zero slot
      past its end), or None when the stored kernel already is that array.
    outputs: (g * max_out,) the output channel of each column (-1: padding).
  """
  positions: Tuple[int, ...]
  max_out: int
  kernel_index: Optional[np.ndarray]
  outputs: np.ndarray


class KernelLayout:
  """Storage of the KxK part of `structure` (g not None)."""

  def __init__(self, structure: SSCStructure):
    s = structure
    self.structure = s
    kh, kw = s.kernel_size
    in_sizes, out_sizes = np.diff(s.in_starts), np.diff(s.out_starts)
    self.max_in, self.max_out = int(in_sizes.max()), int(out_sizes.max())
    # Kept (l, n) pairs, row-major: every (l, n) when g divides M and N.
    pair_local, pair_out = np.nonzero(np.arange(self.max_in)[:, None] < in_sizes[s.out_group][None, :])
    pair_shape = (self.max_in, s.features) if s.kernel_divisible else (len(pair_local),)
    counts = s.taps_per_output
    if s.taps == 'full':
      self.shape = (kh, kw) + pair_shape
    elif np.all(counts == counts[0]):
      self.shape = (int(counts[0]),) + pair_shape
    else:
      self.shape = (s.num_kernel_weights,)
    # Entries (t, pair) in storage order, and where each one sits.
    t, pair = np.nonzero(np.arange(counts.max())[:, None] < counts[pair_out][None, :])
    positions = np.full((s.features, counts.max()), -1)
    out_of_position, position = np.nonzero(s.tap_mask.reshape(kh * kw, -1).T)
    positions[out_of_position, np.concatenate([np.arange(c) for c in counts])] = position
    self.entry_out = _read_only(pair_out[pair])
    self.entry_local = _read_only(pair_local[pair])
    self.entry_in = _read_only(s.in_starts[s.out_group[self.entry_out]] + self.entry_local)
    self.entry_position = _read_only(positions[self.entry_out, t])
    self.size = len(self.entry_out)
    assert self.size == s.num_kernel_weights == int(np.prod(self.shape))

  @functools.cached_property
  def fans(self) -> Fans:
    s = self.structure
    return Fans(s.fan_in[self.entry_out].reshape(self.shape),
                s.fan_out[self.entry_in].reshape(self.shape))

  def physical(self, groups: int) -> 'PhysicalGroups':
    """The KxK part as a padded grouped convolution with `groups` (a divisor of g) groups."""
    return _physical(self, groups)

  @functools.cached_property
  def rectangles(self) -> Tuple['Rectangle', ...]:
    """The positions any output's pattern keeps, as dilated rectangles (`rectangles`)."""
    kh, kw = self.structure.kernel_size
    kept = np.flatnonzero(self.structure.tap_mask.reshape(kh * kw, -1).any(axis=1))
    return rectangles(tuple(int(v) for v in kept), kw)

  @functools.cached_property
  def tap_classes(self) -> Tuple[TapClass, ...]:
    """The outputs grouped by pattern, each as its own padded grouped layout."""
    s = self.structure
    kh, kw = s.kernel_size
    patterns = s.tap_mask.reshape(kh * kw, -1).T  # (N, K*K)
    unique, which = np.unique(patterns, axis=0, return_inverse=True)
    which = which.reshape(-1)
    classes = []
    for c, pattern in enumerate(unique):
      outputs = np.nonzero(which == c)[0]
      group = s.out_group[outputs]
      rank = np.arange(len(outputs)) - np.searchsorted(group, group)  # rank within the group
      max_out = int(np.bincount(group, minlength=s.g).max())
      column = np.full(s.features, -1)
      column[outputs] = group * max_out + rank
      position = np.flatnonzero(pattern)
      columns = np.full(s.g * max_out, -1)
      columns[column[outputs]] = outputs
      if len(unique) == 1 and s.kernel_divisible:
        index = None  # stored (T, M//g, N) or (KH, KW, M//g, N) is this layout already
      else:
        mine = which[self.entry_out] == c
        t = np.searchsorted(position, self.entry_position[mine])
        index = np.full((len(position), self.max_in, s.g * max_out), self.size, np.int32)
        index[t, self.entry_local[mine], column[self.entry_out[mine]]] = np.flatnonzero(mine)
        index = _read_only(index)
      classes.append(TapClass(tuple(int(v) for v in position), max_out, index,
                              _read_only(columns)))
    return tuple(classes)

  @functools.cached_property
  def taps_output_index(self) -> Optional[np.ndarray]:
    """(N,) into the tap classes' outputs laid side by side (None: identity)."""
    offsets = np.cumsum([0] + [len(c.outputs) for c in self.tap_classes])
    where = np.full(self.structure.features, -1)
    for offset, tap_class in zip(offsets, self.tap_classes):
      real = tap_class.outputs >= 0
      where[tap_class.outputs[real]] = offset + np.flatnonzero(real)
    if np.array_equal(where, np.arange(offsets[-1])):
      return None
    return _read_only(where)

  def class_kernel(self, tap_class: TapClass, kernel: Array) -> Array:
    """(T, max_in, g * max_out) kernel of one tap class."""
    if tap_class.kernel_index is None:
      return kernel.reshape(len(tap_class.positions), self.max_in, -1)
    return take_flat(kernel, tap_class.kernel_index)


class PhysicalGroups:
  """The KxK part run as a grouped convolution with G groups, G dividing g.

  Each of the G physical groups holds g/G logical groups whole (group
  boundaries nest: floor(c*G/M) = floor(floor(c*g/M) / (g/G))); weights
  between logical groups of one physical group are zeros. G = g is the
  layer's own grouped convolution, G = 1 its masked dense KxK kernel. Unequal
  groups are padded: a padding input reads a zero channel (its weights are
  zero too) and padding outputs are dropped.

  Attributes:
    groups: G.
    in_starts, out_starts: (G + 1,) the first input and output channel of
      each physical group, then M and N.
    max_in, max_out: channels per physical group, padded (a group's padding
      comes after its real channels).
    input_index: (G * max_in,) channels gathered into the padded input (M and
      above: a zero channel), or None.
    output_index: (N,) the column of each output, or None when all columns are real.
    kernel_index: (KH, KW, max_in, G * max_out) into the flat kernel (zero
      slot past its end), or None when the stored kernel is that array.
  """

  def __init__(self, kernel_layout: KernelLayout, groups: int):
    s = kernel_layout.structure
    if groups < 1 or s.g % groups:
      raise ValueError(f'physical groups={groups} must divide g={s.g}')
    self.groups = groups
    self.in_starts = in_starts = group_starts(s.in_features, groups)
    self.out_starts = out_starts = group_starts(s.features, groups)
    in_sizes, out_sizes = np.diff(in_starts), np.diff(out_starts)
    self.max_in, self.max_out = int(in_sizes.max()), int(out_sizes.max())
    self.input_index = None
    if not np.all(in_sizes == self.max_in):
      local = np.arange(self.max_in)[None, :]
      index = np.where(local < in_sizes[:, None], in_starts[:-1, None] + local, -1).reshape(-1)
      padding = index < 0  # each its own index past the channels: no index repeats
      index[padding] = s.in_features + np.arange(padding.sum())
      self.input_index = _read_only(index)

    def column(out):
      group = out * groups // s.features
      return group * self.max_out + (out - out_starts[group])

    self.output_index = None
    if not np.all(out_sizes == self.max_out):
      self.output_index = _read_only(column(np.arange(s.features)))
    if s.taps == 'full' and s.kernel_divisible and groups == s.g:
      self.kernel_index = None
    else:
      kl = kernel_layout
      kh, kw = s.kernel_size
      local_in = kl.entry_in - in_starts[kl.entry_out * groups // s.features]
      shape = (kh * kw, self.max_in, groups * self.max_out)
      targets = (kl.entry_position, local_in, column(kl.entry_out))
      self.kernel_index = _index(shape, targets, kl.size).reshape((kh, kw) + shape[1:])

  def kernel(self, stored: Array) -> Array:
    """The stored kernel as this grouped convolution's HWIO kernel."""
    return stored if self.kernel_index is None else take_flat(stored, self.kernel_index)


@functools.lru_cache(maxsize=None)
def _physical(kernel_layout: KernelLayout, groups: int) -> PhysicalGroups:
  return PhysicalGroups(kernel_layout, groups)


class MixLayout:
  """Storage of the 1x1 mixing part of `structure` (some mix weight kept)."""

  def __init__(self, structure: SSCStructure):
    s = structure
    self.structure = s
    p = s.p
    self.blocks = (-(-s.in_features // p), -(-s.features // p))
    blocks_in, blocks_out = self.blocks
    c = np.arange(blocks_in)[None, :, None] * p + np.arange(p)[:, None, None]
    n = np.arange(blocks_out)[None, None, :] * p + np.arange(p)[:, None, None]
    valid = (c < s.in_features) & (n < s.features)
    kept = np.zeros(valid.shape, bool)
    kept[valid] = s.mix_pairs[np.broadcast_to(c, valid.shape)[valid],
                              np.broadcast_to(n, valid.shape)[valid]]
    self.box_kept = _read_only(kept)
    self.full = bool(kept.all())
    self.shape = kept.shape if self.full else (s.num_mix_weights,)
    r, a, b = np.nonzero(kept)
    self.entry_in = _read_only(a * p + r)
    self.entry_out = _read_only(b * p + r)
    self.size = len(r)

  @functools.cached_property
  def fans(self) -> Fans:
    s = self.structure
    return Fans(s.fan_in[self.entry_out].reshape(self.shape),
                s.fan_out[self.entry_in].reshape(self.shape))

  @functools.cached_property
  def box_index(self) -> Optional[np.ndarray]:
    """(p, A, B) into the flat mix (zero slot past its end); None if it is the box."""
    return None if self.full else _index(self.box_kept.shape, np.nonzero(self.box_kept), self.size)

  def box(self, mix: Array) -> Array:
    """The stored mix as its (p, A, B) box, zeros where no weight is kept."""
    return mix if self.box_index is None else take_flat(mix, self.box_index)

  @functools.cached_property
  def matrix_index(self) -> np.ndarray:
    """(M, N) into the flat mix (zero slot past its end): the masked dense 1x1 weight."""
    s = self.structure
    return _index((s.in_features, s.features), (self.entry_in, self.entry_out), self.size)

  def matrix(self, mix: Array) -> Array:
    """The stored mix as a masked dense (M, N) 1x1 weight."""
    return take_flat(mix, self.matrix_index)


class SubGrid(NamedTuple):
  """Kept kernel positions forming one dilated rectangle: rows x cols, each equally spaced.

  index: (len(rows), len(cols), M, N) into [flat kernel, flat mix, 0], the
  dense kernel's gather at those positions.
  """
  rows: Tuple[int, ...]
  cols: Tuple[int, ...]
  index: np.ndarray


def _spaced_runs(values: Tuple[int, ...]) -> Tuple[Tuple[int, ...], ...]:
  """Sorted values cut into runs of one step each, greedily: (0, 2, 3) -> (0, 2), (3,)."""
  runs, run = [], [values[0]]
  for value in values[1:]:
    if len(run) == 1 or value - run[-1] == run[1] - run[0]:
      run.append(value)
    else:
      runs.append(tuple(run))
      run = [value]
  return tuple(runs) + (tuple(run),)


Rectangle = Tuple[Tuple[int, ...], Tuple[int, ...]]  # (rows, cols), each equally spaced


def rectangles(positions: Tuple[int, ...], kw: int) -> Tuple[Rectangle, ...]:
  """Flat kernel positions (i * kw + j) as few dilated rectangles: ((rows, cols), ...).

  Rows with the same kept columns are grouped; each group's rows and its
  columns are cut into equally spaced runs. A 3x3 'cross' gives its centre
  row (1x3) and the two other centre-column taps (2x1, dilation 2); an 'x',
  its corners (2x2, dilation 2) and the centre.
  """
  columns: Dict[int, list] = {}
  for position in positions:
    columns.setdefault(position // kw, []).append(position % kw)
  rows_of: Dict[Tuple[int, ...], list] = {}
  for row, cols in columns.items():
    rows_of.setdefault(tuple(cols), []).append(row)
  return tuple((row_run, col_run) for cols, rows in rows_of.items()
               for row_run in _spaced_runs(tuple(rows)) for col_run in _spaced_runs(cols))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Storage of both parts of a layer; None for a part without weights."""
  structure: SSCStructure
  kernel: Optional[KernelLayout]
  mix: Optional[MixLayout]

  def gather(self, kernel: Optional[Array], mix: Optional[Array], index: np.ndarray) -> Array:
    """`take_flat` of the layer's weights (kernel then mix, flattened) through `index`."""
    parts = [w.reshape(-1) for w in (kernel, mix) if w is not None]
    # lax, not jnp: jax2onnx replaces jnp.concatenate while it traces an export, whose
    # weights are derived eagerly (`lowerings._frozen`).
    return take_flat(lax.concatenate(parts, 0) if len(parts) > 1 else parts[0], index)

  @functools.cached_property
  def dense_index(self) -> np.ndarray:
    """(KH, KW, M, N) into [flat kernel, flat mix, 0]: the dense kernel's gather."""
    s = self.structure
    kh, kw = s.kernel_size
    positions, ins, outs = [], [], []
    if self.kernel is not None:
      positions.append(self.kernel.entry_position)
      ins.append(self.kernel.entry_in)
      outs.append(self.kernel.entry_out)
    if self.mix is not None:
      ch, cw = s.centre
      positions.append(np.full(self.mix.size, ch * kw + cw))
      ins.append(self.mix.entry_in)
      outs.append(self.mix.entry_out)
    targets = tuple(np.concatenate(v) for v in (positions, ins, outs))
    index = _index((kh * kw, s.in_features, s.features), targets, s.num_weights)
    return index.reshape(kh, kw, s.in_features, s.features)


  @functools.cached_property
  def shift_positions(self) -> Tuple[int, ...]:
    """Flat kernel positions (i * KW + j) where any weight of the layer sits."""
    return tuple(int(v) for v in np.flatnonzero(self.structure.mask.any(axis=(2, 3))))

  @functools.cached_property
  def shift_index(self) -> np.ndarray:
    """(T, M, N): the dense kernel's gather at `shift_positions` only."""
    s = self.structure
    flat = self.dense_index.reshape((-1,) + (s.in_features, s.features))
    return _read_only(flat[list(self.shift_positions)])

  @functools.cached_property
  def subgrids(self) -> Tuple[SubGrid, ...]:
    """The kept positions (`shift_positions`) as few dilated rectangles (`rectangles`),
    each with the dense kernel's gather there."""
    grids = []
    for rows, cols in rectangles(self.shift_positions, self.structure.kernel_size[1]):
      grids.append(SubGrid(rows, cols, _read_only(self.dense_index[np.ix_(rows, cols)])))
    return tuple(grids)


@functools.lru_cache(maxsize=None)
def layout(structure: SSCStructure) -> Layout:
  """The (cached) storage layout of `structure`."""
  kernel = KernelLayout(structure) if structure.g is not None else None
  mix = MixLayout(structure) if structure.num_mix_weights else None
  return Layout(structure, kernel, mix)


def dense_kernel(structure: SSCStructure, params: Any) -> Array:
  """The equivalent dense (K, K, M, N) HWIO kernel of a layer's parameters.

  `params` holds 'kernel' and/or 'mix' as SSCConv stores them: a layer's
  ``variables`` or their ``'params'`` subtree. Get `structure` from
  `ssc_structure(M, N, K, g, p, taps)` or `SSCConv(...).structure(M)`.
  """
  params = params.get('params', params)
  lay = layout(structure)
  return lay.gather(params.get('kernel'), params.get('mix'), lay.dense_index)
