"""What the TPU compiler says a compiled program costs, read from the program itself.

The TPU compiler annotates most top-level instructions of the optimised HLO
with its own cost model, ``"estimated_cycles":"N"`` in their backend config.
`program_cost` sums them per chip, counts the instructions that carry one,
groups the cycles by what each instruction computes (convolution, matmul,
copy, ...), lists the collectives with the bytes they move, and adds
XLA's cost analysis (flops, bytes) and memory analysis (peak bytes). These
are the compiler's estimates for one chip, not measured times.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Dict, List, Optional, Tuple

_COMPUTATION = re.compile(r'^(ENTRY )?%([\w.\-]+) .*\{$')
# '%name = <shape or (tuple of shapes)> opcode(' at the start of an instruction.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = (\([^=]*?\)|\S+) ([a-z][\w\-]*)\(')
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_COMMENT = re.compile(r'/\*.*?\*/')
_CALLS = re.compile(r'(?:calls|to_apply|body|condition)=%([\w.\-]+)')
_ARRAY = re.compile(r'\b(pred|s4|s8|s16|s32|s64|u8|u16|u32|u64|bf16|f16|f32|f64|c64)\[([\d,]*)\]')
_BYTES = {'pred': 1, 's4': 0.5, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'bf16': 2, 'f16': 2,
          's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute', 'all-to-all')
# Instructions that move no data or only name it: not counted as ops that could carry a cost.
_BOOKKEEPING = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'copy-start',
                'copy-done', 'slice-start', 'slice-done', 'after-all', 'opt-barrier',
                'partition-id', 'replica-id')
_KINDS = (('convolution', 'convolution'), ('dot', 'matmul'), ('reduce-window', 'pooling'),
          ('select-and-scatter', 'pooling'), ('scatter', 'scatter'), ('gather', 'gather'),
          ('reduce', 'reduction'), ('transpose', 'transpose'), ('copy', 'copy'),
          ('pad', 'pad/slice'), ('slice', 'pad/slice'), ('concatenate', 'concatenate'))


@dataclasses.dataclass
class ProgramCost:
  """The compiler's view of one compiled program, per chip.

  Attributes:
    est_cycles: summed "estimated_cycles" of the top-level instructions.
    estimated_ops: instructions that carry an estimate.
    ops: instructions that compute or move data (collectives included; parameters,
      constants, tuples and asynchronous-copy bookkeeping not).
    cycles_by_kind: est_cycles split by what each instruction computes.
    collectives: {opcode: (count, bytes of their results)}.
    flops, bytes: XLA's cost analysis (None where the backend gives none).
    peak_bytes: peak memory of the program (memory analysis), or None.
    compile_s: seconds the compilation took.
  """
  est_cycles: int
  estimated_ops: int
  ops: int
  cycles_by_kind: Dict[str, int]
  collectives: Dict[str, Tuple[int, int]]
  flops: Optional[float]
  bytes: Optional[float]
  peak_bytes: Optional[int]
  compile_s: float = 0.0

  @property
  def estimated_share(self) -> float:
    """The share of `ops` that carry an estimate."""
    return self.estimated_ops / self.ops if self.ops else 0.0

  def to_json(self) -> Dict[str, Any]:
    data = dataclasses.asdict(self)
    data['collectives'] = {k: {'count': c, 'bytes': b} for k, (c, b) in self.collectives.items()}
    data['estimated_share'] = self.estimated_share
    return data


def computations(hlo: str) -> Tuple[Dict[str, List[str]], str]:
  """({computation name: its instruction lines}, the entry computation's name)."""
  blocks: Dict[str, List[str]] = {}
  current, entry = None, None
  for line in hlo.splitlines():
    match = _COMPUTATION.match(line)
    if match:
      current = match.group(2)
      blocks[current] = []
      entry = current if match.group(1) else entry
    elif current is not None and line.strip() not in ('', '}'):
      blocks[current].append(_COMMENT.sub('', line))
  if entry is None:
    raise ValueError('no ENTRY computation in the HLO text')
  return blocks, entry


def _opcodes(blocks: Dict[str, List[str]], name: str, seen: set) -> set:
  """The opcodes of computation `name` and of every computation it calls."""
  if name in seen or name not in blocks:
    return set()
  seen.add(name)
  found = set()
  for line in blocks[name]:
    match = _INSTRUCTION.match(line)
    if match:
      found.add(match.group(3))
    for called in _CALLS.findall(line):
      found |= _opcodes(blocks, called, seen)
  return found


def kind(opcode: str, inner: set) -> str:
  """What an instruction computes: its own opcode, or for a fusion the heaviest op inside."""
  ops = inner | {opcode}
  for op, label in _KINDS:
    if op in ops:
      return label
  return 'elementwise'


def array_bytes(shape: str) -> int:
  """Bytes of the arrays a shape string names (a tuple: all of them)."""
  total = 0.0
  for dtype, dims in _ARRAY.findall(shape):
    size = 1
    for d in filter(None, dims.split(',')):
      size *= int(d)
    total += size * _BYTES[dtype]
  return int(total)


def parse(hlo: str) -> Tuple[int, int, int, Dict[str, int], Dict[str, Tuple[int, int]]]:
  """(est_cycles, estimated ops, ops, cycles by kind, collectives) of an optimised HLO text."""
  blocks, entry = computations(hlo)
  cycles, estimated, ops = 0, 0, 0
  by_kind: Dict[str, int] = collections.Counter()
  collectives: Dict[str, List[int]] = {}
  for line in blocks[entry]:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    _, shape, opcode = match.groups()
    base = opcode[:-len('-start')] if opcode.endswith('-start') else opcode
    if base in COLLECTIVES:
      if not opcode.endswith('-done'):
        entry_count = collectives.setdefault(base, [0, 0])
        entry_count[0] += 1
        entry_count[1] += array_bytes(shape)
    if opcode in _BOOKKEEPING or opcode.endswith('-done'):
      continue
    ops += 1
    estimate = _CYCLES.search(line)
    if estimate:
      called = _CALLS.findall(line)
      inner = set().union(*(_opcodes(blocks, c, set()) for c in called)) if called else set()
      cycles += int(estimate.group(1))
      estimated += 1
      by_kind[kind(opcode, inner)] += int(estimate.group(1))
  return (cycles, estimated, ops, dict(by_kind),
          {k: (v[0], v[1]) for k, v in sorted(collectives.items())})


def program_cost(compiled, compile_s: float = 0.0) -> ProgramCost:
  """The `ProgramCost` of a `jax.stages.Compiled` (one chip's program)."""
  cycles, estimated, ops, by_kind, collectives = parse(compiled.as_text())
  analysis = compiled.cost_analysis() or {}
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
    analysis = analysis[0] if analysis else {}
  memory = compiled.memory_analysis()
  peak = getattr(memory, 'peak_memory_in_bytes', None) if memory is not None else None
  return ProgramCost(cycles, estimated, ops, by_kind, collectives, analysis.get('flops'),
                     analysis.get('bytes accessed'), peak, compile_s)
