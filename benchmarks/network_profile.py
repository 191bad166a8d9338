"""Where a network's step spends its time: the compiled step's XLA ops by kind, per call.

    python benchmarks/network_profile.py --config=cifar10_resnet32_10 [--step=train|eval]
        [--lowering=auto] [--batch=N] [--eval_batch=N] [--dtype=float32|bfloat16] [--calls=3]
        [--top=15]

Prepares the config's train step or eval forward as benchmarks/network_speed.py
does (random batches, the lowering plan chosen first), times it untraced
(median of --calls, warm-up excluded), then traces --calls calls with
jax.profiler and prints a markdown table of op kinds: an XLA op or fusion
name without its number ('ynn_fusion': XLA:CPU's YNNPACK matmuls and
convolutions; 'transpose_copy_fusion', 'concatenate_bitcast_fusion': data
movement), with milliseconds per call summed over the threads that ran it.
On CPU two threads run independent ops at once, so the sum may exceed the
step's wall time.
"""

import argparse
import collections
import datetime
import pathlib
import platform
import re
import tempfile
from typing import Dict

import jax

import network_speed
from ssc_jax.ssc import autotune

_SKIPPED = re.compile(r'^(ThunkExecutor|end: )')


def op_kind(name: str) -> str:
  """'ynn_fusion.83' -> 'ynn_fusion'."""
  return re.sub(r'\.\d+$', '', name)


def op_ms_per_kind(trace_dir: str, calls: int) -> Dict[str, float]:
  """{op kind: ms per call} from the XLA op events of a jax.profiler trace."""
  path, = pathlib.Path(trace_dir).glob('**/*.xplane.pb')
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
    for line in plane.lines:
      if not (line.name.startswith('tf_XLAEigen') or line.name == 'XLA Ops'):
        continue  # host threads that run XLA:CPU ops, or a GPU's op line
      for event in line.events:
        if not _SKIPPED.match(event.name):
          totals[op_kind(event.name)] += event.duration_ns / 1e6 / calls
  return dict(totals)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='cifar10_resnet32_10')
  parser.add_argument('--step', choices=('train', 'eval'), default='train')
  parser.add_argument('--lowering', default='auto')
  parser.add_argument('--batch', type=int, default=0)
  parser.add_argument('--eval_batch', type=int, default=0)
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None)
  parser.add_argument('--calls', type=int, default=3)
  parser.add_argument('--top', type=int, default=15)
  args = parser.parse_args()
  network_speed.check_lowering(parser, args.lowering)
  steps = network_speed.prepare(args.config, args, args.lowering)
  step = steps.train if args.step == 'train' else steps.evaluate
  with autotune.installed(steps.plan):
    wall_ms = autotune.median_ms(step, (), args.calls)
    with tempfile.TemporaryDirectory() as trace_dir:
      jax.profiler.start_trace(trace_dir)
      for _ in range(args.calls):
        jax.block_until_ready(step())
      jax.profiler.stop_trace()
      kinds = op_ms_per_kind(trace_dir, args.calls)
  device = jax.devices()[0]
  total = sum(kinds.values())
  batch = steps.config.batch_size if args.step == 'train' else steps.config.eval_batch_size
  print(f'# {args.config} {args.step} step, batch {batch}, lowering '
        f'{args.lowering}, {datetime.date.today()}: {platform.node()}, jax {jax.__version__}, '
        f'{device.platform} {device.device_kind}\n\n'
        f'wall {wall_ms:.1f} ms per call (median of {args.calls}, untraced); XLA ops '
        f'{total:.1f} ms per call summed over threads\n\n'
        '| op kind | ms per call | share |\n|---|---:|---:|')
  for kind, ms in sorted(kinds.items(), key=lambda item: -item[1])[:args.top]:
    print(f'| {kind} | {ms:.1f} | {ms / total:.1%} |')


if __name__ == '__main__':
  main()
