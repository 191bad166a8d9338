"""The cost rule against the measurements it stands in for, layer by layer.

    python benchmarks/cost_rule.py [--cache=FILE] [--platform=cpu|gpu|tpu] [--out=FILE]

For every layer of an autotuner cache file (default: the one `autotune.Cache`
uses) that was timed in all three passes on `--platform` (default: this
machine's backend): the lowering that `autotune.rule` picks for each pass,
what those picks cost by the cache's own measurements (forward + input
gradient + weight gradient: as the tuner timed that composition in a train
step, else the passes timed apart, summed by `autotune.ms_of`), and what the
tuned choice and the masked dense kernel ('dense') cost. Prints a markdown
table and the totals; a row whose rule time exceeds dense's is marked.
Re-derive the rule for a new backend from this table.
"""

import argparse
import datetime
import pathlib
from typing import Tuple

import jax

from network_speed import emit
from ssc_jax.ssc import autotune
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc import lowerings
from ssc_jax.ssc import structure


def choice_ms(times, choice) -> Tuple[float, bool]:
  """(ms, measured) of a layer under `choice`: its train-step time where `measure` timed
  that composition (measured), else the sum of its passes' times (an estimate)."""
  composed = times.get('training', {}).get(','.join(choice))
  if composed is not None:
    return composed, True
  return sum(autotune.ms_of(times[w], n) for w, n in zip(autotune.PASSES, choice)), False


def layer_rows(entries, platform: str):
  """(key, rule choice, (ms, measured) of the rule, the tuned choice and dense) per fully
  timed layer of `platform`."""
  rows = []
  for key_id, entry in sorted(entries.items()):
    if key_id.startswith('network|') or 'ms' not in entry or set(  # TPU: est_cycles
        entry.get('passes', autotune.PASSES)) != set(autotune.PASSES):
      continue
    key = autotune.LayerKey.from_id(key_id)
    if key.platform != platform:
      continue
    layout = layout_lib.layout(structure.ssc_structure(
        key.in_features, key.features, key.kernel_size, key.g, key.p, key.taps))
    if layout.structure.num_weights == layout.structure.num_dense_weights:
      continue  # a dense layer: nothing to choose
    choice = autotune.rule(key, layout)
    rows.append((key, choice, *(choice_ms(entry['ms'], c) for c in (
        choice, entry['choice'], lowerings.as_choice('dense')))))
  return rows


def _cell(value) -> str:
  ms, measured = value
  return f'{ms:.2f}' if measured else f'~{ms:.2f}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cache', default=None, help='default: the autotuner\'s cache file')
  parser.add_argument('--platform', default=jax.devices()[0].platform)
  parser.add_argument('--out', default=None, help='also write the table to this file')
  args = parser.parse_args()
  cache = autotune.Cache(pathlib.Path(args.cache)) if args.cache else autotune.Cache.default()
  rows = layer_rows(cache.entries, args.platform)
  lines = [f'# cost rule against {cache.path}, {datetime.date.today()}: {len(rows)} '
           f'{args.platform} layers timed in every pass; ms of forward + input gradient + '
           'weight gradient as a train step runs the layer (~: the sum of the passes timed '
           'apart, where that composition was not timed)', '',
           '| batch | HxW | M->N | stride | g | p | taps | rule (fwd, dx, dw) | rule ms '
           '| tuned ms | dense ms | rule / tuned | rule / dense |',
           '|---:|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|']
  for key, choice, rule, tuned, dense in rows:
    slower = ' **slower than dense**' if rule[0] > dense[0] else ''
    lines.append(f'| {key.batch} | {key.input_size[0]}x{key.input_size[1]} | '
                 f'{key.in_features}->{key.features} | {key.strides[0]} | {key.g} | {key.p} | '
                 f'{key.taps} | {", ".join(choice)} | {_cell(rule)} | {_cell(tuned)} | '
                 f'{_cell(dense)} | {rule[0] / tuned[0]:.2f}x | {rule[0] / dense[0]:.2f}x{slower} |')
  if rows:
    rule_sum, tuned_sum, dense_sum = (sum(r[i][0] for r in rows) for i in (2, 3, 4))
    lines += ['', f'Totals: rule {rule_sum:.1f} ms, tuned {tuned_sum:.1f} ms, dense '
              f'{dense_sum:.1f} ms; rule / tuned {rule_sum / tuned_sum:.2f}x, rule / dense '
              f'{rule_sum / dense_sum:.2f}x; {sum(r[2][0] > r[4][0] for r in rows)} of '
              f'{len(rows)} layers slower than dense under the rule.']
  emit('\n'.join(lines), args.out)


if __name__ == '__main__':
  main()
