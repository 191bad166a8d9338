"""XLA flags that ssc_jax sets for the process before jax starts a backend."""

import importlib.metadata
import os

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def without_ynn_fusions() -> None:
  """Turns XLA:CPU's YNNPACK fusions off (jaxlib 0.10 and 0.11), unless XLA_FLAGS sets them.

  With jaxlib 0.10.2, XLA:CPU fuses a convolution, the ReLU after it, two
  convolutions summed and a max pool into one YNNPACK fusion that computes
  wrong values: 60% off on a 4-op program of plain `lax` convolutions, 10% off
  on cifar10_vgg19_10's eval forward with its SSC layers on 'split' (each op
  alone is right; `tests/test_lowerings.py`). Without those fusions the result
  is right and ResNet-32's eval forward ran faster here (289 ms against 441 ms
  at batch 64, 2026-12-05). jaxlib 0.12 computes it right. Takes effect only
  before jax compiles its first program; `import ssc_jax` does it.
  """
  try:
    version = tuple(int(v) for v in importlib.metadata.version('jaxlib').split('.')[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return
  flags = os.environ.get('XLA_FLAGS', '')
  if (0, 10) <= version < (0, 12) and YNN_FLAG not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}='.strip()
