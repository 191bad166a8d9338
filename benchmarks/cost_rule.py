"""The cost rule against the measurements it stands in for, layer by layer.

    python benchmarks/cost_rule.py [--cache=FILE] [--platform=cpu] [--out=FILE]

For every layer of an autotuner cache file (default: the one `autotune.Cache`
uses) that was timed in all three passes on `--platform`: the lowering that
`autotune.rule` picks for each pass, what those picks cost by the cache's own
measurements (`autotune.ms_of`, forward + input gradient + weight gradient),
and what the measured best and the masked dense kernel ('dense') cost. Prints
a markdown table and the totals; a row whose rule time exceeds dense's is
marked. Re-derive the rule for a new backend from this table.
"""

import argparse
import datetime
import pathlib

from network_speed import emit
from ssc_jax.ssc import autotune
from ssc_jax.ssc import layout as layout_lib
from ssc_jax.ssc import structure


def layer_rows(entries, platform: str):
  """(key, rule choice, rule ms, best ms, dense ms) per fully timed layer of `platform`."""
  rows = []
  for key_id, entry in sorted(entries.items()):
    if key_id.startswith('network|') or set(entry.get('passes', autotune.PASSES)) != set(
        autotune.PASSES):
      continue
    key = autotune.LayerKey.from_id(key_id)
    if key.platform != platform:
      continue
    layout = layout_lib.layout(structure.ssc_structure(
        key.in_features, key.features, key.kernel_size, key.g, key.p, key.taps))
    if layout.structure.num_weights == layout.structure.num_dense_weights:
      continue  # a dense layer: nothing to choose
    times = entry['ms']
    choice = autotune.rule(key, layout)
    rows.append((key, choice,
                 sum(autotune.ms_of(times[w], n) for w, n in zip(autotune.PASSES, choice)),
                 sum(autotune.best(times[w])[1] for w in autotune.PASSES),
                 sum(autotune.ms_of(times[w], 'dense') for w in autotune.PASSES)))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cache', default=None, help='default: the autotuner\'s cache file')
  parser.add_argument('--platform', default='cpu')
  parser.add_argument('--out', default=None, help='also write the table to this file')
  args = parser.parse_args()
  cache = autotune.Cache(pathlib.Path(args.cache)) if args.cache else autotune.Cache.default()
  rows = layer_rows(cache.entries, args.platform)
  lines = [f'# cost rule against {cache.path}, {datetime.date.today()}: {len(rows)} '
           f'{args.platform} layers timed in every pass; ms of forward + input gradient + '
           'weight gradient, from the cache\'s measurements', '',
           '| batch | HxW | M->N | stride | g | p | taps | rule (fwd, dx, dw) | rule ms '
           '| best ms | dense ms | rule / best | rule / dense |',
           '|---:|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|']
  for key, choice, rule_ms, best_ms, dense_ms in rows:
    slower = ' **slower than dense**' if rule_ms > dense_ms else ''
    lines.append(f'| {key.batch} | {key.input_size[0]}x{key.input_size[1]} | '
                 f'{key.in_features}->{key.features} | {key.strides[0]} | {key.g} | {key.p} | '
                 f'{key.taps} | {", ".join(choice)} | {rule_ms:.2f} | {best_ms:.2f} | '
                 f'{dense_ms:.2f} | {rule_ms / best_ms:.2f}x | {rule_ms / dense_ms:.2f}x{slower} |')
  if rows:
    rule_sum, best_sum, dense_sum = (sum(r[i] for r in rows) for i in (2, 3, 4))
    lines += ['', f'Totals: rule {rule_sum:.1f} ms, measured best {best_sum:.1f} ms, dense '
              f'{dense_sum:.1f} ms; rule / best {rule_sum / best_sum:.2f}x, rule / dense '
              f'{rule_sum / dense_sum:.2f}x; {sum(r[2] > r[4] for r in rows)} of {len(rows)} '
              'layers slower than dense under the rule.']
  emit('\n'.join(lines), args.out)


if __name__ == '__main__':
  main()
