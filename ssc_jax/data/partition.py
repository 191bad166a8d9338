"""Pure helpers: which examples a process reads and how batches divide."""

import math


def process_range(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of the `n` examples read by one process.

  Contiguous, near-equal parts: the first `n % process_count` processes get one
  example more. Together the processes cover every example exactly once.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  base, extra = divmod(n, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def local_batch_size(global_batch: int, name: str, num_devices: int,
                     process_count: int) -> int:
  """The per-process share of `global_batch`; checks divisibility."""
  if global_batch <= 0 or global_batch % num_devices:
    raise ValueError(
        f'{name}={global_batch} must be a positive multiple of the number of '
        f"devices along the mesh's 'data' axis ({num_devices}).")
  if global_batch % process_count:
    raise ValueError(f'{name}={global_batch} must be divisible by the number '
                     f'of processes ({process_count}).')
  return global_batch // process_count


def train_steps_per_epoch(num_train: int, global_batch: int) -> int:
  """Full global batches in one pass over the train split (the remainder is dropped)."""
  steps = num_train // global_batch
  if steps < 1:
    raise ValueError(f'batch_size={global_batch} exceeds the {num_train} training examples.')
  return steps


def eval_steps(n: int, global_batch: int, process_count: int) -> int:
  """Eval batches every process yields so all of its examples fit.

  Each process reads `process_range` of the split, at most ceil(n / P)
  examples, in batches of `global_batch / P`; the last ones are padded.
  """
  local = global_batch // process_count
  return math.ceil(math.ceil(n / process_count) / local)
