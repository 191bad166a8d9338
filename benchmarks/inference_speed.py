"""CPU inference speed of exported SSC networks against their dense configs, per runtime.

    python benchmarks/inference_speed.py [--configs=cifar10_resnet32_10,cifar10_vgg19_10,
        imagenet_r50_40] [--runtimes=xla,stablehlo,onnxruntime,openvino] [--threads=N]
        [--latency_runs=200] [--batch_runs=20] [--onnx_lowering=plain] [--out=FILE]

Each config and its `_dense` config are exported untrained, as
`python -m ssc_jax.export --config=...` exports them (float32: `ssc_jax.deploy`),
then timed in the same run, the two alternating call by call: latency at
batch 1 (median and 90th percentile) and images/s at batch 64 (ImageNet: 8),
warm-up excluded, on XLA:CPU (`jax.jit` of the training network's eval forward, its SSC layers on the autotuner's cache or
rule), the StableHLO file (`jax.export`), ONNX Runtime and OpenVINO reading
the same ONNX file (where openvino is installed). ONNX Runtime's idle
threads do not spin (a spinning session slows the other one). Prints a
markdown table with the CPU, thread count, versions and date, then each
config's best runtime against the dense config's best.
"""

import argparse
import datetime
import importlib.metadata
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Tuple

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from ssc_jax import budget  # pylint: disable=wrong-import-position
from network_speed import emit  # pylint: disable=wrong-import-position
from ssc_jax import config_lib  # pylint: disable=wrong-import-position
from ssc_jax import deploy  # pylint: disable=wrong-import-position

RUNTIMES = ('xla', 'stablehlo', 'onnxruntime', 'openvino')
TARGETS = {'cifar10_resnet32_10': (0.5, 0.4), 'cifar10_vgg19_10': (0.3, 0.3),
           'imagenet_r50_40': (0.7, 0.7)}  # the issue's: batch-1 latency, batch throughput
Runner = Callable[[np.ndarray], None]


def cpu_model() -> str:
  try:
    for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def version(package: str) -> str:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return 'not installed'


def runners(network: deploy.Network, directory: pathlib.Path, runtimes, threads: int
            ) -> Dict[str, Runner]:
  """{runtime: run(x)} for `network` exported in `directory`."""
  out: Dict[str, Runner] = {}
  if 'xla' in runtimes:
    out['xla'] = deploy.training_forward(network, lowering=None)  # the eval step's lowerings
  if 'stablehlo' in runtimes:
    exported = jax.export.deserialize(bytearray((directory / deploy.STABLEHLO_FILE).read_bytes()))
    call = jax.jit(exported.call)
    out['stablehlo'] = lambda x: np.asarray(call(x))
  if 'onnxruntime' in runtimes:
    session = deploy.onnx_session(directory / deploy.ONNX_FILE, threads)
    out['onnxruntime'] = lambda x: session.run(None, {'image': x})
  if 'openvino' in runtimes:
    try:
      import openvino  # pylint: disable=g-import-not-at-top
    except ImportError:
      return out
    core = openvino.Core()
    compiled = core.compile_model(str(directory / deploy.ONNX_FILE), 'CPU',
                                  {'INFERENCE_NUM_THREADS': threads})
    request = compiled.create_infer_request()
    out['openvino'] = lambda x: request.infer({0: x})
  return out


def time_pair(ssc: Runner, dense: Runner, x: np.ndarray, runs: int
              ) -> Tuple[List[float], List[float]]:
  """ms per call of each, the two alternating call by call, after two warm-up calls each."""
  for _ in range(2):
    ssc(x)
    dense(x)
  times: Tuple[List[float], List[float]] = ([], [])
  for _ in range(runs):
    for runner, sink in ((ssc, times[0]), (dense, times[1])):
      start = time.perf_counter()
      runner(x)
      sink.append(1000 * (time.perf_counter() - start))
  return times


def p90(values: List[float]) -> float:
  return float(np.percentile(values, 90))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default=','.join(TARGETS))
  parser.add_argument('--runtimes', default=','.join(RUNTIMES))
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--latency_runs', type=int, default=200)
  parser.add_argument('--batch_runs', type=int, default=20)
  parser.add_argument('--onnx_lowering', default=deploy.ONNX_LOWERING,
                      help="the SSC configs' lowering in model.onnx (an ablation of 'plain', "
                           "e.g. 'rects+pconv'); the dense configs keep 'plain'")
  parser.add_argument('--out', default=None, help='also append the tables to this file')
  args = parser.parse_args()
  runtimes = args.runtimes.split(',')
  unknown = [r for r in runtimes if r not in RUNTIMES]
  if unknown:
    parser.error(f'--runtimes: {",".join(unknown)} not among {",".join(RUNTIMES)}')
  names = args.configs.split(',')
  missing = [n for n in names if not (budget.CONFIG_DIR / f'{n}.py').exists()]
  if missing:
    parser.error(f'--configs: no config {", ".join(missing)} in {budget.CONFIG_DIR}')

  lines = [f'# CPU inference speed, {datetime.date.today()}: {cpu_model()}, '
           f'{os.cpu_count()} logical cores, {args.threads} threads; float32; jax '
           f'{jax.__version__}, jax2onnx {version("jax2onnx")}, onnxruntime '
           f'{version("onnxruntime")}, openvino {version("openvino")}; SSC layers in ONNX on '
           f"'{args.onnx_lowering}'; latency: median and "
           f'p90 of {args.latency_runs} calls at batch 1; throughput: median of '
           f'{args.batch_runs} calls', '',
           '| config | runtime | batch 1 ms (p90) | dense batch 1 ms (p90) | batch 1 vs dense '
           '| batch | images/s | dense images/s | batch vs dense | MAC fraction |',
           '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  emit('\n'.join(lines), args.out)
  summary = []
  with tempfile.TemporaryDirectory() as scratch:
    for name in names:
      baseline = config_lib.dense_baseline(name)
      networks, found = {}, {}
      for label in (name, baseline):
        config = config_lib.load_config_module(budget.CONFIG_DIR / f'{label}.py').get_config()
        networks[label] = deploy.from_config(config)
        directory = pathlib.Path(scratch) / label
        if not directory.exists():
          deploy.export(networks[label], str(directory), onnx_lowering=(
              args.onnx_lowering if label == name else deploy.ONNX_LOWERING))
        found[label] = runners(networks[label], directory, runtimes, args.threads)
      shape = networks[name].image_shape
      batch = 8 if shape[0] > 64 else 64
      counts = budget.budget(networks[name].config)
      fraction = counts.macs / counts.dense_macs
      rng = np.random.default_rng(0)
      one = rng.standard_normal((1,) + shape).astype(np.float32)
      many = rng.standard_normal((batch,) + shape).astype(np.float32)
      results = {}
      for runtime in found[name]:
        ssc, dense = found[name][runtime], found[baseline][runtime]
        latency = time_pair(ssc, dense, one, args.latency_runs)
        throughput = time_pair(ssc, dense, many, args.batch_runs)
        medians = [statistics.median(t) for t in latency + throughput]
        results[runtime] = medians
        emit(f'| {name} | {runtime} | {medians[0]:.2f} ({p90(latency[0]):.2f}) | '
             f'{medians[1]:.2f} ({p90(latency[1]):.2f}) | {medians[0] / medians[1]:.2f}x | '
             f'{batch} | {1000 * batch / medians[2]:,.0f} | {1000 * batch / medians[3]:,.0f} | '
             f'{medians[2] / medians[3]:.2f}x | {fraction:.3f} |', args.out)
      best = lambda column: min(results, key=lambda r: results[r][column])
      ssc_1, dense_1, ssc_b, dense_b = best(0), best(1), best(2), best(3)
      summary.append((name, results[ssc_1][0] / results[dense_1][1], ssc_1, dense_1,
                      results[ssc_b][2] / results[dense_b][3], ssc_b, dense_b, batch))
  emit('\n| config | batch 1, best vs best | batch, best vs best | target |\n|---|---:|---:|---|',
       args.out)
  for name, ratio_1, ssc_1, dense_1, ratio_b, ssc_b, dense_b, batch in summary:
    target = TARGETS.get(name)
    verdict = '-' if target is None else (
        f'<= {target[0]} / <= {target[1]}: batch 1 '
        f'{"met" if ratio_1 <= target[0] else "not met"}, batch {batch} '
        f'{"met" if ratio_b <= target[1] else "not met"}')
    emit(f'| {name} | {ratio_1:.2f}x ({ssc_1} vs {dense_1}) | {ratio_b:.2f}x ({ssc_b} vs '
         f'{dense_b}) | {verdict} |', args.out)
  emit('', args.out)


if __name__ == '__main__':
  main()
