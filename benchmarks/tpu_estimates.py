"""The TPU compiler's estimates for the seed configs, with no TPU attached (needs the '[tpu]' extra).

    python benchmarks/tpu_estimates.py --topology=v5e:2x2 --dtype=bfloat16 \
        [--configs=cifar10_resnet32_10,...|seed] [--tune | --covered] [--out=FILE]

Without --tune: compiles each config's train and eval steps and its dense
twin's (`python -m ssc_jax.aot`), and prints a table of summed estimated
cycles per chip, SSC against dense, with the targets of the TPU issue.
With --tune: only chooses the lowering plan of each config and of its dense
twin by the compiler's estimate, into the autotuner's cache file
($SSC_JAX_AUTOTUNE_CACHE; the committed ones are ssc_jax/ssc/tuned/*.json).
With --covered: compiles nothing; says of each config and its dense twin
whether the cache files already hold its whole plan on that topology (exit
status 1 where one does not).
Every figure is the compiler's estimate, not a measured time.
"""

import argparse
import datetime
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssc_jax import tpu  # pylint: disable=wrong-import-position

tpu.offline_environment()

import jax  # pylint: disable=wrong-import-position

from ssc_jax import aot  # pylint: disable=wrong-import-position
from network_speed import emit  # pylint: disable=wrong-import-position
from ssc_jax import config_lib  # pylint: disable=wrong-import-position

CONFIG_DIR = ROOT / 'configs'
# The targets: SSC train step against the dense twin, estimated cycles, v5e 2x2, bf16.
TARGETS = {'imagenet_r50_40': 0.7, 'imagenet_r50_20': 0.6, 'cifar10_vgg19_10': 0.5,
           'cifar10_resnet32_10': 0.85}
SEED = sorted(p.stem for p in CONFIG_DIR.glob('*.py')
              if p.stem != 'default' and not p.stem.endswith('_dense'))


def load(name: str, dtype: str):
  config = config_lib.load_config_module(CONFIG_DIR / f'{name}.py').get_config()
  if dtype:
    config.model.dtype = dtype
  return config


def with_twins(names, dtype: str):
  """(label, config) of each config, then of its dense twin."""
  for name in names:
    yield name, load(name, dtype)
    yield f'{name} dense twin', tpu.dense_twin(load(name, dtype))


def tune(names, topology: str, dtype: str) -> None:
  """Chooses (and caches) the plan of each config and its dense twin by the estimate."""
  devices = tpu.topology_devices(topology)
  for label, config in with_twins(names, dtype):
    start = time.perf_counter()
    info, model = tpu.model_of(config)
    plan = tpu.plan_for(config, model, info.input_shape, devices)
    print(f'{label}: {len(plan.choices)} layer shapes in {time.perf_counter() - start:.0f} s',
          flush=True)


def covered(names, topology: str, dtype: str) -> bool:
  """Prints whether the cache files give each config's and dense twin's plan; True if all."""
  devices = tpu.topology_devices(topology)
  missing = []
  for label, config in with_twins(names, dtype):
    answered = tpu.cache_answers(config, devices)
    print(f'{label}: {"cached" if answered else "NOT cached (tune it with --tune)"}', flush=True)
    missing += [] if answered else [label]
  print(f'{topology}: {len(names) * 2 - len(missing)} of {len(names) * 2} plans cached')
  return not missing


def table(names, topology: str, dtype: str, out) -> None:
  """Compiles each config and its dense twin; prints the markdown table of estimates."""
  lines = [f'# TPU estimates, {datetime.date.today()}: {topology}, jax {jax.__version__}, '
           f'dtype {dtype or "per config"}; the TPU compiler\'s summed estimated cycles per '
           'chip, not measured times', '',
           '| config | batch | train est. cycles | dense twin train | train vs dense | eval '
           'est. cycles | dense twin eval | eval vs dense | flops vs dense | peak memory | '
           'target (train) |',
           '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|']
  emit('\n'.join(lines), out)
  for name in names:
    result = aot.report(load(name, dtype), topology, name)
    ratio = result['vs_dense']
    target = TARGETS.get(name)
    verdict = ('-' if target is None else
               f"<= {target}: {'met' if ratio['train']['est_cycles'] <= target else 'not met'}")
    emit(f"| {name} | {result['batch']} | {result['train']['est_cycles']:,} | "
         f"{result['dense']['train']['est_cycles']:,} | {ratio['train']['est_cycles']:.2f}x | "
         f"{result['eval']['est_cycles']:,} | {result['dense']['eval']['est_cycles']:,} | "
         f"{ratio['eval']['est_cycles']:.2f}x | {ratio['train']['flops']:.2f}x | "
         f"{result['train']['peak_bytes'] / 2**30:.2f} GiB | {verdict} |", out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--topology', default='v5e:2x2')
  parser.add_argument('--configs', default=','.join(TARGETS),
                      help="comma-separated config names, or 'seed' for every seed config")
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None)
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--tune', action='store_true', help='only choose and cache the plans')
  mode.add_argument('--covered', action='store_true',
                    help='only say which plans the cache files hold (exit 1 if one is not)')
  parser.add_argument('--out', default=None, help='also append the table to this file')
  args = parser.parse_args()
  names = SEED if args.configs == 'seed' else args.configs.split(',')
  unknown = [n for n in names if not (CONFIG_DIR / f'{n}.py').exists()]
  if unknown:
    parser.error(f'--configs: no config {", ".join(unknown)} in {CONFIG_DIR}')
  if args.tune:
    tune(names, args.topology, args.dtype)
  elif args.covered:
    sys.exit(0 if covered(names, args.topology, args.dtype) else 1)
  else:
    table(names, args.topology, args.dtype, args.out)


if __name__ == '__main__':
  main()
