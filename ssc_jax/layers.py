"""The structured sparse convolution (SSC): its structure and its Flax layer.

One SSC layer maps M input channels to N output channels with two parts
(`shared/SSC_SPEC.md` in the project is the definition):

* the KxK part (`g`): input channel c and output channel n are in the same
  group iff ``floor(c*g/M) == floor(n*g/N)``; a full KxK kernel joins every
  such pair. With g dividing M and N this is ``feature_group_count=g``.
* the 1x1 mixing part (`p`): the centre tap joins c to n iff they are NOT in
  the same KxK group and ``(c - n) % p == 0`` (an interleaved grouped 1x1).

Everything else is zero. The layer equals a plain convolution with the dense
HWIO kernel of that pattern (`dense_kernel`), yet stores only the kept weights:

* ``kernel``: shape (K, K, M//g, N) when g divides M and N (the layout of
  ``nn.Conv(feature_group_count=g)``); otherwise (K, K, S) with the S kept
  (c, n) pairs ordered by (local input index, n).
* ``mix``: shape (p, M//p, N//p) when every entry is kept (g is None and p
  divides M and N); otherwise a vector of the R kept entries ordered by
  (residue r, input block a, output block b), where c = a*p + r, n = b*p + r.

Non-divisible g and p run as padded grouped convolutions / einsums whose
padding positions hold no parameter (a static gather with a zero slot).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

Array = jax.Array
PaddingLike = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]
# An SSC initializer: (key, fan_in, dtype) -> array of fan_in's shape, where
# fan_in[i] is the real number of inputs of the output that weight i feeds.
SSCInitializer = Callable[[Array, np.ndarray, Any], Array]

_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def variance_scaling(scale: float = 1.0,
                     distribution: str = 'truncated_normal') -> SSCInitializer:
  """Variance scaling on each output's real fan-in: Var[w] = scale / fan_in.

  `distribution` is one of 'truncated_normal' (at 2 std, corrected), 'normal'
  or 'uniform'. scale=1 is LeCun init (flax's default for nn.Conv), scale=2
  is He init for ReLU networks.
  """
  if distribution not in ('truncated_normal', 'normal', 'uniform'):
    raise ValueError(f'variance_scaling: distribution={distribution!r} must be '
                     "'truncated_normal', 'normal' or 'uniform'")

  def init(key: Array, fan_in: np.ndarray, dtype: Any = jnp.float32) -> Array:
    std = jnp.asarray(np.sqrt(scale / np.asarray(fan_in, np.float64)), dtype)
    shape = np.shape(fan_in)
    if distribution == 'truncated_normal':
      unit = jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
      unit = unit / jnp.asarray(_TRUNCATED_NORMAL_STD, dtype)
    elif distribution == 'normal':
      unit = jax.random.normal(key, shape, dtype)
    else:
      unit = jax.random.uniform(key, shape, dtype, -np.sqrt(3.0), np.sqrt(3.0))
    return unit * std

  return init


lecun_normal = functools.partial(variance_scaling, 1.0, 'truncated_normal')
he_normal = functools.partial(variance_scaling, 2.0, 'truncated_normal')


def _pair(value: Union[int, Sequence[int]], field: str, owner: str) -> Tuple[int, int]:
  """An int or a pair of ints as a pair of positive ints."""
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in pair):
    raise ValueError(f'{owner}: {field}={value!r} must be a positive int or a '
                     'pair of positive ints')
  return int(pair[0]), int(pair[1])


def _group_starts(channels: int, groups: int) -> np.ndarray:
  """First channel of each group (and the end): ceil(i * channels / groups)."""
  return -(-np.arange(groups + 1) * channels // groups)


@dataclasses.dataclass(frozen=True)
class SSCStructure:
  """The connectivity of one SSC layer: which weights exist and where.

  Build it with `ssc_structure`, which validates and caches. All arrays are
  static numpy, computed once per (M, N, K, g, p).
  """
  in_features: int
  features: int
  kernel_size: Tuple[int, int]
  g: Optional[int]
  p: Optional[int]

  @property
  def centre(self) -> Tuple[int, int]:
    """The centre tap (index K // 2 in each spatial dimension)."""
    return self.kernel_size[0] // 2, self.kernel_size[1] // 2

  @functools.cached_property
  def same_group(self) -> np.ndarray:
    """(M, N) bool: c and n in the same KxK group (all False if g is None)."""
    m, n = self.in_features, self.features
    if self.g is None:
      return np.zeros((m, n), bool)
    return (np.arange(m)[:, None] * self.g // m) == (np.arange(n)[None, :] * self.g // n)

  @functools.cached_property
  def mix_pairs(self) -> np.ndarray:
    """(M, N) bool: c joined to n by the 1x1 mixing part."""
    m, n = self.in_features, self.features
    if self.p is None:
      return np.zeros((m, n), bool)
    same_residue = (np.arange(m)[:, None] - np.arange(n)[None, :]) % self.p == 0
    return same_residue & ~self.same_group

  @functools.cached_property
  def mask(self) -> np.ndarray:
    """(K, K, M, N) bool: the non-zeros of the equivalent dense HWIO kernel."""
    kh, kw = self.kernel_size
    mask = np.broadcast_to(self.same_group, (kh, kw) + self.same_group.shape).copy()
    ch, cw = self.centre
    mask[ch, cw] |= self.mix_pairs
    return mask

  # --- counts -------------------------------------------------------------

  @property
  def num_kernel_weights(self) -> int:
    """Weights of the KxK part."""
    return int(self.same_group.sum()) * self.kernel_size[0] * self.kernel_size[1]

  @property
  def num_mix_weights(self) -> int:
    """Weights of the 1x1 mixing part."""
    return int(self.mix_pairs.sum())

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

  @functools.cached_property
  def fan_in(self) -> np.ndarray:
    """(N,) the real number of inputs of each output channel."""
    return self.mask.sum(axis=(0, 1, 2))

  # --- the KxK part: compact layout and the padded grouped convolution -----

  @functools.cached_property
  def _in_starts(self) -> np.ndarray:
    return _group_starts(self.in_features, self.g)

  @functools.cached_property
  def _out_starts(self) -> np.ndarray:
    return _group_starts(self.features, self.g)

  @property
  def kernel_divisible(self) -> bool:
    """True if g divides M and N: a plain grouped convolution."""
    return self.in_features % self.g == 0 and self.features % self.g == 0

  @functools.cached_property
  def _kernel_pairs(self) -> Tuple[np.ndarray, np.ndarray]:
    """(local input index, output channel) of every kept KxK pair, in storage order."""
    out_group = np.arange(self.features) * self.g // self.features
    in_sizes = np.diff(self._in_starts)
    max_in = in_sizes.max()
    local, out = np.nonzero(np.arange(max_in)[:, None] < in_sizes[out_group][None, :])
    return local, out

  @property
  def kernel_shape(self) -> Tuple[int, ...]:
    """Shape of the stored `kernel` parameter."""
    kh, kw = self.kernel_size
    if self.kernel_divisible:
      return (kh, kw, self.in_features // self.g, self.features)
    return (kh, kw, len(self._kernel_pairs[0]))

  @functools.cached_property
  def kernel_fan_in(self) -> np.ndarray:
    """Fan-in of the output each stored kernel entry feeds, in `kernel_shape`."""
    fan = self.fan_in[self._kernel_pairs[1]]
    return np.broadcast_to(fan, self.kernel_size + fan.shape).reshape(self.kernel_shape)

  @functools.cached_property
  def padded_groups(self) -> Tuple[int, int]:
    """(inputs, outputs) per group of the padded grouped convolution."""
    return int(np.diff(self._in_starts).max()), int(np.diff(self._out_starts).max())

  @functools.cached_property
  def conv_input_index(self) -> Optional[np.ndarray]:
    """Channels gathered into the padded grouped input (None: identity).

    A padding slot repeats its group's last channel; its weights are zero.
    """
    in_sizes = np.diff(self._in_starts)
    max_in, _ = self.padded_groups
    if np.all(in_sizes == max_in):
      return None
    local = np.minimum(np.arange(max_in)[None, :], in_sizes[:, None] - 1)
    return (self._in_starts[:-1, None] + local).reshape(-1)

  @functools.cached_property
  def conv_output_index(self) -> Optional[np.ndarray]:
    """Outputs of the padded grouped convolution that are real (None: all)."""
    out_sizes = np.diff(self._out_starts)
    _, max_out = self.padded_groups
    if np.all(out_sizes == max_out):
      return None
    n = np.arange(self.features)
    group = n * self.g // self.features
    return group * max_out + (n - self._out_starts[group])

  @functools.cached_property
  def conv_kernel_index(self) -> Optional[np.ndarray]:
    """(max_in, g*max_out) positions into the flat kernel (S = zero slot); None if divisible."""
    if self.kernel_divisible:
      return None
    max_in, max_out = self.padded_groups
    local, out = self._kernel_pairs
    group = out * self.g // self.features
    column = group * max_out + (out - self._out_starts[group])
    index = np.full((max_in, self.g * max_out), len(local), np.int32)
    index[local, column] = np.arange(len(local))
    return index

  # --- the mixing part: compact layout and the padded einsum --------------

  @functools.cached_property
  def mix_blocks(self) -> Tuple[int, int]:
    """(A, B): input and output blocks of the residue layout, ceil(M/p), ceil(N/p)."""
    return -(-self.in_features // self.p), -(-self.features // self.p)

  @functools.cached_property
  def _mix_box_kept(self) -> np.ndarray:
    """(p, A, B) bool: entry (r, a, b) joins c = a*p + r to n = b*p + r."""
    p = self.p
    blocks_in, blocks_out = self.mix_blocks
    c = np.arange(blocks_in)[None, :, None] * p + np.arange(p)[:, None, None]
    n = np.arange(blocks_out)[None, None, :] * p + np.arange(p)[:, None, None]
    valid = (c < self.in_features) & (n < self.features)
    kept = np.zeros(valid.shape, bool)
    kept[valid] = self.mix_pairs[np.broadcast_to(c, valid.shape)[valid],
                                 np.broadcast_to(n, valid.shape)[valid]]
    return kept

  @property
  def mix_full(self) -> bool:
    """True if every (r, a, b) entry is kept: the mix is stored as a box."""
    return bool(self._mix_box_kept.all())

  @property
  def mix_shape(self) -> Tuple[int, ...]:
    """Shape of the stored `mix` parameter."""
    if self.mix_full:
      return self._mix_box_kept.shape
    return (self.num_mix_weights,)

  @functools.cached_property
  def mix_fan_in(self) -> np.ndarray:
    """Fan-in of the output each stored mix entry feeds, in `mix_shape`."""
    r, _, b = np.nonzero(self._mix_box_kept)
    return self.fan_in[b * self.p + r].reshape(self.mix_shape)

  @functools.cached_property
  def mix_index(self) -> Optional[np.ndarray]:
    """(p, A, B) positions into the flat mix (R = zero slot); None if full."""
    if self.mix_full:
      return None
    kept = self._mix_box_kept
    index = np.full(kept.shape, kept.sum(), np.int32)
    index[kept] = np.arange(kept.sum())
    return index


def _check_range(owner: str, field: str, value: Optional[int], upper: int, what: str) -> None:
  if value is None:
    return
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 1 <= value <= upper:
    raise ValueError(f'{owner}: {field}={value!r} is out of range; {field} must be '
                     f'None or an int in [1, {what}] = [1, {upper}]')


@functools.lru_cache(maxsize=None)
def _cached_structure(in_features, features, kernel_size, g, p) -> SSCStructure:
  return SSCStructure(in_features, features, kernel_size, g, p)


def ssc_structure(in_features: int, features: int,
                  kernel_size: Union[int, Sequence[int]], g: Optional[int],
                  p: Optional[int], owner: str = 'SSC layer') -> SSCStructure:
  """Validated, cached structure of an SSC layer (M, N, K, g, p).

  Raises ValueError naming `owner`, the field and its allowed range.
  """
  kernel_size = _pair(kernel_size, 'kernel_size', owner)
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
  return _cached_structure(int(in_features), int(features), kernel_size,
                           None if g is None else int(g), None if p is None else int(p))


def ssc_mask(in_features: int, features: int, kernel_size: Union[int, Sequence[int]],
             g: Optional[int], p: Optional[int]) -> np.ndarray:
  """(K, K, M, N) bool mask of an SSC layer's non-zero weights."""
  return ssc_structure(in_features, features, kernel_size, g, p).mask.copy()


def _padded_kernel(structure: SSCStructure, kernel: Array) -> Array:
  """The stored kernel as the HWIO kernel of the (padded) grouped convolution."""
  if structure.kernel_divisible:
    return kernel
  kh, kw = structure.kernel_size
  flat = jnp.concatenate([kernel, jnp.zeros((kh, kw, 1), kernel.dtype)], axis=-1)
  return jnp.take(flat, jnp.asarray(structure.conv_kernel_index), axis=-1)


def _padded_mix(structure: SSCStructure, mix: Array) -> Array:
  """The stored mix as its (p, A, B) box, zeros where no weight is kept."""
  if structure.mix_index is None:
    return mix
  flat = jnp.concatenate([mix, jnp.zeros((1,), mix.dtype)])
  return jnp.take(flat, jnp.asarray(structure.mix_index))


def dense_kernel(structure: SSCStructure, params: Any) -> Array:
  """The equivalent dense (K, K, M, N) HWIO kernel of a layer's parameters.

  `params` holds 'kernel' and/or 'mix' as SSCConv stores them: a layer's
  ``variables`` or their ``'params'`` subtree. Get `structure` from
  `ssc_structure(M, N, K, g, p)` or `SSCConv(...).structure(M)`.
  """
  params = params.get('params', params)
  m, n = structure.in_features, structure.features
  kh, kw = structure.kernel_size
  dtype = jnp.result_type(*[params[k] for k in ('kernel', 'mix') if k in params])
  dense = jnp.zeros((kh, kw, m, n), dtype)
  if structure.g is not None:
    kernel = _padded_kernel(structure, params['kernel'])
    max_in, max_out = structure.padded_groups
    blocks = kernel.reshape(kh, kw, max_in, structure.g, max_out)
    local, out = structure._kernel_pairs
    group = out * structure.g // n
    out_local = out - structure._out_starts[group]
    c = structure._in_starts[group] + local
    dense = dense.at[:, :, c, out].set(blocks[:, :, local, group, out_local])
  if structure.num_mix_weights:
    box = _padded_mix(structure, params['mix'])
    r, a, b = np.nonzero(structure._mix_box_kept)
    ch, cw = structure.centre
    dense = dense.at[ch, cw, a * structure.p + r, b * structure.p + r].set(box[r, a, b])
  return dense


def resolve_padding(padding: PaddingLike, input_size: Tuple[int, int],
                    kernel_size: Tuple[int, int], strides: Tuple[int, int],
                    owner: str = 'SSC layer') -> Tuple[Tuple[int, int], Tuple[int, int]]:
  """Explicit ((lo, hi), (lo, hi)) spatial padding for SAME, VALID, int or pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f"{owner}: padding={padding!r} must be 'SAME', 'VALID', an "
                       'int or a pair of (low, high) pairs')
    return tuple(lax.padtype_to_pads(input_size, kernel_size, strides, padding.upper()))
  if isinstance(padding, (int, np.integer)):
    return ((int(padding),) * 2,) * 2
  pads = tuple(tuple((int(v), int(v))) if isinstance(v, (int, np.integer)) else tuple(map(int, v))
               for v in padding)
  if len(pads) != 2 or any(len(v) != 2 for v in pads):
    raise ValueError(f'{owner}: padding={padding!r} must give two spatial dimensions')
  return pads


def conv_output_size(input_size: Tuple[int, int], kernel_size: Union[int, Sequence[int]],
                     strides: Union[int, Sequence[int]] = 1, padding: PaddingLike = 'SAME',
                     owner: str = 'SSC layer') -> Tuple[int, int]:
  """Spatial output size of a KxK convolution; ValueError if the kernel does not fit."""
  kernel_size = _pair(kernel_size, 'kernel_size', owner)
  strides = _pair(strides, 'strides', owner)
  pads = resolve_padding(padding, tuple(input_size), kernel_size, strides, owner)
  out = []
  for size, k, s, (lo, hi) in zip(input_size, kernel_size, strides, pads):
    padded = size + lo + hi
    if padded < k:
      raise ValueError(f'{owner}: kernel_size={k} does not fit the input: spatial size '
                       f'{size} padded by ({lo}, {hi}) is {padded}; the kernel must be '
                       f'at most the padded input size (padding={padding!r})')
    out.append((padded - k) // s + 1)
  return tuple(out)


def _centre_taps(x: Array, structure: SSCStructure, pads, strides,
                 output_size: Tuple[int, int]) -> Array:
  """The inputs under the centre tap at every output position: (..., h, w, M)."""
  config = [(0, 0, 0)] * (x.ndim - 3)
  for dim, (centre, (lo, _), s, out) in enumerate(zip(structure.centre, pads, strides, output_size)):
    low = lo - centre  # x'[j] = x[j - low]; the centre of output i reads x[i*s - lo + centre]
    high = (out - 1) * s + 1 - (x.shape[x.ndim - 3 + dim] + low)
    config.append((low, high, 0))
  config.append((0, 0, 0))
  shifted = lax.pad(x, jnp.zeros((), x.dtype), config)
  starts = (0,) * x.ndim
  strides_all = (1,) * (x.ndim - 3) + tuple(strides) + (1,)
  return lax.slice(shifted, starts, shifted.shape, strides_all)


def _mix(x: Array, mix_box: Array, structure: SSCStructure, precision) -> Array:
  """Interleaved grouped 1x1: y[..., b*p + r] = sum_a x[..., a*p + r] W[r, a, b]."""
  p = structure.p
  blocks_in, blocks_out = structure.mix_blocks
  extra = blocks_in * p - structure.in_features
  if extra:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])
  x = x.reshape(x.shape[:-1] + (blocks_in, p))
  y = jnp.einsum('...ar,rab->...br', x, mix_box, precision=precision)
  y = y.reshape(y.shape[:-2] + (blocks_out * p,))
  return y[..., :structure.features]


IMPLEMENTATIONS = ('auto', 'grouped', 'taps', 'dense')
_CPU_TAPS_MIN_GROUPS = 8  # on CPU, 'taps' beats 'dense' from about this many groups


class SSCConv(nn.Module):
  """Structured sparse convolution: grouped KxK conv plus structured 1x1 mixing.

  Input (..., H, W, M), output (..., H', W', N). ``g`` sets the KxK groups
  (None: no KxK part), ``p`` the 1x1 mixing period (None: no mixing); see the
  module docstring. Special cases: g=1 is a dense conv; g=G, p=None a grouped
  conv (g=M=N depthwise); K=1, g=None, p=P an interleaved grouped pointwise
  conv; g=P, p=1 HetConv-like.

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
    use_bias: add a bias per output channel.
    dtype: compute dtype (None: from the inputs and parameters).
    param_dtype: parameter dtype.
    precision: lax precision of the convolution and the einsum.
    kernel_init: an SSC initializer `(key, fan_in, dtype)`; each weight is drawn
      with the real fan-in of the output channel it feeds.
    bias_init: a flax initializer for the bias.
    implementation: how the layer runs; all give the same function.
      'grouped': one `lax.conv_general_dilated` with `feature_group_count=g`
      plus the mixing einsum (the fewest FLOPs; used on GPU and TPU).
      'taps': the grouped KxK part as one batched matmul per group over the
      K*K shifted inputs, plus the einsum. 'dense': the layer's dense kernel
      (`dense_kernel`) through one convolution. 'auto': 'grouped' on GPU/TPU
      and wherever g is None or 1; on CPU, where XLA's grouped-convolution
      gradient runs over 15x slower than a dense one (benchmarks/layer_speed.py),
      'dense' for g < 8 and 'taps' for g >= 8.
  """
  features: int
  kernel_size: Union[int, Sequence[int]] = 3
  strides: Union[int, Sequence[int]] = 1
  padding: PaddingLike = 'SAME'
  g: Optional[int] = 1
  p: Optional[int] = None
  use_bias: bool = True
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: SSCInitializer = dataclasses.field(default_factory=lecun_normal)
  bias_init: Callable = nn.initializers.zeros_init()
  implementation: str = 'auto'

  def structure(self, in_features: int) -> SSCStructure:
    """The validated structure of this layer for M = in_features."""
    owner = f"SSCConv '{self.name}'" if self.name else 'SSCConv'
    return ssc_structure(in_features, self.features, self.kernel_size, self.g, self.p, owner)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    owner = f"SSCConv '{self.name}'" if self.name else 'SSCConv'
    if x.ndim < 3:
      raise ValueError(f'{owner}: input of shape {x.shape} must be (..., H, W, C)')
    structure = self.structure(x.shape[-1])
    kernel_size = structure.kernel_size
    strides = _pair(self.strides, 'strides', owner)
    input_size = x.shape[-3:-1]
    pads = resolve_padding(self.padding, input_size, kernel_size, strides, owner)
    output_size = conv_output_size(input_size, kernel_size, strides, self.padding, owner)

    kernel = mix = bias = None
    if structure.g is not None:
      kernel = self.param('kernel', lambda key: self.kernel_init(
          key, structure.kernel_fan_in, self.param_dtype))
    if structure.num_mix_weights:
      mix = self.param('mix', lambda key: self.kernel_init(
          key, structure.mix_fan_in, self.param_dtype))
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    x, kernel, mix, bias = nn.dtypes.promote_dtype(x, kernel, mix, bias, dtype=self.dtype)

    batch_shape = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    implementation = self._implementation(structure)
    if implementation == 'dense':
      weights = {k: v for k, v in (('kernel', kernel), ('mix', mix)) if v is not None}
      y = lax.conv_general_dilated(
          x, dense_kernel(structure, weights), window_strides=strides, padding=pads,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    else:
      parts = []  # at least one: g=None leaves the c == n pairs to the mix
      if kernel is not None:
        parts.append(self._grouped_conv(x, kernel, structure, strides, pads, output_size,
                                        implementation))
      if mix is not None:
        taps = _centre_taps(x, structure, pads, strides, output_size)
        parts.append(_mix(taps, _padded_mix(structure, mix), structure, self.precision))
      y = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    if bias is not None:
      y = y + bias
    return y.reshape(batch_shape + y.shape[1:])

  def _grouped_conv(self, x: Array, kernel: Array, structure: SSCStructure,
                    strides, pads, output_size, implementation: str) -> Array:
    """The KxK part: a grouped convolution, padded to equal groups if needed."""
    if structure.conv_input_index is not None:
      x = jnp.take(x, jnp.asarray(structure.conv_input_index), axis=-1)
    kernel = _padded_kernel(structure, kernel)
    if implementation == 'grouped':
      conv = functools.partial(
          lax.conv_general_dilated, window_strides=strides, padding=pads,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          feature_group_count=structure.g, precision=self.precision)
      explicit = _explicit_axes()
      if explicit:
        # JAX cannot type the kernel gradient of a grouped convolution under
        # explicit sharding: the partitioner places it, in auto mode.
        conv = jax.sharding.auto_axes(conv, axes=explicit,
                                      out_sharding=P(*jax.typeof(x).sharding.spec[:-1]))
      y = conv(x, kernel)
    else:
      y = _grouped_conv_taps(x, kernel, structure, strides, pads, output_size, self.precision)
    if structure.conv_output_index is not None:
      y = jnp.take(y, jnp.asarray(structure.conv_output_index), axis=-1)
    return y

  def _implementation(self, structure: SSCStructure) -> str:
    """'grouped', 'taps' or 'dense' for this layer, resolving 'auto'."""
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f"SSCConv '{self.name}': implementation={self.implementation!r} must be "
                       f'one of {IMPLEMENTATIONS}')
    if self.implementation != 'auto':
      return self.implementation
    if structure.g is None or structure.g == 1 or jax.default_backend() != 'cpu':
      return 'grouped'
    return 'taps' if structure.g >= _CPU_TAPS_MIN_GROUPS else 'dense'


def _explicit_axes() -> Tuple[str, ...]:
  """The explicit axes of the mesh being traced under (`jax.set_mesh`), if any."""
  mesh = jax.sharding.get_abstract_mesh()
  return () if mesh.empty else tuple(mesh.explicit_axes)


def _grouped_conv_taps(x: Array, kernel: Array, structure: SSCStructure, strides, pads,
                       output_size: Tuple[int, int], precision) -> Array:
  """Grouped KxK convolution as one matmul per group over the K*K shifted inputs.

  x: (B, H, W, g*Mg) grouped input; kernel: (K, K, Mg, g*Ng) grouped HWIO.
  The input is moved group-major once, so the (g, B, H', W', K*K, Mg) patches
  feed a batched matmul without a transpose of the K*K-times larger tensor.
  """
  kh, kw = structure.kernel_size
  max_in, max_out = structure.padded_groups
  g = structure.g
  (out_h, out_w), (sh, sw) = output_size, strides
  batch, height, width = x.shape[:3]
  grouped = jnp.transpose(x.reshape(batch, height, width, g, max_in), (3, 0, 1, 2, 4))
  padded = lax.pad(grouped, jnp.zeros((), x.dtype),
                   [(0, 0, 0), (0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)])
  views = [lax.slice(padded, (0, 0, i, j, 0),
                     (g, batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, max_in),
                     (1, 1, sh, sw, 1))
           for i in range(kh) for j in range(kw)]
  patches = jnp.stack(views, axis=-2)  # (g, B, H', W', K*K, Mg)
  weights = jnp.transpose(kernel.reshape(kh * kw, max_in, g, max_out), (2, 0, 1, 3))
  # The batch axis stays its own dimension (never merged), so a batch sharded
  # under explicit axes keeps a well-typed sharding.
  y = lax.dot_general(patches, weights, (((4, 5), (1, 2)), ((0,), (0,))), precision=precision)
  y = jnp.transpose(y, (1, 2, 3, 0, 4))  # (B, H', W', g, Ng)
  return y.reshape(batch, out_h, out_w, g * max_out)
