"""The ticket solver: per-filter-count (g, p) that keep a stated fraction of weights.

A network's SSC layers fall into settings groups: the layers that one entry
of ``config.model.g``/``p`` (by filter count) or ``config.model.p_1x1``
controls. `ssc_jax.budget.settings_groups` finds them by tracing the model.
`combinations` enumerates settings, one per group, whose kept fraction of the
network's conv + Dense weights (or of its MACs) is near a target, with density
non-increasing along the filter counts; `solve` picks the best of them within
`TOLERANCE`, and `ssc_jax.search` trains several. Every count comes from
`ssc_jax.ssc.ssc_structure` (under the network's spatial pattern).
"""

import dataclasses
import itertools
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ssc_jax.models.conv import G_P
from ssc_jax.models.conv import P_1X1
from ssc_jax.ssc import ssc_structure
from ssc_jax.ssc.structure import Taps

TOLERANCE = 0.0025  # the solver's largest allowed |kept fraction - target|
_AIM = 0.001  # settings this close count as exact; then the profile decides
_STEP_RATIO = 2.0  # reference density ratio of one filter count to the next
_DENSE_SHARE = 0.01  # leading entries with at most this share of weights stay dense
_NEAREST = 3  # candidates per non-tuned group that the solver combines

Setting = Tuple[Optional[int], Optional[int]]
# (M, N, K, taps, positions) of one layer; each weight counts `positions` times
# (1: weights; the layer's output positions: MACs of one example).
Shape = Tuple[int, int, int, Taps, int]


@dataclasses.dataclass
class SettingsGroup:
  """The layers that one settings entry controls.

  Attributes:
    field: `G_P` or `P_1X1`.
    index: position of the entry in its filter counts.
    shapes: (M, N, K, taps, positions) of each layer.
    dense: the count of the layers when dense.
  """
  field: str
  index: int
  shapes: List[Shape]
  dense: int

  def kept(self, setting: Setting) -> int:
    """The count (weights or MACs) the group keeps under (g, p)."""
    return sum(ssc_structure(m, n, k, *setting, taps=taps).num_weights * positions
               for m, n, k, taps, positions in self.shapes)

  def mixing(self, setting: Setting) -> int:
    """The part of `kept(setting)` in the 1x1 mixing part (p)."""
    return sum(ssc_structure(m, n, k, *setting, taps=taps).num_mix_weights * positions
               for m, n, k, taps, positions in self.shapes)


@dataclasses.dataclass(frozen=True)
class Ticket:
  """Solved settings (config fields 'g', 'p', 'p_1x1') and the kept fraction they give."""
  settings: Dict[str, Tuple[Optional[int], ...]]
  kept_fraction: float
  target: float


_POWERS = tuple(2 ** i for i in range(12))
_FINE = tuple(range(1, 33)) + (40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224,
                               256, 320, 384, 448, 512, 1024, 2048)


def _complexity(setting: Setting) -> int:
  """Entries of a (g, p) that are not None or a power of two."""
  return sum(v is not None and v & (v - 1) != 0 for v in setting)


def candidates(group: SettingsGroup, grid: Sequence[int]) -> List[Tuple[int, Setting]]:
  """(kept weights, (g, p)) of the valid settings on `grid`, ascending in kept.

  Of settings with equal counts the simplest is kept. A KxK group drops its
  KxK part (g = None) only below the sparsest density that any g reaches.
  """
  max_g = min(min(m, n) for m, n, *_ in group.shapes)
  max_p = min(m for m, *_ in group.shapes)
  ps = [p for p in grid if p <= max_p]
  if group.field == P_1X1:
    settings = [(None, p) for p in ps]
  else:
    settings = [(1, 1)] + [(g, p) for g in grid if 1 < g <= max_g for p in [None] + ps]
  kept = {s: group.kept(s) for s in settings}
  if group.field == G_P:
    floor = min(kept.values())
    for p in ps:
      count = group.kept((None, p))
      if count < floor:
        kept[(None, p)] = count
  simplest = {}
  for setting, count in sorted(kept.items(), key=lambda item: (
      _complexity(item[0]), [v or 0 for v in item[0]])):
    simplest.setdefault(count, setting)
  return sorted(simplest.items())


def _chains(groups: List[SettingsGroup]) -> List[List[SettingsGroup]]:
  """The groups of each settings field, in filter-count order."""
  return [[g for g in groups if g.field == field]
          for field in sorted({g.field for g in groups})]


@dataclasses.dataclass(frozen=True)
class Combination:
  """One setting per settings group, as `combinations` yields it.

  Attributes:
    settings: config fields 'g', 'p' (and 'p_1x1'), one entry per filter count.
    choice: (kept count, (g, p)) of each group, in the order of the groups given.
    fraction: the count the network keeps (the always-dense layers included) over the
      dense network's count.
    score: the solver's ranking (lower is better; see `combinations`).
    preferred: whether the largest group's setting is the one the solver takes
      with the other groups' settings (`solve` ranks only these).
  """
  settings: Dict[str, Tuple[Optional[int], ...]]
  choice: Tuple[Tuple[int, Setting], ...]
  fraction: float
  score: tuple
  preferred: bool

  @property
  def exact(self) -> bool:
    """Whether it is within `_AIM` of the target (the solver counts it as exact)."""
    return not self.score[0]


def _settings(counts: Dict[str, Tuple[int, ...]], groups: List[SettingsGroup],
              choice: Sequence[Tuple[int, Setting]]) -> Dict[str, Tuple[Optional[int], ...]]:
  """Config fields of one (kept, (g, p)) per group; unset entries dense."""
  settings = {'g': [1] * len(counts[G_P]), 'p': [None] * len(counts[G_P])}
  if P_1X1 in counts:
    settings['p_1x1'] = [1] * len(counts[P_1X1])
  for group, (_, (g, p)) in zip(groups, choice):
    if group.field == P_1X1:
      settings['p_1x1'][group.index] = p
    else:
      settings['g'][group.index], settings['p'][group.index] = g, p
  return {k: tuple(v) for k, v in settings.items()}


def combinations(counts: Dict[str, Tuple[int, ...]], groups: List[SettingsGroup], fixed: int,
                 target: float, alternatives: bool = True,
                 source: str = 'config.model.ticket') -> Iterator[Combination]:
  """The solver's enumeration: settings per group that keep about `target` of the count.

  `counts`, `groups` and `fixed` (the count of the layers that stay dense) come from
  `ssc_jax.budget.settings_groups`; the count is weights or MACs. Along each
  settings field the layers' density never increases with the filter count.
  The reference profile keeps the leading entries of a field dense while each
  holds at most `_DENSE_SHARE` of the total, and otherwise halves the density
  per entry (`_STEP_RATIO`) towards the last one, scaled to meet the target.
  Every entry but the largest takes one of its `_NEAREST` candidates (g, p
  powers of two) closest to the reference (and its closest with a KxK part).
  For each such choice the largest entry (fine grid) yields its preferred
  setting (the simplest within `_AIM` of the remaining count, else the
  closest) and, with `alternatives`, every other setting within `TOLERANCE`
  of the target. The score
  ranks by whether the setting misses the target by more than `_AIM`, then
  the number of KxK entries without a KxK part (g = None: needed only below
  the density that the largest valid g reaches), then the distance to the
  reference profile. Deterministic.
  """
  if not 0.0 < target <= 1.0:
    raise ValueError(f'{source}={target}: the target must be in (0, 1]')
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
  tuned_candidates = candidates(tuned, _FINE)
  tuned_kept = np.array([kept for kept, _ in tuned_candidates])
  tuned_complexity = np.array([_complexity(s) for _, s in tuned_candidates])
  options = []
  for group in groups:
    if group is tuned:
      continue
    group_candidates = candidates(group, _POWERS)
    if id(group) in dense:
      options.append([(group,) + group_candidates[-1]])
      continue
    ref = log_reference[id(group)]
    group_candidates.sort(key=lambda c: (abs(math.log(c[0] / group.dense) - ref), -c[0]))
    nearest = group_candidates[:_NEAREST]
    nearest += [c for c in group_candidates if c[1][0] is not None][:1]  # one with a KxK part
    options.append([(group,) + c for c in dict.fromkeys(nearest)])

  chain = next(c for c in chains if tuned in c)
  for combo in itertools.product(*options):
    density = {id(group): kept / group.dense for group, kept, _ in combo}
    if not _monotone(chains, density, skip=tuned):
      continue
    before = [density[id(g)] for g in chain if g.index < tuned.index]
    after = [density[id(g)] for g in chain if g.index > tuned.index]
    lo = np.searchsorted(tuned_kept, max(after, default=0.0) * tuned.dense - 1e-6)
    hi = np.searchsorted(tuned_kept, min(before, default=1.0) * tuned.dense + 1e-6, 'right')
    if lo >= hi:
      continue
    others = sum(kept for _, kept, _ in combo)
    errors = np.abs(tuned_kept[lo:hi] - (target * total - fixed - others)) / total
    close = errors <= _AIM
    pick = np.lexsort((errors, np.where(close, tuned_complexity[lo:hi], 0), ~close))[0]
    without_kxk = sum(g.field == G_P and s[0] is None for g, _, s in combo)
    others_in_tolerance = np.flatnonzero(errors <= TOLERANCE) if alternatives else []
    for i in [pick] + [i for i in others_in_tolerance if i != pick]:
      kept, setting = tuned_candidates[lo + i]
      error = float(errors[i])
      density[id(tuned)] = kept / tuned.dense
      distance = sum((math.log(density[id(g)]) - log_reference[id(g)]) ** 2 for g in groups)
      missing = without_kxk + (tuned.field == G_P and setting[0] is None)
      score = (error > _AIM, error if error > _AIM else missing, distance,
               int(tuned_complexity[lo + i]), error)
      chosen = {id(entry[0]): entry[1:] for entry in combo}  # (group, kept, setting)
      chosen[id(tuned)] = (kept, setting)
      choice = tuple(chosen[id(g)] for g in groups)
      yield Combination(_settings(counts, groups, choice), choice,
                        (fixed + others + kept) / total, score, preferred=i == pick)


def reachable(groups: List[SettingsGroup], fixed: int) -> Tuple[float, float]:
  """(lowest, highest) fraction of the count that the settings `combinations` draws from keep."""
  total = fixed + sum(group.dense for group in groups)
  tuned = max(groups, key=lambda g: g.dense)
  ends = [candidates(group, _FINE if group is tuned else _POWERS) for group in groups]
  return ((fixed + sum(c[0][0] for c in ends)) / total,
          (fixed + sum(c[-1][0] for c in ends)) / total)


def unreachable(source: str, target: float, network: str, groups: List[SettingsGroup],
                fixed: int, closest: Optional[float], counted: str = 'weights') -> str:
  """The error text for a target that no setting keeps within `TOLERANCE`.

  Names the setting (`source`), the network, its reachable range and the
  `closest` fraction found (None: nothing found).
  """
  low, high = reachable(groups, fixed)
  near = '' if closest is None else f'; the closest keeps {closest:.4f}'
  return (f'{source}={target}: no per-filter-count (g, p) of {network} keeps that fraction '
          f'of its {counted} within {TOLERANCE}; its settings keep {low:.4f} to '
          f'{high:.4f}{near}')


def solve(counts: Dict[str, Tuple[int, ...]], groups: List[SettingsGroup], fixed: int,
          target: float, network: str, source: str = 'config.model.ticket') -> Ticket:
  """Per-filter-count settings that keep `target` of the network's weights.

  `counts`, `groups` and `fixed` come from `ssc_jax.budget.settings_groups`;
  errors name the `network` and the setting the target came from (`source`).
  The lowest score of the preferred `combinations` wins (the first on ties).

  Raises ValueError if no setting lands within `TOLERANCE` of the target.
  """
  best = min(combinations(counts, groups, fixed, target, alternatives=False, source=source),
             key=lambda c: c.score, default=None)
  if best is None or abs(best.fraction - target) > TOLERANCE:
    raise ValueError(unreachable(source, target, network, groups, fixed,
                                 None if best is None else best.fraction))
  return Ticket(best.settings, best.fraction, target)


def _monotone(chains, density, skip) -> bool:
  """Density non-increasing along each chain (ignoring `skip`)."""
  for chain in chains:
    values = [density[id(g)] for g in chain if g is not skip]
    if any(a < b for a, b in zip(values, values[1:])):
      return False
  return True


