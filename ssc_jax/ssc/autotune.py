"""The lowering of each pass of each SSC layer, chosen by measurement.

An SSCConv with ``implementation='auto'`` asks `choose` for its `Choice` (one
lowering for the forward pass, one for the input gradient, one for the
weight gradient). `choose` answers, in order, from:

1. the installed `Plan` (`installed(plan)`): choices per layer, or one forced
   lowering for every layer; inside `inference()` (an eval step, which has no
   backward pass) the plan's own forward choice for inference comes first;
2. the cache file (``$SSC_JAX_AUTOTUNE_CACHE``, default
   ``~/.cache/ssc_jax/autotune.json``), filled by `tune`;
3. the cost rule (`rule`), where nothing was measured.

A layer is keyed by everything that changes its timing: backend, device
kind, device count, batch, input size, channels, kernel, strides, padding,
g, p, taps and compute dtype (`LayerKey`). `tune` times every candidate of
`lowerings.candidates` for each pass on one device, at the per-device batch:
the KxK part and the 1x1 part are timed apart (their costs add) and against
the whole-layer lowerings ('dense', 'shifts', 'split'); each pass takes the
fastest. Those per-pass picks,
each pick in every pass, the best whole-layer lowering and 'dense' are then
timed as a train step runs the layer (`compositions`), and the fastest is
the choice. `tune_model` finds the
layers of a model by tracing it abstractly, tunes those not yet known, and
returns the plan.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import fcntl

import jax
import jax.numpy as jnp
from absl import logging

from ssc_jax.ssc import lowerings
from ssc_jax.ssc.geometry import Geometry
from ssc_jax.ssc.layout import Layout
from ssc_jax.ssc.lowerings import Choice
from ssc_jax.ssc.structure import taps_label

PASSES = ('forward', 'input_grad', 'weight_grad')
CACHE_ENV = 'SSC_JAX_AUTOTUNE_CACHE'
_FORMAT = 1


_KEY_ID = re.compile(
    r'^(?P<platform>[^|]+)\|(?P<device_kind>[^|]+)\|x(?P<devices>\d+)\|b(?P<batch>\d+)\|'
    r'(?P<h>\d+)x(?P<w>\d+)\|(?P<m>\d+)->(?P<n>\d+)\|k(?P<kh>\d+)x(?P<kw>\d+)\|'
    r's(?P<sh>\d+)x(?P<sw>\d+)\|'
    r'pad\(\((?P<p0>-?\d+), (?P<p1>-?\d+)\), \((?P<p2>-?\d+), (?P<p3>-?\d+)\)\)\|'
    r'g(?P<g>\d+|None)\|p(?P<p>\d+|None)\|(?P<taps>[^|]+)\|(?P<dtype>[^|]+)$')


@dataclasses.dataclass(frozen=True)
class LayerKey:
  """What a layer's timing depends on."""
  platform: str
  device_kind: str
  devices: int
  batch: int
  input_size: Tuple[int, int]
  in_features: int
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int]
  pads: Tuple[Tuple[int, int], Tuple[int, int]]
  g: Optional[int]
  p: Optional[int]
  taps: str
  dtype: str

  @property
  def id(self) -> str:
    """A stable text form, the key of the cache file and of plans."""
    return (f'{self.platform}|{self.device_kind}|x{self.devices}|b{self.batch}|'
            f'{self.input_size[0]}x{self.input_size[1]}|{self.in_features}->{self.features}|'
            f'k{self.kernel_size[0]}x{self.kernel_size[1]}|s{self.strides[0]}x{self.strides[1]}|'
            f'pad{self.pads}|g{self.g}|p{self.p}|{self.taps}|{self.dtype}')

  @classmethod
  def from_id(cls, text: str) -> 'LayerKey':
    """The key whose `id` is `text`; ValueError if `text` is not such an id."""
    match = _KEY_ID.match(text)
    if match is None:
      raise ValueError(f'{text!r} is not an SSC layer key id')
    f = match.groupdict()
    pair = lambda a, b: (int(f[a]), int(f[b]))
    optional = lambda v: None if v == 'None' else int(v)
    return cls(f['platform'], f['device_kind'], int(f['devices']), int(f['batch']),
               pair('h', 'w'), int(f['m']), int(f['n']), pair('kh', 'kw'), pair('sh', 'sw'),
               (pair('p0', 'p1'), pair('p2', 'p3')), optional(f['g']), optional(f['p']),
               f['taps'], f['dtype'])

  @property
  def per_device_id(self) -> str:
    """`id` with the device count and global batch replaced by the batch per device: the
    layer's work on one device, which is what `measure` times."""
    return self.id.replace(f'|x{self.devices}|b{self.batch}|',
                           f'|b{self.batch // max(1, self.devices)}/device|', 1)


def layer_key(layout: Layout, geometry: Geometry, batch: int, dtype: Any) -> LayerKey:
  """The key of one layer on the devices of the current `scorer()`."""
  s = layout.structure
  target = scorer()
  return LayerKey(target.platform, target.device_kind, target.device_count, int(batch),
                  geometry.input_size, s.in_features, s.features, s.kernel_size,
                  geometry.strides, geometry.pads, s.g, s.p, taps_label(s.taps),
                  jnp.dtype(dtype).name)


@dataclasses.dataclass
class Plan:
  """Choices per layer key id, or one lowering forced on every layer.

  `inference` holds the forward lowering of a layer in an inference pass
  (`inference()`), where it differs from the training forward pass's best
  (on CPU, the whole network's inference ran fastest on other lowerings
  than its training forward pass).
  """
  choices: Dict[str, Choice] = dataclasses.field(default_factory=dict)
  force: Optional[lowerings.LoweringLike] = None
  inference: Dict[str, str] = dataclasses.field(default_factory=dict)

  def to_json(self) -> Dict[str, Any]:
    return {'force': self.force, 'choices': {k: list(v) for k, v in sorted(self.choices.items())},
            'inference': dict(sorted(self.inference.items()))}

  @classmethod
  def from_json(cls, data: Dict[str, Any]) -> 'Plan':
    return cls({k: Choice(*v) for k, v in data['choices'].items()}, data.get('force'),
               dict(data.get('inference', {})))


_INSTALLED: List[Plan] = []
_INFERENCE: List[bool] = []
_WARNED: set = set()
_RECORDING: List[Dict[str, Tuple[LayerKey, Layout, Geometry]]] = []


@contextlib.contextmanager
def installed(plan: Plan) -> Iterator[Plan]:
  """Makes `plan` answer `choose` while tracing inside the context."""
  _INSTALLED.append(plan)
  try:
    yield plan
  finally:
    _INSTALLED.remove(plan)


@contextlib.contextmanager
def inference() -> Iterator[None]:
  """Marks what is traced inside the context as an inference pass: layers take the
  installed plan's `Plan.inference` lowering where it has one."""
  _INFERENCE.append(True)
  try:
    yield
  finally:
    _INFERENCE.pop()


@contextlib.contextmanager
def recording() -> Iterator[Dict[str, Tuple[LayerKey, Layout, Geometry]]]:
  """Collects the layers that ask `choose` while tracing inside the context."""
  seen: Dict[str, Tuple[LayerKey, Layout, Geometry]] = {}
  _RECORDING.append(seen)
  try:
    yield seen
  finally:
    _RECORDING.remove(seen)


def choose(layout: Layout, geometry: Geometry, batch: int, dtype: Any) -> Choice:
  """The lowering of each pass for one layer: plan, else cache file, else rule.

  Inside `inference()` a cache entry that timed the forward pass alone
  (an eval-only layer's) serves; elsewhere an entry must have timed all three.

  A layer that an installed plan of choices does not know (a resume on
  another card, device count or dtype) is logged as a warning.
  """
  key = layer_key(layout, geometry, batch, dtype)
  for seen in _RECORDING:
    seen.setdefault(key.id, (key, layout, geometry))
  for plan in reversed(_INSTALLED):
    if plan.force is not None:
      choice = lowerings.as_choice(plan.force)
      for name in set(choice):
        lowerings.check(name, layout, f'lowering={plan.force!r} for the layer of {key.id}')
      return choice
    if _INFERENCE and key.id in plan.inference:
      return lowerings.as_choice(plan.inference[key.id])
    if key.id in plan.choices:
      return plan.choices[key.id]
  if _INSTALLED and key.id not in _WARNED:
    _WARNED.add(key.id)
    logging.warning('The lowering plan does not know the SSC layer %s: using the cache file '
                    'or the cost rule.', key.id)
  cached = Cache.default().get(key.id, ('forward',) if _INFERENCE else PASSES)
  return cached if cached is not None else rule(key, layout)


def rule(key: LayerKey, layout: Layout) -> Choice:
  """The cost rule used where nothing was measured.

  From the tuner's measurements of every SSC layer shape of the seed configs
  on a 2-core CPU (2026-11-27-cpu-2core.md; `benchmarks/cost_rule.py`
  prices it against them). There, one plain convolution per group of
  channels ('sliced', at a coarser slicing of at least `SLICE_CHANNELS`
  channels from g = 16 on) wins most layers in every pass; strided KxK
  layers with g > 1 run their forward and input gradient as shifted matmuls
  ('shifts'); a
  KxK part with one group ('g = 1') with positions left out runs them as
  matmuls over the kept positions ('taps') from 64 channels on, as dilated
  rectangles ('split') below; 32-channel layers with two groups gain nothing
  over the masked dense kernel. On an H100 every candidate timed alone cost
  about one call (0.05-0.2 ms, 2026-11-27-h100.md), which ranks nothing: the
  rule keeps the masked dense kernel there, which costs what a dense
  convolution costs.
  """
  s = layout.structure
  if s.g is None:
    return lowerings.as_choice('grouped+matmul')
  width = min(s.in_features, s.features)
  partial = len(layout.shift_positions) < s.kernel_size[0] * s.kernel_size[1]
  if key.platform != 'cpu' or (s.g == 1 and not partial) or (width <= 32 and s.g == 2):
    return lowerings.as_choice('dense')
  if s.g == 1:
    return lowerings.as_choice('taps' if width >= 64 else 'split')
  sliced = lowerings.coarse_slicing(layout) if s.g >= 16 else 'sliced'
  strided = max(key.strides) > 1 and s.kernel_size != (1, 1)  # 1x1: no 'shifts' to time
  return Choice('shifts', 'shifts', sliced) if strided else lowerings.as_choice(sliced)


# --- the cache file -----------------------------------------------------------

SHIPPED = pathlib.Path(__file__).resolve().parent / 'tuned'  # cache files that ship with ssc_jax


def _per_device_id(key_id: str) -> Optional[str]:
  """The `LayerKey.per_device_id` of a layer key id; None for other ids."""
  try:
    return LayerKey.from_id(key_id).per_device_id
  except ValueError:
    return None


class Cache:
  """Measured choices on disk: {key id: {'choice': [...], 'passes': [...], <unit>: {...}}}.

  <unit> is the scorer's: 'ms' where timed, 'est_cycles' where the TPU
  compiler's estimate ranked the candidates. The cache also keeps the
  verdicts of `ssc_jax.tuning`'s whole-network checks, under ids that start
  with 'network|'.

  'passes' are the passes that were timed (an eval-only layer: the forward
  pass); an entry serves only requests for passes it timed. A layer that has
  no entry of its own takes the entry of the same layer on the same device
  kind at the same batch per device (`LayerKey.per_device_id`), and then the
  entries of the cache files shipped in `SHIPPED` (`default()`'s fallbacks).
  Writes take a lock, merge with what another process wrote meanwhile and
  replace the file atomically; shipped files are only read.
  """
  _default: Optional['Cache'] = None

  def __init__(self, path: os.PathLike, fallbacks: Tuple['Cache', ...] = ()):
    self.path = pathlib.Path(path)
    self.fallbacks = fallbacks
    self._entries: Optional[Dict[str, Any]] = None
    self._index: Tuple[Optional[Dict[str, Any]], Dict[str, Any]] = (None, {})

  @classmethod
  def default(cls) -> 'Cache':
    """The user's cache file (`$SSC_JAX_AUTOTUNE_CACHE`), over the shipped ones."""
    path = pathlib.Path(os.environ.get(CACHE_ENV) or
                        pathlib.Path.home() / '.cache' / 'ssc_jax' / 'autotune.json')
    if cls._default is None or cls._default.path != path:
      cls._default = cls(path, tuple(cls(p) for p in sorted(SHIPPED.glob('*.json'))))
    return cls._default

  def _read(self) -> Dict[str, Any]:
    try:
      data = json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}
    if not isinstance(data, dict) or data.get('format') != _FORMAT:
      logging.warning('%s is not an autotune cache file of format %d: ignored, and replaced '
                      'at the next write.', self.path, _FORMAT)
      return {}
    return data.get('entries', {})

  @property
  def entries(self) -> Dict[str, Any]:
    if self._entries is None:
      self._entries = self._read()
    return self._entries

  def _per_device(self) -> Dict[str, Any]:
    """{per-device id: entry} of this file's layer entries."""
    entries = self.entries
    if self._index[0] is not entries:  # the dict itself: a new one may reuse a freed id
      index = {}
      for key_id, entry in entries.items():
        per_device = _per_device_id(key_id)
        if per_device is not None:
          index.setdefault(per_device, entry)
      self._index = (entries, index)
    return self._index[1]

  def entry(self, key_id: str) -> Optional[Dict[str, Any]]:
    """The entry of `key_id`: its own, else its layer's at the same batch per device, here
    and then in the fallbacks."""
    per_device = _per_device_id(key_id)
    for cache in (self,) + self.fallbacks:
      found = cache.entries.get(key_id) or (per_device and cache._per_device().get(per_device))
      if found:
        return found
    return None

  def get(self, key_id: str, passes: Tuple[str, ...] = PASSES) -> Optional[Choice]:
    """The cached choice of a layer, if its entry timed every pass of `passes`."""
    entry = self.entry(key_id)
    if not entry or not set(passes) <= set(entry.get('passes', PASSES)):
      return None
    return Choice(*entry['choice'])

  def put(self, new: Dict[str, Any]) -> None:
    """Adds entries and writes the file (merged with its current content)."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path.with_name(self.path.name + '.lock'), 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      merged = {**self.entries, **self._read(), **new}
      self._entries = merged
      with tempfile.NamedTemporaryFile('w', dir=self.path.parent, delete=False,
                                       suffix='.tmp') as f:
        json.dump({'format': _FORMAT, 'entries': merged}, f, indent=1, sort_keys=True)
      os.replace(f.name, self.path)


# --- measurement --------------------------------------------------------------

def _part_layouts(layout: Layout) -> List[Tuple[str, Layout, List[str]]]:
  """(part, layout with only that part, its candidate names) for each part timed apart."""
  parts = []
  if layout.kernel is not None:
    kxk = dataclasses.replace(layout, mix=None)
    parts.append(('kxk', kxk, [n for n in lowerings.candidates(kxk, scorer().platform)
                               if n not in lowerings.WHOLE]))
  if layout.mix is not None:
    mix = dataclasses.replace(layout, kernel=None)
    parts.append(('mix', mix, [f'grouped+{m}' for m in lowerings.MIXES]))
  return parts


def _known_slow(name: str, which: str, layout: Layout) -> bool:
  """Candidates not worth timing: on CPU, the weight gradient of a grouped convolution.

  JAX emits it as a convolution with batch_group_count > 1, which XLA:CPU
  rewrites into a far larger dense computation (10-1000x a dense
  convolution's time in benchmarks/results/); timing it would cost seconds.
  """
  groups = lowerings.physical_groups(name, layout)
  return (which == 'weight_grad' and scorer().platform == 'cpu'
          and groups is not None and groups > 1)


def _pass_fn(name: str, layout: Layout, geometry: Geometry, which: str) -> Callable:
  """(x, kernel, mix, dy) -> the pass `which` of lowering `name`."""
  run = lambda x, k, m: lowerings.run(name, x, k, m, layout, geometry, None)
  if which == 'forward':
    return lambda x, k, m, dy: run(x, k, m)
  if which == 'input_grad':
    return lambda x, k, m, dy: jax.vjp(lambda x: run(x, k, m), x)[1](dy)
  return lambda x, k, m, dy: jax.vjp(lambda k, m: run(x, k, m), k, m)[1](dy)


def training_step(fn: Callable) -> Callable:
  """(x, kernel, mix, dy) -> (fn's output, its gradients for `dy`), as a train step runs a layer.

  The output is returned: gradients alone would let XLA drop the forward
  pass, whose result no gradient of a linear layer needs.
  """
  def step(x, kernel, mix, dy):
    y, vjp = jax.vjp(fn, x, kernel, mix)
    return y, vjp(dy)
  return step


def compositions(times: Dict[str, Dict[str, float]], layout: Layout) -> List[Choice]:
  """The whole-layer options that `measure` times after the passes.

  The per-pass picks (`best` of each pass's `times`); each pick run in every
  pass (autodiff through one lowering shares work between the passes, which
  a per-pass split recomputes); the whole-layer lowering ('dense', 'shifts',
  'split') of least summed time; and 'dense'.
  """
  picks = Choice(*(best(times[which])[0] for which in PASSES))
  whole = min((name for name in lowerings.WHOLE if all(name in times[w] for w in PASSES)),
              key=lambda name: sum(times[w][name] for w in PASSES))
  names = [name for name in picks if not _known_slow(name, 'weight_grad', layout)]
  options = [picks] + [lowerings.as_choice(name) for name in names + [whole, 'dense']]
  return list(dict.fromkeys(options))


def inputs(layout: Layout, geometry: Geometry, batch: int, dtype: Any, seed: int = 0):
  """Random (x, kernel, mix, dy) of the layer's shapes, on the first device."""
  s = layout.structure
  keys = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(keys[0], (batch,) + geometry.input_size + (s.in_features,), dtype)
  kernel = mix = None
  if layout.kernel is not None:
    kernel = jax.random.normal(keys[1], layout.kernel.shape, dtype)
  if layout.mix is not None:
    mix = jax.random.normal(keys[2], layout.mix.shape, dtype)
  dy = jax.random.normal(keys[3], (batch,) + geometry.output_size + (s.features,), dtype)
  return jax.device_put((x, kernel, mix, dy), jax.devices()[0])


SAMPLE_MS = 2.0  # a timing sample queues calls for at least about this long


def median_ms(compiled, args, repeats: int, calls: int = 3) -> float:
  """Median ms of one call, warm-up excluded.

  Each sample dispatches at least `calls` calls before waiting, and more
  (up to 50) where one call is short, until a sample lasts about
  `SAMPLE_MS`: the host's dispatch then overlaps the device work as it does
  inside a step, and the wait at the end of a sample is spread over the
  calls (on a GPU a layer often runs in less time than that wait).
  """
  jax.block_until_ready(compiled(*args))  # warm-up
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  once_ms = 1000 * (time.perf_counter() - start)
  calls = max(calls, min(50, int(SAMPLE_MS / max(once_ms, 1e-3))))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = compiled(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return 1000 * statistics.median(times)


def copies_per_call() -> int:
  """Independent copies of a pass that one timed call runs on the default backend.

  One on CPU, where a layer takes milliseconds. Elsewhere a layer often
  takes less than dispatching a call (on an H100, 2026-11-27, every
  candidate of every layer of ResNet-50 at batch 128 timed 0.05-0.2 ms
  alone, and parts timed apart each paid that floor): a call then runs 8
  copies, each on its own inputs and weights so that XLA merges none.
  """
  return 1 if jax.default_backend() == 'cpu' else 8


def replicated(fn: Callable) -> Callable:
  """fn over a list of argument tuples: one result per tuple, in one program."""
  return lambda copies: [fn(*args) for args in copies]


class Timer:
  """Scores candidates by timing them on this process's first device (the default scorer).

  A scorer names the devices whose layer keys it fills (platform, device kind,
  device count), makes a candidate's inputs, compiles it and scores it (lower
  is better, in `unit`). `ssc_jax.tpu.Estimator` scores by the TPU compiler's
  estimate instead, for a TPU that is not attached.
  """
  unit = 'ms'

  def __init__(self):
    device = jax.devices()[0]
    self.platform, self.device_kind = device.platform, device.device_kind
    self.device_count = jax.device_count()
    self.copies = copies_per_call()

  def inputs(self, layout: Layout, geometry: Geometry, batch: int, dtype: Any, seed: int = 0):
    """(x, kernel, mix, dy) of a layer, random, on the first device."""
    return inputs(layout, geometry, batch, dtype, seed)

  def normal(self, key: jax.Array, shape: Tuple[int, ...], dtype: Any = jnp.float32):
    """A standard normal array of `shape`."""
    return jax.random.normal(key, shape, dtype)

  def materialize(self, fn: Callable):
    """fn(), computed (e.g. a model's variables)."""
    return jax.jit(fn)()

  def compile(self, fn: Callable, *args):
    return jax.jit(fn).lower(*args).compile()

  def score(self, compiled, *args, repeats: int = 3, calls: int = 3) -> float:
    """Median ms of one call of `compiled` on `args`, warm-up excluded (`median_ms`)."""
    return median_ms(compiled, args, repeats, calls)


_SCORERS: List[Any] = []


@contextlib.contextmanager
def scoring(target) -> Iterator[Any]:
  """Makes `target` (a `Timer`-like scorer) key, measure and choose layers inside the context."""
  _SCORERS.append(target)
  try:
    yield target
  finally:
    _SCORERS.remove(target)


def scorer():
  """The scorer of the innermost `scoring` context, else a `Timer` of the default device."""
  return _SCORERS[-1] if _SCORERS else Timer()


def measure(layout: Layout, geometry: Geometry, batch: int, dtype: Any,
            passes: Tuple[str, ...] = PASSES, repeats: int = 3,
            workers: Optional[int] = None,
            copies: Optional[int] = None) -> Dict[str, Dict[str, float]]:
  """The score of every candidate for each pass: {pass: {name: score}}, in the current
  `scorer()`'s unit (a `Timer`: milliseconds).

  Each part ('kxk', 'mix') is timed alone under its own names; the results
  hold them as 'kxk:<name>' and 'mix:<name>', and the whole-layer lowerings
  ('dense', 'shifts', 'split') under theirs. With all three passes, a fourth
  entry 'training' then times each of `compositions` (labels
  'forward,input_grad,weight_grad') as a train step runs the layer: output
  and both gradients in one program, where lowerings timed apart can add up
  otherwise (on CPU, 2026-11-27, per-pass winners summing to 0.78x of
  dense's passes ran at 1.11x of a dense layer together). Each timed call
  runs `copies` copies (default: the scorer's); the scores are per copy.
  Compilation runs on `workers` threads; timing runs one job at a time.
  """
  target = scorer()
  copies = copies or target.copies
  jobs, parts = [], _part_layouts(layout)  # one input set per layout, shared by the passes
  for which in passes:
    jobs += [(which, name, layout) for name in lowerings.candidates(layout, target.platform)
             if name in lowerings.WHOLE]
    for part, part_layout, names in parts:
      jobs += [(which, f'{part}:{name}', part_layout) for name in names
               if not _known_slow(name, which, part_layout)]

  args = {id(job_layout): [target.inputs(job_layout, geometry, batch, dtype, seed)
                           for seed in range(copies)]
          for _, _, job_layout in jobs}  # 'dense' is a job of every pass: `layout` is in

  def compile_job(job):
    which, label, job_layout = job
    if which == 'training':
      fn = training_step(lambda x, k, m: lowerings.apply(
          lowerings.as_choice(label.split(',')), x, k, m, layout, geometry, None))
    else:
      fn = _pass_fn(label.split(':')[-1], job_layout, geometry, which)
    return target.compile(replicated(fn), args[id(job_layout)])

  times: Dict[str, Dict[str, float]] = {which: {} for which in passes}

  def run(jobs):
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
      compiled = list(pool.map(compile_job, jobs))
    for (which, label, job_layout), fn in zip(jobs, compiled):
      times.setdefault(which, {})[label] = target.score(fn, args[id(job_layout)],
                                                        repeats=repeats) / copies

  run(jobs)
  if tuple(passes) == PASSES:
    options = compositions(times, layout)
    if len(options) > 1:
      run([('training', ','.join(c), layout) for c in options])
  return times


def best(times: Dict[str, float]) -> Tuple[str, float]:
  """The fastest lowering name of one pass and its ms: a whole-layer one or the best parts summed."""
  kxk = {k[4:]: v for k, v in times.items() if k.startswith('kxk:')}
  mix = {k[4:]: v for k, v in times.items() if k.startswith('mix:')}
  options = {name: ms for name, ms in times.items() if name in lowerings.WHOLE}
  kxk_name = min(kxk, key=kxk.get) if kxk else None
  mix_name = min(mix, key=mix.get) if mix else None
  if kxk_name or mix_name:
    name = kxk_name or 'grouped'
    if mix_name and not mix_name.endswith('+einsum'):
      name += '+' + mix_name.split('+')[1]
    options[name] = kxk.get(kxk_name, 0.0) + mix.get(mix_name, 0.0)
  winner = min(options, key=options.get)
  return winner, options[winner]


def ms_of(times: Dict[str, float], name: str) -> float:
  """The measured ms of lowering `name` in one pass's `times` (from `measure`).

  A whole-layer lowering reads its own entry; any other sums its KxK part and
  its 1x1 part ('einsum' where the name gives no mix). Infinity where a part
  was not timed (`_known_slow`).
  """
  if name in lowerings.WHOLE:
    return times.get(name, float('inf'))
  if not lowerings.is_name(name):
    raise ValueError(f'lowering {name!r} is not a lowering name (see ssc_jax.ssc.lowerings)')
  kxk, _, mix = name.partition('+')
  total = 0.0
  for part, label in (('kxk', kxk), ('mix', 'grouped+' + (mix or 'einsum'))):
    if any(k.startswith(part + ':') for k in times):
      total += times.get(f'{part}:{label}', float('inf'))
  return total


def tune(layers: Dict[str, Tuple[LayerKey, Layout, Geometry]], batch_divisor: int = 1,
         passes: Tuple[str, ...] = PASSES, cache: Optional[Cache] = None,
         log: Callable[[str], None] = lambda _: None) -> Plan:
  """Choices for `layers` ({key id: (key, layout, geometry)}): cached ones, else measured.

  Each layer is timed at its key's batch / `batch_divisor` (the per-device
  batch of a data-parallel step: on CPU, timing at a smaller batch ranked
  'taps' first where it is slower at the run's batch); passes not in
  `passes` take the forward pass's choice. Each layer's measurements go to
  `cache` (default: the cache file) as soon as it is timed, so a run killed
  mid-tuning keeps them.
  """
  cache = cache or Cache.default()
  plan = Plan()
  for key_id, (key, layout, geometry) in layers.items():
    known = cache.get(key_id, passes)
    if known is not None:
      plan.choices[key_id] = known
      continue
    start = time.perf_counter()
    times = measure(layout, geometry, max(1, key.batch // batch_divisor), key.dtype, passes)
    picks = {which: best(times[which])[0] for which in passes}
    choice = Choice(*(picks.get(which, picks['forward']) for which in PASSES))
    if times.get('training'):  # the fastest composition (the per-pass picks on ties)
      choice = Choice(*min(times['training'], key=times['training'].get).split(','))
    plan.choices[key_id] = choice
    cache.put({key_id: {'choice': list(choice), 'passes': list(passes), scorer().unit: times}})
    log(f'tuned {key_id} in {time.perf_counter() - start:.1f} s: {tuple(choice)}')
  return plan


def layers_of(fn: Callable, *args, **kwargs) -> Dict[str, Tuple[LayerKey, Layout, Geometry]]:
  """The SSC layers with implementation='auto' that `fn(*args)` runs, traced abstractly."""
  with recording() as seen:
    jax.eval_shape(fn, *args, **kwargs)
  return seen


def tune_model(fn: Callable, *args, batch_divisor: int = 1, passes: Tuple[str, ...] = PASSES,
               cache: Optional[Cache] = None, **kwargs) -> Plan:
  """Tunes every 'auto' SSC layer that `fn(*args, **kwargs)` runs; returns their plan.

  For example ``tune_model(model.apply, variables, x)``; then trace the
  model under ``installed(plan)``, or rely on the cache file.
  """
  return tune(layers_of(fn, *args, **kwargs), batch_divisor, passes, cache)
