"""The paper's networks as Flax NNX modules, built from the same `config.model`.

The same designs, settings and initialisations as the linen networks of
`ssc_jax.models` (read their docstrings for the architectures), with the same
parameter names and shapes: `load_linen` copies a linen network's variables
(a checkpoint of the main job, which trains the linen networks) into the NNX
network of the same config. BatchNorm follows NNX's modes: `model.train()`
(batch statistics, the default) and `model.eval()` (running averages).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssc_jax import models as linen_models
from ssc_jax.models import conv as conv_lib
from ssc_jax.models import resnet_cifar
from ssc_jax.models import resnet_imagenet
from ssc_jax.models import vgg
from ssc_jax.nnx.conv import SSCConv


def network_conv(path: str, in_features: int, features: int, kernel_size: int, *,
                 g: Optional[int], p: Optional[int], setting: Optional[str], dtype: Any,
                 init: str, rngs: nnx.Rngs, strides: int = 1, padding: Any = 'SAME',
                 taps: Any = 'full') -> SSCConv:
  """A bias-free SSCConv initialised by `init`; (g, p) checked as the linen networks do."""
  conv_lib.check_setting(path, in_features, features, kernel_size, g, p, setting, taps)
  return SSCConv(in_features, features, kernel_size, strides=strides, padding=padding, g=g,
                 p=p, taps=taps, use_bias=False, dtype=dtype,
                 kernel_init=conv_lib.CONV_INITS[init](), rngs=rngs)


def batch_norm(features: int, dtype: Any, rngs: nnx.Rngs, zero_scale: bool = False
               ) -> nnx.BatchNorm:
  """BatchNorm with the linen networks' momentum and epsilon; `zero_scale` starts it at 0."""
  init = nnx.initializers.zeros_init() if zero_scale else nnx.initializers.ones_init()
  return nnx.BatchNorm(features, momentum=conv_lib.BN_MOMENTUM, epsilon=conv_lib.BN_EPSILON,
                       dtype=dtype, scale_init=init, rngs=rngs)


def classifier(features: int, num_classes: int, dtype: Any, init: str,
               rngs: nnx.Rngs) -> nnx.Linear:
  """The Dense layer after global average pooling, initialised by `init`."""
  return nnx.Linear(features, num_classes, dtype=dtype,
                    kernel_init=conv_lib.DENSE_INITS[init](),
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)


def logits(dense: nnx.Linear, x: jax.Array) -> jax.Array:
  """Global average pooling, then `dense`; float32 logits."""
  return dense(jnp.mean(x, axis=(-3, -2))).astype(jnp.float32)


class VGG(nnx.Module):
  """VGG with SSC convolutions (`ssc_jax.models.vgg.VGG`): conv<i>, bn<i>, dense."""

  def __init__(self, num_classes: int, *, blocks=vgg.VGG19_BLOCKS,
               g: Tuple[Optional[int], ...] = (1, 1, 1, 1),
               p: Tuple[Optional[int], ...] = (None, None, None, None), taps: Any = 'full',
               initialization: str = 'he', dtype: Any = jnp.float32, in_features: int = 3,
               rngs: nnx.Rngs):
    settings = dict(zip(vgg.filter_counts(blocks), zip(g, p)))
    self.blocks, self.dtype = tuple(blocks), dtype
    channels, index = in_features, 0
    for features, num_convs in self.blocks:
      for _ in range(num_convs):
        if index == 0:
          (g_i, p_i), setting, taps_i = (1, None), None, 'full'
        else:
          (g_i, p_i), setting, taps_i = settings[features], conv_lib.G_P, taps
        setattr(self, f'conv{index}', network_conv(
            f'conv{index}', channels, features, 3, g=g_i, p=p_i, setting=setting,
            taps=taps_i, dtype=dtype, init=initialization, rngs=rngs))
        setattr(self, f'bn{index}', batch_norm(features, dtype, rngs))
        channels, index = features, index + 1
    self.dense = classifier(channels, num_classes, dtype, initialization, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, self.dtype)
    index = 0
    for block, (_, num_convs) in enumerate(self.blocks):
      if block:
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      for _ in range(num_convs):
        x = nnx.relu(getattr(self, f'bn{index}')(getattr(self, f'conv{index}')(x)))
        index += 1
    return logits(self.dense, x)


class BasicBlock(nnx.Module):
  """Two 3x3 SSC convolutions with BatchNorm and a residual connection."""

  def __init__(self, path: str, in_features: int, features: int, strides: int, *,
               g: Optional[int], p: Optional[int], taps: Any, initialization: str,
               dtype: Any, rngs: nnx.Rngs):
    ssc = dict(g=g, p=p, taps=taps, setting=conv_lib.G_P, dtype=dtype, init=initialization,
               rngs=rngs)
    self.conv1 = network_conv(f'{path}/conv1', in_features, features, 3, strides=strides,
                              padding=1, **ssc)
    self.bn1 = batch_norm(features, dtype, rngs)
    self.conv2 = network_conv(f'{path}/conv2', features, features, 3, **ssc)
    self.bn2 = batch_norm(features, dtype, rngs)
    projected = strides != 1 or in_features != features
    self.proj_conv = network_conv(
        f'{path}/proj_conv', in_features, features, 1, strides=strides, padding=0, g=1,
        p=None, setting=None, dtype=dtype, init=initialization, rngs=rngs) if projected else None
    self.proj_bn = batch_norm(features, dtype, rngs) if projected else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.proj_conv is not None:
      x = self.proj_bn(self.proj_conv(x))
    return nnx.relu(x + y)


class ResNet32(nnx.Module):
  """ResNet-32 with SSC convolutions (`ssc_jax.models.resnet_cifar.ResNet32`)."""

  def __init__(self, num_classes: int, *, width: int = 1,
               g: Tuple[Optional[int], ...] = (1, 1, 1),
               p: Tuple[Optional[int], ...] = (None, None, None), taps: Any = 'full',
               initialization: str = 'he', dtype: Any = jnp.float32, in_features: int = 3,
               rngs: nnx.Rngs):
    filters = resnet_cifar.filter_counts(width)
    self.dtype = dtype
    self.stem_conv = network_conv('stem_conv', in_features, filters[0], 3, g=1, p=None,
                                  setting=None, dtype=dtype, init=initialization, rngs=rngs)
    self.stem_bn = batch_norm(filters[0], dtype, rngs)
    names, channels = [], filters[0]
    for stage, (features, g_s, p_s) in enumerate(zip(filters, g, p)):
      for block in range(resnet_cifar.BLOCKS_PER_STAGE):
        name = f'stage{stage + 1}_block{block}'
        setattr(self, name, BasicBlock(
            name, channels, features, 2 if stage and not block else 1, g=g_s, p=p_s,
            taps=taps, initialization=initialization, dtype=dtype, rngs=rngs))
        names.append(name)
        channels = features
    self.block_names = tuple(names)
    self.dense = classifier(channels, num_classes, dtype, initialization, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem_conv(jnp.asarray(x, self.dtype))))
    for name in self.block_names:
      x = getattr(self, name)(x)
    return logits(self.dense, x)


class Bottleneck(nnx.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with BatchNorm and a residual connection."""

  def __init__(self, path: str, in_features: int, width: int, strides: int, *,
               g: Optional[int], p: Optional[int], p_in: Optional[int],
               p_out: Optional[int], taps: Any, initialization: str,
               zero_init_residual: bool, dtype: Any, rngs: nnx.Rngs):
    pointwise = dict(g=None, setting=conv_lib.P_1X1, dtype=dtype, padding=0,
                     init=initialization, rngs=rngs)
    out_features = resnet_imagenet.EXPANSION * width
    self.conv1 = network_conv(f'{path}/conv1', in_features, width, 1, p=p_in, **pointwise)
    self.bn1 = batch_norm(width, dtype, rngs)
    self.conv2 = network_conv(f'{path}/conv2', width, width, 3, strides=strides, padding=1,
                              g=g, p=p, taps=taps, setting=conv_lib.G_P, dtype=dtype,
                              init=initialization, rngs=rngs)
    self.bn2 = batch_norm(width, dtype, rngs)
    self.conv3 = network_conv(f'{path}/conv3', width, out_features, 1, p=p_out, **pointwise)
    self.bn3 = batch_norm(out_features, dtype, rngs, zero_scale=zero_init_residual)
    projected = strides != 1 or in_features != out_features
    self.proj_conv = network_conv(f'{path}/proj_conv', in_features, out_features, 1,
                                  strides=strides, p=p_out, **pointwise) if projected else None
    self.proj_bn = batch_norm(out_features, dtype, rngs) if projected else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = nnx.relu(self.bn1(self.conv1(x)))
    y = nnx.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.proj_conv is not None:
      x = self.proj_bn(self.proj_conv(x))
    return nnx.relu(x + y)


class ResNet50(nnx.Module):
  """ResNet-50 v1.5 with SSC convolutions (`ssc_jax.models.resnet_imagenet.ResNet50`)."""

  def __init__(self, num_classes: int, *, g: Tuple[Optional[int], ...] = (1, 1, 1, 1),
               p: Tuple[Optional[int], ...] = (None, None, None, None),
               p_1x1: Tuple[Optional[int], ...] = (1, 1, 1, 1, 1, 1), taps: Any = 'full',
               initialization: str = 'he', zero_init_residual: bool = True,
               dtype: Any = jnp.float32, in_features: int = 3, rngs: nnx.Rngs):
    p_1x1 = dict(zip(resnet_imagenet.FILTER_COUNTS_1X1, p_1x1))
    self.dtype = dtype
    self.stem_conv = network_conv('stem_conv', in_features, 64, 7, strides=2, padding=3, g=1,
                                  p=None, setting=None, dtype=dtype, init=initialization,
                                  rngs=rngs)
    self.stem_bn = batch_norm(64, dtype, rngs)
    names, channels = [], 64
    for stage, (width, g_s, p_s, size) in enumerate(zip(
        resnet_imagenet.FILTER_COUNTS, g, p, resnet_imagenet.STAGE_SIZES)):
      for block in range(size):
        name = f'stage{stage + 1}_block{block}'
        setattr(self, name, Bottleneck(
            name, channels, width, 2 if stage and not block else 1, g=g_s, p=p_s,
            p_in=p_1x1[width], p_out=p_1x1[resnet_imagenet.EXPANSION * width], taps=taps,
            initialization=initialization, zero_init_residual=zero_init_residual,
            dtype=dtype, rngs=rngs))
        names.append(name)
        channels = resnet_imagenet.EXPANSION * width
    self.block_names = tuple(names)
    self.dense = classifier(channels, num_classes, dtype, initialization, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.relu(self.stem_bn(self.stem_conv(jnp.asarray(x, self.dtype))))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for name in self.block_names:
      x = getattr(self, name)(x)
    return logits(self.dense, x)


def create_model(model_config, num_classes: int, *, in_features: int = 3,
                 rngs: nnx.Rngs) -> nnx.Module:
  """The NNX network of ``model_config`` with `num_classes` outputs, on `in_features`
  input channels (1 for digits). A ``config.model.ticket`` must be solved first
  (`ssc_jax.budget.resolve_ticket`), as the linen main job does.

  Call it as ``model(x)`` on (B, H, W, C) float images (float32 logits);
  ``model.eval()`` switches BatchNorm to its running averages.
  """
  common = linen_models.network_arguments(model_config, num_classes)
  common.update(in_features=in_features, rngs=rngs)
  name = model_config.name
  if name in ('vgg19', 'digits_ssc'):
    blocks = vgg.VGG19_BLOCKS if name == 'vgg19' else vgg.DIGITS_BLOCKS
    return VGG(blocks=blocks, **common)
  if name == 'resnet32':
    return ResNet32(width=model_config.width, **common)
  return ResNet50(zero_init_residual=model_config.zero_init_residual, **common)


def _flat(tree: Dict[str, Any], prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
  """{path: leaf} of a nested dict."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, prefix + (str(key),)))
    else:
      flat[prefix + (str(key),)] = value
  return flat


def load_linen(model: nnx.Module, variables: Dict[str, Any]) -> None:
  """Copies a linen network's variables ({'params', 'batch_stats'}) into `model`, the NNX
  network of the same config, in place; ValueError naming the first path that differs."""
  linen = _flat(dict(variables['params']))
  linen.update(_flat(dict(variables.get('batch_stats', {}))))
  state = nnx.state(model)
  ours = _flat(nnx.to_pure_dict(state))
  for path in sorted(set(ours) | set(linen)):
    mine, theirs = ours.get(path), linen.get(path)
    if mine is None or theirs is None or jnp.shape(mine) != jnp.shape(theirs):
      described = lambda a: 'missing' if a is None else f'shape {jnp.shape(a)}'
      raise ValueError(f"load_linen: variable {'/'.join(path)} is {described(theirs)} in the "
                       f'linen variables and {described(mine)} in the NNX network: they are '
                       'not the same network')
  nested: Dict[str, Any] = {}
  for path, leaf in linen.items():
    node = nested
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(leaf)
  nnx.replace_by_pure_dict(state, nested)
  nnx.update(model, state)
