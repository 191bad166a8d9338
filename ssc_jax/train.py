"""train_and_evaluate: build a run from its config, train, evaluate, summarise.

Data parallel over every device of every process: the train and eval steps
are `jax.jit`-compiled with the batch sharded over the mesh axis 'data' and
the state replicated, so BatchNorm statistics and gradients are over the
global batch. The state buffers are donated to each step.
"""

import datetime
import functools
import json
import signal
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import parameter_overview
from etils import epath

from ssc_jax import budget
from ssc_jax import checkpointing
from ssc_jax import config_lib
from ssc_jax import console
from ssc_jax import data
from ssc_jax import errors
from ssc_jax import metrics
from ssc_jax import models
from ssc_jax import optim
from ssc_jax import sharding
from ssc_jax import tuning
from ssc_jax.ssc import autotune


@flax.struct.dataclass
class TrainState:
  """Everything a step changes; saved in checkpoints."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy in float32."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def init_compiler_options() -> Optional[Dict[str, Any]]:
  """XLA options for compiling the init program, which runs once.

  On CPU, LLVM's optimisation of its random-number generation (one threefry
  program per parameter) is most of its compile time and saves nothing: the
  default config's init compiled in 3.5 s, and in 1.1 s at optimisation level 0
  (2026-11-27, 2-core CPU); values equal up to float rounding (ResNet-50's: at
  most 6e-8 apart). Elsewhere: XLA's defaults.
  """
  return {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None


def initial_state(model, tx: optax.GradientTransformation, image_shape: Tuple[int, ...],
                  key: jax.Array) -> TrainState:
  """The initial TrainState of `model` (parameters from `key`) with `tx`'s state."""
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def create_train_state(model, tx: optax.GradientTransformation, image_shape: Tuple[int, ...],
                       key: jax.Array, mesh) -> TrainState:
  """Initial state, created directly in its replicated sharding."""
  init = functools.partial(initial_state, model, tx, image_shape)
  lowered = jax.jit(init, out_shardings=sharding.replicated(mesh)).lower(key)
  return lowered.compile(init_compiler_options())(key)


def train_step(model, tx, label_smoothing: float, state: TrainState,
               batch: Dict[str, jax.Array]) -> Tuple[TrainState, metrics.TrainMetrics, jax.Array]:
  """One SGD step on a global batch; also whether its loss and new state are finite."""

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                  batch['image'], train=True, mutable=['batch_stats'])
    losses = cross_entropy(logits, batch['label'], label_smoothing)
    return losses.mean(), (logits, losses, updates['batch_stats'])

  grads, (logits, losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = TrainState(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state)
  finite = jnp.isfinite(losses.mean()) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves((params, batch_stats))]))
  step_metrics = metrics.TrainMetrics.single_from_model_output(
      loss=losses, logits=logits.astype(jnp.float32), labels=batch['label'])
  return new_state, step_metrics, finite


def eval_step(model, state: TrainState, batch: Dict[str, jax.Array]) -> metrics.EvalMetrics:
  """Metrics of one global eval batch; padded examples (mask 0) do not count."""
  with autotune.inference():  # the plan's lowerings for a pass without a backward pass
    logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                         batch['image'], train=False).astype(jnp.float32)
  return metrics.EvalMetrics.single_from_model_output(
      loss=cross_entropy(logits, batch['label']), logits=logits, labels=batch['label'],
      mask=batch['mask'])


def jit_steps(config, model, tx: optax.GradientTransformation, mesh):
  """(train step, eval step) compiled for `mesh`: batch sharded, state replicated.

  The train step donates the state it is given.
  """
  replicated, batched = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  p_train_step = jax.jit(
      functools.partial(train_step, model, tx, config.label_smoothing),
      in_shardings=(replicated, batched), out_shardings=(replicated,) * 3,
      donate_argnums=(0,))
  p_eval_step = jax.jit(functools.partial(eval_step, model),
                        in_shardings=(replicated, batched), out_shardings=replicated)
  return p_train_step, p_eval_step


def _dispatch(step_fn, state, batch, one_at_a_time: bool):
  """`step_fn(state, batch)`; with `one_at_a_time` (see `sharding.dispatch_one_at_a_time`),
  only once the batch is ready, and returning only once the result is."""
  if not one_at_a_time:
    return step_fn(state, batch)
  return jax.block_until_ready(step_fn(state, jax.block_until_ready(batch)))


def evaluate(step_fn, state: TrainState, batches: Iterator[Dict[str, jax.Array]],
             split: str) -> Dict[str, float]:
  """Metrics over every example of a split, named '<split>_<metric>'."""
  total = None
  ordered = sharding.dispatch_one_at_a_time()
  for batch in batches:
    batch_metrics = _dispatch(step_fn, state, batch, ordered)
    total = batch_metrics if total is None else total.merge(batch_metrics)
  return {f'{split}_{name}': float(value) for name, value in total.compute().items()}


def _evaluate_splits(step_fn, state: TrainState, data_input,
                     eval_test: bool) -> Dict[str, float]:
  """Validation (when held out) and, unless `eval_test` is False, test metrics."""
  results = {}
  splits = (['validation'] if data_input.spec.num_validation else []) + (
      ['test'] if eval_test else [])
  for split in splits:
    results.update(evaluate(step_fn, state, data_input.eval_batches(split), split))
  return results


def prepare_workdir(workdir: str) -> epath.Path:
  """The workdir, created; a clear error if it cannot be written."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe_{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as error:
    raise errors.WorkdirError(f'--workdir={workdir!s}: cannot write there ({error}). '
                              'Choose a directory this user can create and write.') from error
  return path


class PreemptionSignal:
  """Context: records SIGTERM (preemption) instead of dying, so the loop can save.

  Single-process runs only: with several processes, JAX's preemption service
  (started by jax.distributed) agrees on a step for all of them, which the
  loop reads through `Checkpointer.reached_preemption`.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received signal %d: saving a checkpoint and stopping.', signum)
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def check_finite(pending: List[Tuple[int, jax.Array, jax.Array]], last_saved: Optional[int],
                 checkpoint_dir: epath.Path) -> None:
  """Raises NonFiniteLossError naming the first step whose loss or new params are not finite.

  `pending` holds (step, finite flag, summed loss) of the steps not yet checked.
  """
  flags_and_losses = jax.device_get([(finite, loss) for _, finite, loss in pending])
  for (step, _, _), (finite, loss) in zip(pending, flags_and_losses):
    if not finite:
      kept = (f'the last good checkpoint is step {last_saved} in {checkpoint_dir}'
              if last_saved is not None else 'no checkpoint was written')
      raise NonFiniteLossError(f'Non-finite training loss or parameters (loss sum {float(loss)}) '
                               f'at step {step}; stopping. {kept}.')
  pending.clear()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_changes: Sequence[str] = ()) -> Dict[str, Any]:
  """Trains and evaluates the model of `config`, resuming from `workdir`.

  `allow_changes`: config keys a resume may change (see checkpointing.EXPERIMENT_KEYS).
  Returns the run's summary, also written to `<workdir>/summary.json`.
  """
  wall_start = time.time()
  config_lib.check_config(config)
  workdir = prepare_workdir(workdir)
  mesh = sharding.create_mesh()
  data_input = data.create_input(config, mesh)
  spec = data_input.spec
  model_config = budget.resolve_ticket(config.model, spec.num_classes, spec.image_shape[-1])
  model = models.create_model(model_config, spec.num_classes)
  steps_per_epoch = data_input.steps_per_epoch
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  tx = optim.create_optimizer(config, steps_per_epoch)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch)

  checkpointer = checkpointing.Checkpointer(workdir, config, allow_changes)
  plan, tuning_seconds = tuning.run_plan(config, model, spec.image_shape, workdir)
  with autotune.installed(tuning.init_plan(plan)):  # the same init program on every process
    state = create_train_state(model, tx, spec.image_shape, jax.random.key(config.seed), mesh)
  state = checkpointer.restore(state)
  start_step = int(state.step)

  writer = metrics.create_writer(workdir)
  console.show('Config, where it differs from config_lib.base():\n%s',
               console.describe_config(config, config_lib.base()))
  if start_step == 0:
    console.show('Parameters:\n%s',
                 parameter_overview.get_parameter_overview(state.params, max_lines=40))
    writer.write_hparams(config_lib.flatten(config))
  console.show('Training %s on %s: %d steps (%d per epoch, batch %d), %d devices, from step %d.',
               config.model.name, spec.name, num_steps, steps_per_epoch, config.batch_size,
               jax.device_count(), start_step)
  if not spec.num_validation:
    console.show('No validation split (full_train=%s): training on all %d training examples, '
                 'evaluating on test only.', config.full_train, spec.num_train)

  p_train_step, p_eval_step = jit_steps(config, model, tx, mesh)

  try:
    with autotune.installed(plan):  # the steps are traced at their first call
      state, eval_results, throughput, preempted = _train_loop(
          config, state, data_input, p_train_step, p_eval_step, checkpointer, writer, schedule,
          num_steps, start_step)
  finally:  # pending asynchronous saves and writes complete whatever happens
    checkpointer.close()
    writer.close()
  if preempted:
    return {'preempted_at_step': int(state.step)}
  history = (_eval_history(workdir / 'metrics.jsonl', steps_per_epoch, int(state.step))
             if jax.process_index() == 0 else [])
  summary = _summary(config, spec, model, state, eval_results, history, steps_per_epoch,
                     throughput, time.time() - wall_start)
  summary['lowering_tuning_s'] = tuning_seconds
  if jax.process_index() == 0:
    (workdir / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
  console.show('Summary (%s):\n%s', workdir / 'summary.json', console.format_table(summary.items()))
  return summary


def _train_loop(config, state: TrainState, data_input, p_train_step, p_eval_step,
                checkpointer: checkpointing.Checkpointer, writer: metrics.Writers, schedule,
                num_steps: int, start_step: int):
  """Steps from `start_step` to `num_steps`: logs, evaluates, saves, stops on SIGTERM.

  Returns (state, last eval metrics, train images/s after compilation, preempted).
  """
  steps_per_epoch = data_input.steps_per_epoch
  last_saved = checkpointer.latest_step()
  progress = metrics.Progress(num_steps, steps_per_epoch, config.batch_size, writer)
  train_metrics, pending_losses = None, []
  timed_steps, timed_seconds, timer = 0, 0.0, None
  eval_results: Dict[str, float] = {}
  batches = data_input.train_batches(start_step)
  ordered = sharding.dispatch_one_at_a_time()
  with PreemptionSignal() as preemption:
    for step in range(start_step + 1, num_steps + 1):
      state, step_metrics, finite = _dispatch(p_train_step, state, next(batches), ordered)
      pending_losses.append((step, finite, step_metrics.loss.total))
      train_metrics = step_metrics if train_metrics is None else train_metrics.merge(step_metrics)
      if timer is None:  # the first step compiles: time from its end
        jax.block_until_ready(state)
        timer = time.perf_counter()
      else:
        timed_steps += 1

      epoch_end = step % steps_per_epoch == 0
      is_last = step == num_steps
      log_now = step % config.log_every_steps == 0 or is_last
      eval_now = is_last or (epoch_end and (step // steps_per_epoch) % config.eval_every_epochs == 0)
      save_now = step % config.checkpoint_every_steps == 0 or epoch_end or is_last
      stop_now = preemption.received or checkpointer.reached_preemption(step)
      if not (log_now or eval_now or save_now or stop_now):
        continue

      jax.block_until_ready(state)
      timed_seconds += time.perf_counter() - timer
      check_finite(pending_losses, last_saved, checkpointer.directory)
      if log_now:
        scalars = {f'train_{k}': v for k, v in train_metrics.compute().items()}
        scalars['learning_rate'] = schedule(step - 1)
        writer.write_scalars(step, scalars)
        progress.report(step, scalars, timed_steps, timed_seconds)
        train_metrics = None
      if eval_now:
        eval_results = _evaluate_splits(p_eval_step, state, data_input, config.eval_test)
        writer.write_scalars(step, {**eval_results, 'epoch': step / steps_per_epoch})
        writer.write_histograms(step, state.params)
        console.show(metrics.format_evaluation(step, step / steps_per_epoch, eval_results))
      if save_now or stop_now:
        checkpointer.save(step, state, force=stop_now)
        last_saved = step
      writer.flush()
      timer = time.perf_counter()
      if stop_now:
        logging.warning('Preempted at step %d: checkpoint saved, exiting.', step)
        return state, eval_results, None, True

  if not eval_results:  # resumed a finished run: evaluate its final state
    eval_results = _evaluate_splits(p_eval_step, state, data_input, config.eval_test)
  throughput = timed_steps * config.batch_size / timed_seconds if timed_seconds > 0 else None
  return state, eval_results, throughput, False


def _eval_history(path: epath.Path, steps_per_epoch: int,
                  last_step: int) -> List[Dict[str, float]]:
  """The evaluations in `metrics.jsonl` at epoch ends and at `last_step`, in step order.

  A resumed run repeats the steps after its checkpoint and may write an
  evaluation again: each step counts once, with its last record.
  """
  records = {}
  lines = path.read_text().splitlines() if path.exists() else []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
    step = record.get('step')
    if ('test_accuracy' in record and step <= last_step
        and (step % steps_per_epoch == 0 or step == last_step)):
      records[step] = record
  return [records[step] for step in sorted(records)]


def _best_of(history: List[Dict[str, float]], steps_per_epoch: int) -> Dict[str, Any]:
  """Best test top-1 over `history` and the test top-1 where validation top-1 is best
  (the earliest epoch on ties; None where there is no such evaluation)."""
  best = max(history, key=lambda r: r['test_accuracy'], default=None)
  validated = [r for r in history if 'validation_accuracy' in r]
  selected = max(validated, key=lambda r: r['validation_accuracy'], default=None)
  epoch = lambda record: record['step'] / steps_per_epoch if record else None
  return {
      'best_test_top1': best['test_accuracy'] if best else None,
      'best_test_top1_epoch': epoch(best),
      'val_selected_test_top1': selected['test_accuracy'] if selected else None,
      'val_selected_epoch': epoch(selected),
  }


def _summary(config, spec, model, state: TrainState, eval_results: Dict[str, float],
             history: List[Dict[str, float]], steps_per_epoch: int,
             throughput: Optional[float], wall_seconds: float) -> Dict[str, Any]:
  """The figures of a finished run; `history` holds its evaluations (`_eval_history`)."""
  counts = budget.trace(model, spec.image_shape).to_dict()  # the run's model: its ticket solved
  summary = {
      'config_model': config.model.name,
      'dataset': spec.name,
      'steps': int(state.step),
      'epochs': int(state.step) / steps_per_epoch,
      **eval_results,
      'test_top1': eval_results.get('test_accuracy'),
      **_best_of(history, steps_per_epoch),
      'kept_params': counts['kept_params'],
      'dense_params': counts['dense_params'],
      'kept_fraction': counts['kept_fraction'],
      'macs': counts['macs'],
      'dense_macs': counts['dense_macs'],
      'images_per_second': throughput,
      'wall_time_s': wall_seconds,
      'devices': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
      'jax_version': jax.__version__,
      'finished_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
  if spec.name == 'imagenet2012':
    summary['test_top5'] = eval_results.get('test_top5_accuracy')
  return summary
