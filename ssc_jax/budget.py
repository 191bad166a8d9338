"""Per-layer weight and MAC accounting of a network, and tickets resolved on it.

    python -m ssc_jax.budget --config=configs/cifar10_vgg19_10.py [--json]
    python -m ssc_jax.budget --config=configs/cifar10_vgg19_10.py --target=0.10
    python -m ssc_jax.budget --taps_table     # every seed row under 'full' and 'cross'

The layers are found by tracing the real model (`jax.eval_shape` of its init
with every `SSCConv` and `nn.Dense` call intercepted). The kept fraction is
that of the weights of all convolutions and Dense layers (no biases, no
BatchNorm): sum of kept weights / sum of the dense network's weights. MACs are
per example at the dataset's input size.

Every count comes from the layer's `ssc_jax.ssc.SSCStructure`. A config's
``model.ticket`` is solved here (`resolve_ticket`, through `ssc_jax.tickets`)
before the model is built: the models take explicit settings only.
"""

import dataclasses
import json
import math
import pathlib
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags

from ssc_jax import config_lib
from ssc_jax import console
from ssc_jax import errors
from ssc_jax import models
from ssc_jax import ssc
from ssc_jax import tickets
from ssc_jax.data import specs
from ssc_jax.ssc.structure import taps_label

TOLERANCE = tickets.TOLERANCE


def dataset_facts(dataset: str) -> Tuple[int, Tuple[int, int, int]]:
  """(num_classes, model input (H, W, C)) of a dataset name."""
  info = specs.info(dataset)
  return info.num_classes, info.input_shape


@dataclasses.dataclass(frozen=True)
class LayerBudget:
  """One convolution or Dense layer: shape, settings, weights and MACs per example."""
  name: str
  in_features: int  # M
  features: int  # N
  kernel_size: int  # K (1 for Dense)
  g: Optional[int]
  p: Optional[int]
  taps: str  # the KxK pattern (`taps_label`; 'full' for K = 1 and Dense)
  setting: Optional[str]  # 'g_p', 'p_1x1', or None for a layer that stays dense
  weights: int
  dense_weights: int
  macs: int
  dense_macs: int


@dataclasses.dataclass(frozen=True)
class Budget:
  """The layers of a network and their totals."""
  layers: Tuple[LayerBudget, ...]
  num_params: int  # every parameter of the model (weights, biases, BatchNorm)

  @property
  def kept_params(self) -> int:
    return sum(layer.weights for layer in self.layers)

  @property
  def dense_params(self) -> int:
    return sum(layer.dense_weights for layer in self.layers)

  @property
  def kept_fraction(self) -> float:
    return self.kept_params / self.dense_params

  @property
  def macs(self) -> int:
    return sum(layer.macs for layer in self.layers)

  @property
  def dense_macs(self) -> int:
    return sum(layer.dense_macs for layer in self.layers)

  def to_dict(self) -> Dict[str, Any]:
    return dict(kept_params=self.kept_params, dense_params=self.dense_params,
                kept_fraction=self.kept_fraction, macs=self.macs,
                dense_macs=self.dense_macs, macs_fraction=self.macs / self.dense_macs,
                num_params=self.num_params,
                layers=[dataclasses.asdict(layer) for layer in self.layers])


def trace(model: nn.Module, input_shape: Sequence[int]) -> Budget:
  """The budget of `model` on one (H, W, C) input, from an abstract init."""
  records: List[LayerBudget] = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != '__call__':
      return out
    name = '/'.join(module.path)
    in_features = args[0].shape[-1]
    if isinstance(module, ssc.SSCConv):
      structure = module.structure(in_features)
      positions = math.prod(out.shape[-3:-1])
      records.append(LayerBudget(
          name, in_features, module.features, structure.kernel_size[0],
          structure.g, structure.p, taps_label(structure.taps), getattr(module, 'setting', None),
          structure.num_weights, structure.num_dense_weights,
          structure.num_weights * positions, structure.num_dense_weights * positions))
    elif isinstance(module, nn.Dense):
      weights = in_features * module.features
      records.append(LayerBudget(name, in_features, module.features, 1, None, None,
                                 'full', None, weights, weights, weights, weights))
    return out

  def init():
    return model.init(jax.random.key(0), jnp.zeros((1,) + tuple(input_shape)),
                      train=False)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(init)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(variables['params']))
  return Budget(tuple(records), num_params)


def budget(config) -> Budget:
  """The budget of the model of a full config at its dataset's input size."""
  num_classes, input_shape = dataset_facts(config.dataset)
  model_config = resolve_ticket(config.model, num_classes, input_shape[-1])
  model = models.create_model(model_config, num_classes)
  return trace(model, input_shape)


# --- tickets ---------------------------------------------------------------


def settings_groups(model_config, num_classes: int, input_channels: int = 3,
                    macs_at: Optional[Tuple[int, int]] = None):
  """(filter counts, settings groups, always-dense count) of a network.

  Traces the network with every setting unset (all layers dense) under its
  spatial pattern, and groups its SSC layers by the settings entry that
  controls them (`tickets.SettingsGroup`). The count is weights, or with
  `macs_at` = (H, W) the MACs of one example of that input size (each weight
  times its layer's output positions, from the trace).
  """
  dense_config = ml_collections.ConfigDict(model_config.to_dict())
  for field in ('ticket', 'g', 'p', 'p_1x1'):
    dense_config[field] = None
  counts = models.filter_counts(dense_config)
  model = models.create_model(dense_config, num_classes)
  size = 8 if model_config.name == 'digits_ssc' else 32  # weights do not depend on it
  groups: Dict[Tuple[str, int], tickets.SettingsGroup] = {}
  fixed = 0
  for layer in trace(model, tuple(macs_at or (size, size)) + (input_channels,)).layers:
    positions = layer.dense_macs // layer.dense_weights if macs_at else 1
    if layer.setting is None:
      fixed += layer.dense_weights * positions
      continue
    key = (layer.setting, layer.features)
    if key not in groups:
      index = counts[layer.setting].index(layer.features)
      groups[key] = tickets.SettingsGroup(layer.setting, index, [], 0)
    groups[key].shapes.append((layer.in_features, layer.features, layer.kernel_size,
                               layer.taps, positions))
    groups[key].dense += layer.dense_weights * positions
  return counts, sorted(groups.values(), key=lambda g: (g.field, g.index)), fixed


def solve_ticket(model_config, num_classes: int, target: float, input_channels: int = 3,
                 source: str = 'config.model.ticket') -> tickets.Ticket:
  """Per-filter-count settings of `model_config`'s network that keep `target` (`tickets.solve`;
  errors name `source`)."""
  counts, groups, fixed = settings_groups(model_config, num_classes, input_channels)
  return tickets.solve(counts, groups, fixed, target, model_config.name, source)


def resolve_ticket(model_config, num_classes: int,
                   input_channels: int = 3) -> ml_collections.ConfigDict:
  """`model_config` with ``ticket`` solved into g, p (and p_1x1), or itself if unset.

  Call it before `models.create_model`, which takes explicit settings only.
  """
  if model_config.ticket is None:
    return model_config
  ticket = solve_ticket(model_config, num_classes, model_config.ticket, input_channels)
  resolved = ml_collections.ConfigDict(model_config.to_dict())
  resolved.ticket = None
  for field, value in ticket.settings.items():
    resolved[field] = value
  return resolved


# --- command line ------------------------------------------------------------

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
_STATED = re.compile(r'against the stated (\d+)% ticket')


def define_flags() -> None:
  """The command-line flags; defined only when this module runs as a program."""
  config_flags.DEFINE_config_file('config', None, 'Run config file.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_float('target', None, 'Solve (g, p) that keep this fraction '
                     'of the weights and report the solved network.')
  flags.DEFINE_bool('taps_table', False, "Print every seed row's stated ticket against "
                    "its kept fraction under the 'full' and 'cross' patterns (markdown).")


def taps_table(config_dir: pathlib.Path = CONFIG_DIR) -> str:
  """Markdown: each config with a stated ticket, its kept % and MAC % under 'full' and 'cross'."""
  lines = ['| config | stated % | kept %, full | kept %, cross | MACs %, full | MACs %, cross |',
           '|---|---:|---:|---:|---:|---:|']
  for path in sorted(config_dir.glob('*.py')):
    module = config_lib.load_config_module(path)
    stated = _STATED.search(module.__doc__ or '')
    if not stated:
      continue
    config = module.get_config()
    kept, macs = {}, {}
    for taps in ('full', 'cross'):
      config.model.taps = taps
      result = budget(config)
      kept[taps] = 100 * result.kept_fraction
      macs[taps] = 100 * result.macs / result.dense_macs
    lines.append(f'| {path.stem} | {stated.group(1)} | {kept["full"]:.2f} | {kept["cross"]:.2f} '
                 f'| {macs["full"]:.2f} | {macs["cross"]:.2f} |')
  return '\n'.join(lines)


def _fmt(value) -> str:
  return '-' if value is None else str(value)


def format_table(result: Budget) -> str:
  """The per-layer table and the totals, as text."""
  header = ('layer', 'M', 'N', 'K', 'taps', 'g', 'p', 'kept', 'dense', 'MACs', 'dense MACs')
  rows = [header] + [
      (l.name, l.in_features, l.features, l.kernel_size, l.taps, _fmt(l.g), _fmt(l.p),
       f'{l.weights:,}', f'{l.dense_weights:,}', f'{l.macs:,}', f'{l.dense_macs:,}')
      for l in result.layers]
  widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
  lines = ['  '.join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                     for i, (v, w) in enumerate(zip(row, widths))) for row in rows]
  lines.append(f'weights kept {result.kept_params:,} of {result.dense_params:,} '
               f'({100 * result.kept_fraction:.2f}%)')
  lines.append(f'MACs {result.macs:,} of {result.dense_macs:,} '
               f'({100 * result.macs / result.dense_macs:.2f}%)')
  lines.append(f'parameters of the model (with biases and BatchNorm): {result.num_params:,}')
  return '\n'.join(lines)


def main(argv):
  del argv
  if flags.FLAGS.taps_table:
    print(taps_table())
    return
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError('--config=configs/<file>.py (or --taps_table) is required')
  try:
    _report(config)
  except ValueError as error:  # a setting the network cannot take: say which
    raise errors.ConfigError(str(error)) from None


def _report(config) -> None:
  """Prints the budget of `config`, after solving for --target if given."""
  output: Dict[str, Any] = {}
  num_classes, input_shape = dataset_facts(config.dataset)
  if flags.FLAGS.target is not None:
    ticket = solve_ticket(config.model, num_classes, flags.FLAGS.target, input_shape[-1],
                          source='--target')
    with config.unlocked():
      config.model.ticket = None
      for field, value in ticket.settings.items():
        config.model[field] = value
    output = dict(target=flags.FLAGS.target, settings=ticket.settings)
  result = budget(config)
  if flags.FLAGS.json:
    model_config = resolve_ticket(config.model, num_classes, input_shape[-1])
    print(json.dumps(dict(dataset=config.dataset, model=config.model.name,
                          taps=config.model.taps, settings=models.resolve_settings(model_config),
                          **output, **result.to_dict())))
    return
  print(format_table(result))
  if output:
    print(f'\nsolved for target {flags.FLAGS.target:.4f} (achieved '
          f'{100 * result.kept_fraction:.2f}% of weights):')
    for field, value in output['settings'].items():
      print(f'config.model.{field} = {value}')


if __name__ == '__main__':
  define_flags()
  console.run(main)
