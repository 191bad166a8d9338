"""Compile a config's train and eval steps for a TPU topology, with no TPU attached.

    python -m ssc_jax.aot --config=configs/X.py --topology=v5e:4x4 [--batch=N] \\
        [--lowering=NAME] [--json] [--config.KEY=VALUE ...]

Compiles the main job's steps as a run on that topology would (mesh over
every chip, batch sharded, state replicated, the config's dtype), and the
same for the config's dense twin (every SSC layer dense, at its best
lowering), then prints per chip: peak memory and whether it fits, flops,
bytes, the summed estimated cycles and the share of ops that carry an
estimate, the collectives, the compile time, and the SSC/dense ratios. With
`config.autotune` on (the default) and `--lowering` unset, the lowering of
every SSC layer is chosen by the compiler's estimate and kept in the
autotuner's cache file under the keys a real run on that TPU reads.
A multi-host topology compiles the program that each host runs on its
chips. Needs the '[tpu]' extra. All figures are the TPU compiler's
estimates, not measured times.
"""

import json
import pathlib
from typing import Any, Dict

from absl import app
from absl import flags
from ml_collections import config_flags

from ssc_jax import console
from ssc_jax import errors
from ssc_jax import hlo_cost
from ssc_jax import tpu
from ssc_jax.ssc import lowerings

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when this module runs as a program."""
  config_flags.DEFINE_config_file('config', None, 'Run config file.')
  flags.DEFINE_string('topology', None, "TPU topology, e.g. 'v5e:2x2', 'v5e:4x4', 'v4:2x2x4'.")
  flags.DEFINE_integer('batch', None, 'Global train and eval batch (default: the config\'s).')
  flags.DEFINE_string('lowering', None, "One lowering for every SSC layer of the config (e.g. "
                      "'dense', 'split'); default: the config's (tuned: 'auto').")
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.mark_flags_as_required(['config', 'topology'])


def _side(steps: tpu.Steps, hbm_bytes: int) -> Dict[str, Any]:
  """The JSON of one config's steps."""
  def program(cost: hlo_cost.ProgramCost) -> Dict[str, Any]:
    fits = None if cost.peak_bytes is None else cost.peak_bytes <= hbm_bytes
    return {**cost.to_json(), 'fits': fits}
  return {'batch': steps.batch, 'eval_batch': steps.eval_batch,
          'train': program(steps.train), 'eval': program(steps.eval)}


def _ratio(ssc: float, dense: float) -> float:
  return ssc / dense if dense else float('nan')


def report(config, topology: str, name: str) -> Dict[str, Any]:
  """Compiles `config` and its dense twin for `topology`; the report as a dict."""
  generation, _ = tpu.parse_topology(topology)
  devices = tpu.topology_devices(topology)
  hbm = tpu.CHIPS[generation].hbm_bytes
  ssc = tpu.compile_steps(config, devices, name)
  dense = tpu.compile_steps(tpu.dense_twin(config), devices, f'{name} dense twin')
  result = {'config': name, 'topology': topology, 'devices': len(devices),
            'device_kind': devices[0].device_kind, 'hbm_bytes': hbm, 'batch': ssc.batch,
            'lowering': config.lowering, **_side(ssc, hbm), 'dense': _side(dense, hbm)}
  result['vs_dense'] = {
      step: {field: _ratio(getattr(getattr(ssc, step), field), getattr(getattr(dense, step), field))
             for field in ('est_cycles', 'flops', 'bytes')} for step in ('train', 'eval')}
  return result


def _si(value, unit: str = '') -> str:
  """A count with an SI prefix: 49.3 G, 1.55 T."""
  if value is None:
    return '-'
  for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(value) >= scale:
      return f'{value / scale:.3g} {prefix}{unit}'
  return f'{value:.0f} {unit}'.rstrip()


def format_report(result: Dict[str, Any], config_path: str) -> str:
  """The report as a text table."""
  lines = [f"{config_path} on {result['topology']}: {result['devices']} chips "
           f"({result['device_kind']}, {result['hbm_bytes'] / 2**30:.0f} GiB each), global batch "
           f"{result['batch']}, lowering {result['lowering']}. Per chip, the TPU compiler's "
           'estimates (not measured times):', '']
  header = ('program', 'est. cycles', 'with estimate', 'flops', 'bytes', 'peak memory', 'fits',
            'collectives', 'compile s')
  rows = [header]
  for side, label in ((result, 'SSC'), (result['dense'], 'dense twin')):
    for step in ('train', 'eval'):
      p = side[step]
      collectives = ', '.join(f"{k} x{v['count']} ({_si(v['bytes'], 'B')})"
                              for k, v in p['collectives'].items()) or '-'
      rows.append((f'{label} {step}', f"{p['est_cycles']:,}",
                   f"{p['estimated_ops']}/{p['ops']} ({100 * p['estimated_share']:.0f}%)",
                   _si(p['flops']), _si(p['bytes'], 'B'), _si(p['peak_bytes'], 'B'),
                   {True: 'yes', False: 'NO', None: '-'}[p['fits']], collectives,
                   f"{p['compile_s']:.1f}"))
  widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
  lines += ['  '.join(str(v).ljust(w) if i in (0, 7) else str(v).rjust(w)
                      for i, (v, w) in enumerate(zip(row, widths))) for row in rows]
  for step in ('train', 'eval'):
    r = result['vs_dense'][step]
    lines.append(f"SSC / dense, {step}: est. cycles {r['est_cycles']:.2f}x, flops "
                 f"{r['flops']:.2f}x, bytes {r['bytes']:.2f}x")
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  tpu.offline_environment()
  config = FLAGS.config
  with config.unlocked():
    if FLAGS.batch is not None:
      if FLAGS.batch < 1:
        raise errors.UserError(f'--batch={FLAGS.batch} must be a positive number of examples')
      config.batch_size = config.eval_batch_size = FLAGS.batch
    if FLAGS.lowering is not None:
      if FLAGS.lowering != 'auto' and not lowerings.is_name(FLAGS.lowering):
        raise errors.UserError(f"--lowering={FLAGS.lowering!r} must be 'auto' or "
                               f'{lowerings.NAMES}')
      config.lowering = FLAGS.lowering
  path = config_flags.get_config_filename(FLAGS['config'])
  result = report(config, FLAGS.topology, pathlib.Path(path).stem)
  for side in (result, result['dense']):
    for step in ('train', 'eval'):
      if side[step]['fits'] is False:
        raise errors.UserError(
            f"{path}: the {step} step needs "
            f"{side[step]['peak_bytes'] / 2**30:.1f} GiB per chip, more than the "
            f"{result['hbm_bytes'] / 2**30:.0f} GiB of a {result['topology']} chip; lower "
            '--batch or use more chips')
  if FLAGS.json:
    print(json.dumps(result))
  else:
    print(format_report(result, path))


if __name__ == '__main__':
  define_flags()
  console.run(main)
