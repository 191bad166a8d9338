"""Per-layer weight and MAC accounting of a network, and the ticket solver.

    python -m ssc_jax.budget --config=configs/cifar10_vgg19_10.py [--json]
    python -m ssc_jax.budget --config=configs/cifar10_vgg19_10.py --target=0.10

The layers are found by tracing the real model (`jax.eval_shape` of its init
with every `SSCConv` and `nn.Dense` call intercepted). The kept fraction is
that of the weights of all convolutions and Dense layers (no biases, no
BatchNorm): sum of kept weights / sum of the dense network's weights. MACs are
per example at the dataset's input size.

The solver picks per-filter-count (g, p) (and p_1x1 for ResNet-50) whose kept
fraction is within `TOLERANCE` of a target, with density non-increasing along
the filter counts; see `solve_ticket`.
"""

import dataclasses
import functools
import itertools
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from ssc_jax import console
from ssc_jax import errors
from ssc_jax import layers
from ssc_jax import models
from ssc_jax.data import specs
from ssc_jax.models import conv as conv_lib

TOLERANCE = 0.0025  # the solver's largest allowed |kept fraction - target|
_AIM = 0.001  # settings this close count as exact; then the profile decides
_STEP_RATIO = 2.0  # reference density ratio of one filter count to the next
_DENSE_SHARE = 0.01  # leading entries with at most this share of weights stay dense
_NEAREST = 3  # candidates per non-tuned group that the solver combines


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
    if isinstance(module, layers.SSCConv):
      structure = module.structure(in_features)
      positions = math.prod(out.shape[-3:-1])
      records.append(LayerBudget(
          name, in_features, module.features, structure.kernel_size[0],
          structure.g, structure.p, getattr(module, 'setting', None),
          structure.num_weights, structure.num_dense_weights,
          structure.num_weights * positions, structure.num_dense_weights * positions))
    elif isinstance(module, nn.Dense):
      weights = in_features * module.features
      records.append(LayerBudget(name, in_features, module.features, 1, None, None,
                                 None, weights, weights, weights, weights))
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
  model = models.create_model(config.model, num_classes, input_shape[-1])
  return trace(model, input_shape)


# --- the ticket solver -------------------------------------------------------


@functools.lru_cache(maxsize=None)
def kept_weights(m: int, n: int, k2: int, g: Optional[int], p: Optional[int]) -> int:
  """Kept weights of an SSC layer (M, N, K*K, g, p), in O(g * p) time.

  Equals `ssc_structure(M, N, K, g, p).num_weights` without building (M, N)
  masks: same-group pairs times K*K, plus the pairs with ``c = n (mod p)``
  that are not in the same group.
  """
  same = within = 0
  in_starts = out_starts = None
  if g is not None:
    in_starts = -(-np.arange(g + 1) * m // g)
    out_starts = -(-np.arange(g + 1) * n // g)
    same = int(np.dot(np.diff(in_starts), np.diff(out_starts)))
  mix = 0
  if p is not None:
    residues = np.arange(p)

    def below(ends):  # channels < end with each residue: (len(ends), p)
      return (np.asarray(ends)[:, None] - residues + p - 1) // p

    mix = int(np.dot(below([m])[0], below([n])[0]))
    if g is not None:
      in_counts = below(in_starts[1:]) - below(in_starts[:-1])
      out_counts = below(out_starts[1:]) - below(out_starts[:-1])
      within = int((in_counts * out_counts).sum())
  return k2 * same + mix - within


@dataclasses.dataclass(frozen=True)
class Ticket:
  """Solved settings (config fields 'g', 'p', 'p_1x1') and the kept fraction they give."""
  settings: Dict[str, Tuple[Optional[int], ...]]
  kept_fraction: float
  target: float


@dataclasses.dataclass
class _Group:
  """The layers that one settings entry controls."""
  field: str  # conv_lib.G_P or conv_lib.P_1X1
  index: int  # position in its filter counts
  shapes: List[Tuple[int, int, int]]  # (M, N, K*K) of each layer
  dense: int  # weights of the dense layers


_POWERS = tuple(2 ** i for i in range(12))
_FINE = tuple(range(1, 33)) + (40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
                               256, 320, 384, 448, 512, 1024, 2048)
Setting = Tuple[Optional[int], Optional[int]]


def _complexity(setting: Setting) -> int:
  """Entries of a (g, p) that are not None or a power of two."""
  return sum(v is not None and v & (v - 1) != 0 for v in setting)


def _candidates(group: _Group, grid: Sequence[int]) -> List[Tuple[int, Setting]]:
  """(kept weights, (g, p)) of the valid settings on `grid`, ascending in kept.

  Of settings with equal counts the simplest is kept. A 3x3 group drops its
  KxK part (g = None) only below the sparsest density that any g reaches.
  """
  max_g = min(min(m, n) for m, n, _ in group.shapes)
  max_p = min(m for m, _, _ in group.shapes)
  ps = [p for p in grid if p <= max_p]
  if group.field == conv_lib.P_1X1:
    settings = [(None, p) for p in ps]
  else:
    settings = [(1, 1)] + [(g, p) for g in grid if 1 < g <= max_g for p in [None] + ps]
  kept = {s: sum(kept_weights(m, n, k2, *s) for m, n, k2 in group.shapes) for s in settings}
  if group.field == conv_lib.G_P:
    floor = min(kept.values())
    for p in ps:
      count = sum(kept_weights(m, n, k2, None, p) for m, n, k2 in group.shapes)
      if count < floor:
        kept[(None, p)] = count
  simplest = {}
  for setting, count in sorted(kept.items(), key=lambda item: (
      _complexity(item[0]), [v or 0 for v in item[0]])):
    simplest.setdefault(count, setting)
  return sorted(simplest.items())


def _groups(model_config, num_classes: int, input_channels: int):
  """Filter counts, the settings groups of the network, and its always-dense weights."""
  dense_config = ml_collections.ConfigDict(model_config.to_dict())
  for field in ('ticket', 'g', 'p', 'p_1x1'):
    dense_config[field] = None
  counts = models.filter_counts(dense_config)
  model = models.create_model(dense_config, num_classes, input_channels)
  size = 8 if model_config.name == 'digits_ssc' else 32  # weights do not depend on it
  groups: Dict[Tuple[str, int], _Group] = {}
  fixed = 0
  for layer in trace(model, (size, size, input_channels)).layers:
    if layer.setting is None:
      fixed += layer.dense_weights
      continue
    key = (layer.setting, layer.features)
    if key not in groups:
      groups[key] = _Group(layer.setting, counts[layer.setting].index(layer.features), [], 0)
    groups[key].shapes.append((layer.in_features, layer.features, layer.kernel_size ** 2))
    groups[key].dense += layer.dense_weights
  return counts, sorted(groups.values(), key=lambda g: (g.field, g.index)), fixed


def _chains(groups: List[_Group]) -> List[List[_Group]]:
  """The groups of each settings field, in filter-count order."""
  return [[g for g in groups if g.field == field]
          for field in sorted({g.field for g in groups})]


def solve_ticket(model_config, num_classes: int, target: float,
                 input_channels: int = 3) -> Ticket:
  """Per-filter-count settings that keep `target` of the network's weights.

  Along each settings field the layers' density never increases with the
  filter count. Counts are exact (`kept_weights`). The reference profile
  keeps the leading entries of a field dense while each holds at most
  `_DENSE_SHARE` of the weights, and otherwise halves the density per entry
  (`_STEP_RATIO`) towards the last one, scaled to meet the target. Every entry
  but the largest takes one of its `_NEAREST` candidates (g, p powers of two)
  closest to the reference (and its closest with a KxK part); the largest
  entry (fine grid) then takes the simplest setting within `_AIM` of the
  remaining weights. Combinations within `_AIM` are ranked by the number of
  3x3 entries without a KxK part (g = None: needed only below the density that
  the largest valid g reaches), then by distance to the reference profile.
  Deterministic, about a second.

  Raises ValueError if no setting lands within `TOLERANCE` of the target.
  """
  if not 0.0 < target <= 1.0:
    raise ValueError(f'ticket target={target} must be in (0, 1]')
  counts, groups, fixed = _groups(model_config, num_classes, input_channels)
  total = fixed + sum(group.dense for group in groups)
  chains = _chains(groups)
  dense = {id(g) for chain in chains
           for g in itertools.takewhile(lambda g: g.dense <= _DENSE_SHARE * total, chain)}

  def reference(group, scale):
    if id(group) in dense:
      return 1.0
    last = len(counts[group.field]) - 1
    return min(1.0, scale * _STEP_RATIO ** (last - group.index))

  low, high = 0.0, 1.0
  for _ in range(60):
    mid = (low + high) / 2
    kept = fixed + sum(g.dense * reference(g, mid) for g in groups)
    low, high = (mid, high) if kept < target * total else (low, mid)
  log_reference = {id(g): math.log(reference(g, high)) for g in groups}

  tuned = max(groups, key=lambda g: g.dense)
  tuned_candidates = _candidates(tuned, _FINE)
  tuned_kept = np.array([kept for kept, _ in tuned_candidates])
  tuned_complexity = np.array([_complexity(s) for _, s in tuned_candidates])
  options = []
  for group in groups:
    if group is tuned:
      continue
    candidates = _candidates(group, _POWERS)
    if id(group) in dense:
      options.append([(group,) + candidates[-1]])
      continue
    ref = log_reference[id(group)]
    candidates.sort(key=lambda c: (abs(math.log(c[0] / group.dense) - ref), -c[0]))
    nearest = candidates[:_NEAREST]
    nearest += [c for c in candidates if c[1][0] is not None][:1]  # one with a KxK part
    options.append([(group,) + c for c in dict.fromkeys(nearest)])

  best = None
  for combo in itertools.product(*options):
    density = {id(group): kept / group.dense for group, kept, _ in combo}
    if not _monotone(chains, density, skip=tuned):
      continue
    chain = next(c for c in chains if tuned in c)
    before = [density[id(g)] for g in chain if g.index < tuned.index]
    after = [density[id(g)] for g in chain if g.index > tuned.index]
    lo = np.searchsorted(tuned_kept, max(after, default=0.0) * tuned.dense - 1e-6)
    hi = np.searchsorted(tuned_kept, min(before, default=1.0) * tuned.dense + 1e-6, 'right')
    if lo >= hi:
      continue
    remaining = target * total - fixed - sum(kept for _, kept, _ in combo)
    errors = np.abs(tuned_kept[lo:hi] - remaining) / total
    close = errors <= _AIM
    pick = lo + (np.lexsort((errors, np.where(close, tuned_complexity[lo:hi], 0), ~close))[0])
    error = float(errors[pick - lo])
    density[id(tuned)] = tuned_kept[pick] / tuned.dense
    distance = sum((math.log(density[id(g)]) - log_reference[id(g)]) ** 2 for g in groups)
    without_kxk = sum(g.field == conv_lib.G_P and s[0] is None for g, _, s in combo) + (
        tuned.field == conv_lib.G_P and tuned_candidates[pick][1][0] is None)
    score = (error > _AIM, error if error > _AIM else without_kxk, distance,
             int(tuned_complexity[pick]), error)
    if best is None or score < best[0]:
      chosen = {id(group): (kept, setting) for group, kept, setting in combo}
      chosen[id(tuned)] = tuned_candidates[pick]
      best = (score, chosen)
  kept_all = fixed + sum(kept for kept, _ in best[1].values()) if best else None
  if best is None or abs(kept_all / total - target) > TOLERANCE:
    closest = '' if best is None else f' (closest: {kept_all / total:.4f})'
    raise ValueError(f'config.model.ticket={target}: no per-filter-count (g, p) of '
                     f'{model_config.name} keeps that fraction of its weights within '
                     f'{TOLERANCE}{closest}')
  settings = {'g': [1] * len(counts[conv_lib.G_P]), 'p': [None] * len(counts[conv_lib.G_P])}
  if conv_lib.P_1X1 in counts:
    settings['p_1x1'] = [1] * len(counts[conv_lib.P_1X1])
  for group in groups:
    g, p = best[1][id(group)][1]
    if group.field == conv_lib.P_1X1:
      settings['p_1x1'][group.index] = p
    else:
      settings['g'][group.index], settings['p'][group.index] = g, p
  return Ticket({k: tuple(v) for k, v in settings.items()}, kept_all / total, target)


def _monotone(chains, density, skip) -> bool:
  """Density non-increasing along each chain (ignoring `skip`)."""
  for chain in chains:
    values = [density[id(g)] for g in chain if g is not skip]
    if any(a < b for a, b in zip(values, values[1:])):
      return False
  return True


# --- command line ------------------------------------------------------------

def define_flags() -> None:
  """The command-line flags; defined only when this module runs as a program."""
  config_flags.DEFINE_config_file('config', None, 'Run config file.')
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_float('target', None, 'Solve (g, p) that keep this fraction '
                     'of the weights and report the solved network.')


def _fmt(value) -> str:
  return '-' if value is None else str(value)


def format_table(result: Budget) -> str:
  """The per-layer table and the totals, as text."""
  header = ('layer', 'M', 'N', 'K', 'g', 'p', 'kept', 'dense', 'MACs', 'dense MACs')
  rows = [header] + [
      (l.name, l.in_features, l.features, l.kernel_size, _fmt(l.g), _fmt(l.p),
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
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError('--config=configs/<file>.py is required')
  try:
    _report(config)
  except ValueError as error:  # a setting the network cannot take: say which
    raise errors.ConfigError(str(error)) from None


def _report(config) -> None:
  """Prints the budget of `config`, after solving for --target if given."""
  output: Dict[str, Any] = {}
  num_classes, input_shape = dataset_facts(config.dataset)
  if flags.FLAGS.target is not None:
    ticket = solve_ticket(config.model, num_classes, flags.FLAGS.target, input_shape[-1])
    with config.unlocked():
      config.model.ticket = None
      for field, value in ticket.settings.items():
        config.model[field] = value
    output = dict(target=flags.FLAGS.target, settings=ticket.settings)
  result = budget(config)
  if flags.FLAGS.json:
    print(json.dumps(dict(dataset=config.dataset, model=config.model.name,
                          settings=models.resolve_settings(config.model, num_classes,
                                                           input_shape[-1]),
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
