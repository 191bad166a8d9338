"""The paper's networks, built from a config's `model` section.

`create_model(config.model, num_classes)` returns the network; its (g, p) come
from `resolve_settings`: ``config.model.g`` and ``config.model.p`` (and
``config.model.p_1x1`` for ResNet-50) give one entry per filter count of
`filter_counts`. Unset g means dense (g = 1), unset p no mixing, unset p_1x1
dense pointwise (p = 1). A ``config.model.ticket`` is solved into settings
before a model is built (`ssc_jax.budget.resolve_ticket`).
``config.model.taps`` is the KxK pattern of the SSC layers,
``config.model.init`` their initialisation (`conv.INITS`), and
``config.model.zero_init_residual`` (ResNet-50) starts each block's last
BatchNorm scale at 0.
"""

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from ssc_jax import errors
from ssc_jax import ssc
from ssc_jax.models.conv import INITS
from ssc_jax.models.resnet_cifar import ResNet32
from ssc_jax.models.resnet_imagenet import ResNet50
from ssc_jax.models.vgg import VGG
from ssc_jax.models import resnet_cifar
from ssc_jax.models import resnet_imagenet
from ssc_jax.models import vgg

NETWORKS = ('vgg19', 'resnet32', 'resnet50', 'digits_ssc')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

Settings = Dict[str, Tuple[Optional[int], ...]]


def filter_counts(model_config) -> Dict[str, Tuple[int, ...]]:
  """Filter counts that the per-filter-count settings are aligned with.

  'g_p' for ``config.model.g`` / ``config.model.p``; for ResNet-50 also
  'p_1x1' for ``config.model.p_1x1``.
  """
  name = model_config.name
  if name == 'vgg19':
    return {'g_p': vgg.filter_counts(vgg.VGG19_BLOCKS)}
  if name == 'digits_ssc':
    return {'g_p': vgg.filter_counts(vgg.DIGITS_BLOCKS)}
  if name == 'resnet32':
    return {'g_p': resnet_cifar.filter_counts(model_config.width)}
  if name == 'resnet50':
    return {'g_p': resnet_imagenet.FILTER_COUNTS,
            'p_1x1': resnet_imagenet.FILTER_COUNTS_1X1}
  raise errors.ConfigError(f'config.model.name={name!r} must be one of {NETWORKS}')


def _entries(model_config, field: str, counts: Tuple[int, ...],
             default: Optional[int]) -> Tuple[Optional[int], ...]:
  """``config.model.<field>`` checked against `counts`; `default` everywhere if unset."""
  value = model_config[field]
  if value is None:
    return (default,) * len(counts)
  value = tuple(value)
  if len(value) != len(counts):
    raise errors.ConfigError(
        f'config.model.{field}={value} has {len(value)} entries; '
        f'{model_config.name} needs one per filter count {counts}')
  for entry in value:
    if entry is not None and (isinstance(entry, bool) or not isinstance(entry, int)
                              or entry < 1):
      raise errors.ConfigError(f'config.model.{field}={value}: entry {entry!r} must be '
                       'a positive int or None')
  return value


def resolve_settings(model_config) -> Settings:
  """Per-filter-count settings: {'g': ..., 'p': ...} (+ 'p_1x1' for ResNet-50).

  Each tuple is aligned with `filter_counts(model_config)`. Raises if
  ``model.ticket`` is still set: solve it first (`ssc_jax.budget.resolve_ticket`).
  """
  counts = filter_counts(model_config)
  if model_config.ticket is not None:
    raise errors.ConfigError(f'config.model.ticket={model_config.ticket} is set: solve it into '
                     'g and p with ssc_jax.budget.resolve_ticket(config.model, num_classes) '
                     'before building the model')
  settings = {'g': _entries(model_config, 'g', counts['g_p'], 1),
              'p': _entries(model_config, 'p', counts['g_p'], None)}
  if 'p_1x1' in counts:
    settings['p_1x1'] = _entries(model_config, 'p_1x1', counts['p_1x1'], 1)
  return settings


def network_arguments(model_config, num_classes: int) -> Dict[str, Any]:
  """The arguments every network of ``model_config`` takes, validated: classes, dtype,
  pattern, initialisation and the per-filter-count settings."""
  if model_config.dtype not in _DTYPES:
    raise errors.ConfigError(f'config.model.dtype={model_config.dtype!r} must be one of '
                     f'{tuple(_DTYPES)}')
  if model_config.init not in INITS:
    raise errors.ConfigError(f'config.model.init={model_config.init!r} must be one of {INITS}')
  taps = ssc.structure.normalize_taps(model_config.taps, (3, 3), 'config.model.taps')
  return dict(num_classes=num_classes, dtype=_DTYPES[model_config.dtype], taps=taps,
              initialization=model_config.init, **resolve_settings(model_config))


def create_model(model_config, num_classes: int, inference: Optional[str] = None) -> nn.Module:
  """The network of ``model_config`` with `num_classes` outputs.

  Call it as ``model.apply(variables, x, train=..., mutable=['batch_stats'])``
  on (B, H, W, C) float images; it returns float32 logits. With `inference` a
  lowering name: the folded inference network (no BatchNorm, convolutions with
  a bias; `ssc_jax.deploy.fold_batch_norm` makes its variables), its SSC
  layers run by that lowering.
  """
  common = network_arguments(model_config, num_classes)
  common['inference'] = inference
  name = model_config.name
  if name == 'vgg19':
    return VGG(blocks=vgg.VGG19_BLOCKS, **common)
  if name == 'digits_ssc':
    return VGG(blocks=vgg.DIGITS_BLOCKS, **common)
  if name == 'resnet32':
    return ResNet32(width=model_config.width, **common)
  return ResNet50(zero_init_residual=model_config.zero_init_residual, **common)


__all__ = ['NETWORKS', 'ResNet32', 'ResNet50', 'VGG', 'create_model',
           'filter_counts', 'network_arguments', 'resolve_settings']
