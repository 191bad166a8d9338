"""Where an SSC layer's cycles go on a TPU: every lowering of a layer, by the compiler's estimate.

    python benchmarks/tpu_layers.py --topology=v5e:2x2 --configs=cifar10_vgg19_10 \
        [--lowerings=dense,split,grouped4+matmul,...] [--dtype=bfloat16] [--out=FILE]

For each distinct SSC layer shape of the configs (at the per-chip batch of
the config's batch over the topology's chips), compiles a train step of the
layer alone (output and both gradients) for one chip, its layouts left to
the compiler as inside a network, under each lowering and as the dense
convolution of the same shape, and prints the summed estimated cycles, the
ratio to dense, and the cycles by kind of op (convolution, copy, elementwise,
reduction, ...), which says where each lowering's cycles go. Needs the
'[tpu]' extra. These are the compiler's estimates, not measured times.
"""

import argparse
import datetime
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssc_jax import tpu  # pylint: disable=wrong-import-position

tpu.offline_environment()

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from ssc_jax import budget  # pylint: disable=wrong-import-position
from network_speed import emit  # pylint: disable=wrong-import-position
from ssc_jax import config_lib  # pylint: disable=wrong-import-position
from ssc_jax import hlo_cost  # pylint: disable=wrong-import-position
from ssc_jax import models  # pylint: disable=wrong-import-position
from ssc_jax import ssc_structure  # pylint: disable=wrong-import-position
from ssc_jax.data import specs  # pylint: disable=wrong-import-position
from ssc_jax.ssc import autotune  # pylint: disable=wrong-import-position
from ssc_jax.ssc import layout as layout_lib  # pylint: disable=wrong-import-position
from ssc_jax.ssc import lowerings  # pylint: disable=wrong-import-position


def layer_shapes(name: str, dtype: str, devices):
  """{key id: (key, layout, geometry)} of the config's SSC layers that are not dense."""
  config = config_lib.load_config_module(budget.CONFIG_DIR / f'{name}.py').get_config()
  if dtype:
    config.model.dtype = dtype
  info = specs.info(config.dataset)
  model = models.create_model(budget.resolve_ticket(config.model, info.num_classes,
                                                    info.input_shape[-1]), info.num_classes)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1,) + info.input_shape), train=False))
  with autotune.scoring(tpu.Estimator(devices)):
    layers = autotune.layers_of(lambda v, x: model.apply(v, x, train=True,
                                                         mutable=['batch_stats']),
                                variables,
                                jax.ShapeDtypeStruct((config.batch_size,) + info.input_shape,
                                                     jnp.float32))
  return {k: v for k, v in layers.items() if v[1].structure.g != 1 or v[1].mix is not None}


def cost(estimator, layout, geometry, batch, dtype, name):
  """(est cycles, cycles by kind) of a train step of the layer under lowering `name`."""
  step = autotune.training_step(lambda x, k, m: lowerings.apply(
      lowerings.as_choice(name), x, k, m, layout, geometry, None))
  args = estimator.inputs(layout, geometry, batch, dtype)
  cycles, _, _, by_kind, _ = hlo_cost.parse(estimator.compile(step, *args).as_text())
  return cycles, by_kind


def kinds(by_kind, total) -> str:
  return ', '.join(f'{kind} {100 * value / total:.0f}%'
                   for kind, value in sorted(by_kind.items(), key=lambda kv: -kv[1])[:4])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--topology', default='v5e:2x2')
  parser.add_argument('--configs', default='cifar10_vgg19_10')
  parser.add_argument('--lowerings', default='candidates',
                      help="comma-separated names, or 'candidates': the tuner's on TPU")
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='bfloat16')
  parser.add_argument('--out', default=None)
  args = parser.parse_args()
  if args.lowerings != 'candidates':
    unknown = [n for n in args.lowerings.split(',') if not lowerings.is_name(n)]
    if unknown:
      parser.error(f'--lowerings: {", ".join(unknown)} not a lowering name ({lowerings.NAMES})')
  devices = tpu.topology_devices(args.topology)
  estimator = tpu.Estimator(devices)
  lines = [f'# TPU layer estimates, {datetime.date.today()}: {args.topology} '
           f'({devices[0].device_kind}), jax {jax.__version__}, {args.dtype}; train step of '
           'each layer alone (output and both gradients), one chip; the compiler\'s estimated '
           'cycles, not measured times', '',
           '| layer | lowering | est. cycles | vs dense conv | where the cycles go |',
           '|---|---|---:|---:|---|']
  emit('\n'.join(lines), args.out)
  seen = set()
  for name in args.configs.split(','):
    for key, layout, geometry in layer_shapes(name, args.dtype, devices).values():
      label = (f'{key.in_features}->{key.features} k{key.kernel_size[0]} s{key.strides[0]} '
               f'{key.input_size[0]}x{key.input_size[1]} g{key.g} p{key.p} {key.taps}, '
               f'batch {key.batch // key.devices}')
      if label in seen:
        continue
      seen.add(label)
      batch = key.batch // key.devices
      s = layout.structure
      dense = layout_lib.layout(ssc_structure(s.in_features, s.features, s.kernel_size, 1, None))
      base, base_kinds = cost(estimator, dense, geometry, batch, args.dtype, 'grouped')
      emit(f'| {label} | dense conv | {base:,} | 1.00x | {kinds(base_kinds, base)} |', args.out)
      names = (lowerings.candidates(layout, 'tpu') if args.lowerings == 'candidates'
               else args.lowerings.split(','))
      for lowering in names:
        try:
          lowerings.check(lowering, layout)
        except ValueError:  # a valid name that this layer cannot run (e.g. 'grouped4' at g = 2)
          continue
        cycles, by_kind = cost(estimator, layout, geometry, batch, args.dtype, lowering)
        emit(f'| | {lowering} | {cycles:,} | {cycles / base:.2f}x | '
             f'{kinds(by_kind, cycles)} |', args.out)


if __name__ == '__main__':
  main()
