"""Convolution geometry shared by every lowering: sizes, strides and padding."""

from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple, Union

import numpy as np
from jax import lax

PaddingLike = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]
Pads = Tuple[Tuple[int, int], Tuple[int, int]]


def pair(value: Union[int, Sequence[int]], field: str, owner: str) -> Tuple[int, int]:
  """An int or a pair of ints as a pair of positive ints."""
  values = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and v >= 1 for v in values):
    raise ValueError(f'{owner}: {field}={value!r} must be a positive int or a '
                     'pair of positive ints')
  return int(values[0]), int(values[1])


def resolve_padding(padding: PaddingLike, input_size: Tuple[int, int],
                    kernel_size: Tuple[int, int], strides: Tuple[int, int],
                    owner: str = 'SSC layer') -> Pads:
  """Explicit ((lo, hi), (lo, hi)) spatial padding for SAME, VALID, int or pairs."""
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f"{owner}: padding={padding!r} must be 'SAME', 'VALID', an "
                       'int or a pair of (low, high) pairs')
    return tuple(tuple(p) for p in lax.padtype_to_pads(input_size, kernel_size, strides,
                                                        padding.upper()))
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
  kernel_size = pair(kernel_size, 'kernel_size', owner)
  strides = pair(strides, 'strides', owner)
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


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where a layer's kernel meets its input: static and hashable.

  Attributes:
    input_size: (H, W) of the input.
    kernel_size: (KH, KW).
    strides: (SH, SW).
    pads: ((lo, hi), (lo, hi)) explicit spatial padding.
    output_size: (H', W') of the output.
  """
  input_size: Tuple[int, int]
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int]
  pads: Pads
  output_size: Tuple[int, int]


def geometry(input_size: Tuple[int, int], kernel_size: Union[int, Sequence[int]],
             strides: Union[int, Sequence[int]], padding: PaddingLike,
             owner: str = 'SSC layer') -> Geometry:
  """The validated `Geometry` of a convolution."""
  kernel_size = pair(kernel_size, 'kernel_size', owner)
  strides = pair(strides, 'strides', owner)
  input_size = tuple(int(v) for v in input_size)
  pads = resolve_padding(padding, input_size, kernel_size, strides, owner)
  output_size = conv_output_size(input_size, kernel_size, strides, padding, owner)
  return Geometry(input_size, kernel_size, strides, pads, output_size)
