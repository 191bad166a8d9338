"""The connectivity of one SSC layer: which (position, input, output) weights exist.

One SSC layer maps M input channels to N output channels with two parts
(`shared/SSC_SPEC.md` in the project is the definition):

* the KxK part (`g`, `taps`): input channel c and output channel n are in the
  same group iff ``floor(c*g/M) == floor(n*g/N)``; such a pair is joined at
  every kernel position of n's spatial pattern (`taps`).
* the 1x1 mixing part (`p`): the centre tap joins c to n iff they are NOT in
  the same KxK group and ``(c - n) % p == 0`` (an interleaved grouped 1x1).

Spatial patterns (`taps`), each containing the centre (K//2, K//2):
'full' (all K*K positions), 'cross' (the centre row and column, 2K - 1),
'x' (offsets from the centre with an even sum), 'alternate' (output n uses
'cross' when n is even and 'x' when n is odd), or an explicit K x K grid of
0/1, the same for every output (a string '010/111/010' is read row by row).
A grid of a named pattern is that name (every position: 'full'), and a layer
without a KxK part (g = None) has no pattern.

Everything here is static numpy, computed once per (M, N, K, g, p, taps) and
read-only: `ssc_structure` validates and caches.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from ssc_jax.ssc.geometry import pair

TAPS = ('full', 'cross', 'x', 'alternate')
# A normalised pattern: one of TAPS, or a tuple of KH rows of KW 0/1 ints.
Taps = Union[str, Tuple[Tuple[int, ...], ...]]


def read_only(array: np.ndarray) -> np.ndarray:
  """`array`, marked read-only (shared by every layer of a cached structure)."""
  array.setflags(write=False)
  return array


def pattern_grid(name: str, kernel_size: Tuple[int, int]) -> np.ndarray:
  """(KH, KW) bool grid of the uniform pattern `name` ('full', 'cross' or 'x')."""
  kh, kw = kernel_size
  i, j = np.meshgrid(np.arange(kh) - kh // 2, np.arange(kw) - kw // 2, indexing='ij')
  if name == 'full':
    return np.ones((kh, kw), bool)
  if name == 'cross':
    return (i == 0) | (j == 0)
  if name == 'x':
    return (i + j) % 2 == 0
  raise ValueError(f'pattern_grid: {name!r} is not a uniform pattern')


def normalize_taps(taps: Union[str, Sequence[Sequence[int]], np.ndarray],
                   kernel_size: Tuple[int, int], owner: str = 'SSC layer') -> Taps:
  """`taps` validated for `kernel_size`: a name of TAPS or a tuple-of-tuples grid.

  Any pattern that keeps every position becomes 'full', so that K = 1 layers
  and all-ones grids are the plain layer.
  """
  kh, kw = kernel_size
  expected = (f"one of {TAPS}, or a {kh}x{kw} grid of 0/1 (nested sequences, or rows "
              "of 0/1 joined by '/', e.g. '010/111/010') that contains the centre")
  if isinstance(taps, str) and taps in TAPS:
    if taps == 'alternate':
      covered = pattern_grid('cross', kernel_size).all() and pattern_grid('x', kernel_size).all()
    else:
      covered = pattern_grid(taps, kernel_size).all()
    return 'full' if covered else taps
  try:
    rows = taps.split('/') if isinstance(taps, str) else taps
    grid = np.array([[int(v) for v in row] for row in rows])
  except (TypeError, ValueError):
    raise ValueError(f'{owner}: taps={taps!r} must be {expected}') from None
  if grid.shape != (kh, kw) or not np.isin(grid, (0, 1)).all() or not grid[kh // 2, kw // 2]:
    raise ValueError(f'{owner}: taps={taps!r} must be {expected}')
  for name in ('full', 'cross', 'x'):  # a grid of a named pattern is that pattern
    if np.array_equal(grid.astype(bool), pattern_grid(name, kernel_size)):
      return name
  return tuple(tuple(int(v) for v in row) for row in grid)


def taps_label(taps: Taps) -> str:
  """A normalised pattern as text: its name, or its grid as rows of 0/1 joined by '/'."""
  return taps if isinstance(taps, str) else '/'.join(''.join(map(str, row)) for row in taps)


def group_starts(channels: int, groups: int) -> np.ndarray:
  """First channel of each group (and the end): ceil(i * channels / groups)."""
  return -(-np.arange(groups + 1) * channels // groups)


def _residue_counts(starts: np.ndarray, p: int) -> np.ndarray:
  """(len(starts), p): channels below each start with each residue mod p."""
  return (np.asarray(starts)[:, None] - np.arange(p) + p - 1) // p


@dataclasses.dataclass(frozen=True)
class SSCStructure:
  """The connectivity of one SSC layer: which weights exist and where.

  Build it with `ssc_structure`, which validates and caches. The arrays are
  static, read-only numpy. Counts are closed forms (no (M, N) arrays), tested
  against `mask`.
  """
  in_features: int
  features: int
  kernel_size: Tuple[int, int]
  g: Optional[int]
  p: Optional[int]
  taps: Taps = 'full'

  @property
  def centre(self) -> Tuple[int, int]:
    """The centre tap (index K // 2 in each spatial dimension)."""
    return self.kernel_size[0] // 2, self.kernel_size[1] // 2

  # --- the KxK groups -------------------------------------------------------

  @functools.cached_property
  def in_starts(self) -> np.ndarray:
    """(g + 1,) first input channel of each KxK group, and M."""
    return read_only(group_starts(self.in_features, self.g))

  @functools.cached_property
  def out_starts(self) -> np.ndarray:
    """(g + 1,) first output channel of each KxK group, and N."""
    return read_only(group_starts(self.features, self.g))

  @functools.cached_property
  def out_group(self) -> np.ndarray:
    """(N,) the KxK group of each output channel."""
    return read_only(np.arange(self.features) * self.g // self.features)

  @property
  def kernel_divisible(self) -> bool:
    """True if g divides M and N: a plain grouped convolution."""
    return self.in_features % self.g == 0 and self.features % self.g == 0

  @functools.cached_property
  def same_group(self) -> np.ndarray:
    """(M, N) bool: c and n in the same KxK group (all False if g is None)."""
    m, n = self.in_features, self.features
    if self.g is None:
      return read_only(np.zeros((m, n), bool))
    return read_only((np.arange(m)[:, None] * self.g // m) == self.out_group[None, :])

  # --- the spatial pattern --------------------------------------------------

  @functools.cached_property
  def tap_mask(self) -> np.ndarray:
    """(KH, KW, N) bool: the kernel positions of each output's KxK pattern."""
    n = self.features
    if self.taps == 'alternate':
      even = np.arange(n) % 2 == 0
      cross = pattern_grid('cross', self.kernel_size)[..., None]
      x = pattern_grid('x', self.kernel_size)[..., None]
      return read_only(np.where(even, cross, x))
    grid = (pattern_grid(self.taps, self.kernel_size) if isinstance(self.taps, str)
            else np.asarray(self.taps, bool))
    return read_only(np.repeat(grid[..., None], n, axis=-1))

  @functools.cached_property
  def taps_per_output(self) -> np.ndarray:
    """(N,) positions in each output's pattern."""
    return read_only(self.tap_mask.sum(axis=(0, 1)))

  # --- the mixing part ------------------------------------------------------

  @functools.cached_property
  def mix_pairs(self) -> np.ndarray:
    """(M, N) bool: c joined to n by the 1x1 mixing part."""
    m, n = self.in_features, self.features
    if self.p is None:
      return read_only(np.zeros((m, n), bool))
    same_residue = (np.arange(m)[:, None] - np.arange(n)[None, :]) % self.p == 0
    return read_only(same_residue & ~self.same_group)

  # --- the whole layer ------------------------------------------------------

  @functools.cached_property
  def mask(self) -> np.ndarray:
    """(KH, KW, M, N) bool: the non-zeros of the equivalent dense HWIO kernel."""
    mask = self.same_group[None, None, :, :] & self.tap_mask[:, :, None, :]
    ch, cw = self.centre
    mask[ch, cw] |= self.mix_pairs
    return read_only(mask)

  @functools.cached_property
  def fan_in(self) -> np.ndarray:
    """(N,) the real number of inputs (positions x channels) of each output."""
    return read_only(self.mask.sum(axis=(0, 1, 2)))

  @functools.cached_property
  def fan_out(self) -> np.ndarray:
    """(M,) the real number of outputs (positions x channels) each input feeds."""
    return read_only(self.mask.sum(axis=(0, 1, 3)))

  # --- counts ---------------------------------------------------------------

  @functools.cached_property
  def num_kernel_weights(self) -> int:
    """Weights of the KxK part: sum over n of its group's inputs x its taps."""
    if self.g is None:
      return 0
    in_sizes = np.diff(self.in_starts)
    return int(np.dot(in_sizes[self.out_group], self.taps_per_output))

  @functools.cached_property
  def num_mix_weights(self) -> int:
    """Weights of the 1x1 mixing part: same-residue pairs outside the own group."""
    if self.p is None:
      return 0
    p = self.p
    every = int(np.dot(_residue_counts([self.in_features], p)[0],
                       _residue_counts([self.features], p)[0]))
    if self.g is None:
      return every
    in_counts = np.diff(_residue_counts(self.in_starts, p), axis=0)
    out_counts = np.diff(_residue_counts(self.out_starts, p), axis=0)
    return every - int((in_counts * out_counts).sum())

  @property
  def num_weights(self) -> int:
    """All weights (no bias): the number of non-zeros of `mask`."""
    return self.num_kernel_weights + self.num_mix_weights

  @property
  def num_dense_weights(self) -> int:
    """Weights of the dense KxK convolution with the same M, N, K."""
    return self.kernel_size[0] * self.kernel_size[1] * self.in_features * self.features

  def num_params(self, use_bias: bool) -> int:
    """Parameters of the layer: weights plus N biases if `use_bias`."""
    return self.num_weights + (self.features if use_bias else 0)

  def macs(self, output_size: Tuple[int, int]) -> int:
    """Multiply-accumulates for one example: kept weights x output positions.

    As for dense convolutions, taps that fall on zero padding are counted.
    """
    return self.num_weights * int(output_size[0]) * int(output_size[1])


def _check_range(owner: str, field: str, value: Optional[int], upper: int, what: str) -> None:
  if value is None:
    return
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= upper:
    raise ValueError(f'{owner}: {field}={value!r} is out of range; {field} must be '
                     f'None or an int in [1, {what}] = [1, {upper}]')


@functools.lru_cache(maxsize=None)
def _cached_structure(in_features, features, kernel_size, g, p, taps) -> SSCStructure:
  return SSCStructure(in_features, features, kernel_size, g, p, taps)


def ssc_structure(in_features: int, features: int,
                  kernel_size: Union[int, Sequence[int]], g: Optional[int],
                  p: Optional[int], taps: Union[str, Sequence[Sequence[int]]] = 'full',
                  owner: str = 'SSC layer') -> SSCStructure:
  """Validated, cached structure of an SSC layer (M, N, K, g, p, taps).

  Raises ValueError naming `owner`, the field and its allowed range.
  """
  kernel_size = pair(kernel_size, 'kernel_size', owner)
  for field, value in (('in_features', in_features), ('features', features)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{owner}: {field}={value!r} must be a positive int')
  if g is None and p is None:
    raise ValueError(f'{owner}: g and p are both None; set g (the KxK groups) '
                     'and/or p (the 1x1 mixing period)')
  _check_range(owner, 'g', g, min(in_features, features),
               f'min(M, N) for M={in_features} input, N={features} output channels')
  _check_range(owner, 'p', p, max(in_features, features),
               f'max(M, N) for M={in_features} input, N={features} output channels')
  taps = normalize_taps(taps, kernel_size, owner)
  return _cached_structure(int(in_features), int(features), kernel_size,
                           None if g is None else int(g), None if p is None else int(p),
                           'full' if g is None else taps)  # no KxK part: nothing to pattern


def ssc_mask(in_features: int, features: int, kernel_size: Union[int, Sequence[int]],
             g: Optional[int], p: Optional[int],
             taps: Union[str, Sequence[Sequence[int]]] = 'full') -> np.ndarray:
  """(K, K, M, N) bool mask of an SSC layer's non-zero weights (a writable copy)."""
  return ssc_structure(in_features, features, kernel_size, g, p, taps).mask.copy()
