"""Checkpoints of a run: orbax CheckpointManager, resume, what a resume may change.

Each checkpoint holds the train state and the whole config that wrote it. A run
resumes from the newest readable checkpoint in `<workdir>/checkpoints`,
restored onto the current mesh (any number of devices or processes):

- A checkpoint that cannot be read (truncated or missing files) is moved to
  `<workdir>/checkpoints_unreadable/<step>`, never deleted, and the next older
  one is tried. If none can be read, the run stops (NoReadableCheckpointError).
- A checkpoint whose train state has other arrays (another network, g or p,
  number of classes, optimizer state) is refused (IncompatibleCheckpointError).
- A checkpoint written with other values of EXPERIMENT_KEYS (what a step sees
  or does: data, split, batch size, seed, model, schedule, optimizer) is
  refused (ChangedConfigError), unless the keys are allowed, e.g.
  `--allow_changes=num_epochs,lr_boundaries_epochs` for a new schedule from
  the checkpoint's step on. The next checkpoint then records the new values.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ssc_jax import config_lib
from ssc_jax import console
from ssc_jax import errors

# Config keys that change what a step sees or does ('model': all its keys but dtype).
EXPERIMENT_KEYS = (
    'dataset', 'data_source', 'full_train', 'validation_fraction', 'batch_size', 'seed',
    'model', 'optimizer', 'learning_rate', 'lr_scale_with_batch', 'base_batch_size',
    'momentum', 'nesterov', 'weight_decay', 'weight_decay_on', 'warmup_epochs',
    'num_epochs', 'lr_boundaries_epochs', 'lr_decay_factor', 'label_smoothing')
UNREADABLE_DIR = 'checkpoints_unreadable'
# Exceptions that are bugs of the program, never a damaged checkpoint.
_PROGRAM_ERRORS = (TypeError, AttributeError, NameError, NotImplementedError)
_MISSING = object()


class IncompatibleCheckpointError(errors.UserError, ValueError):
  """The workdir holds a checkpoint whose train state has other arrays."""


class ChangedConfigError(errors.UserError, ValueError):
  """The workdir holds a checkpoint of a run with other values of EXPERIMENT_KEYS."""


class NoReadableCheckpointError(errors.UserError, OSError):
  """The workdir's checkpoints exist but none can be read."""


def compared_keys(config: ml_collections.ConfigDict, saved: Optional[dict] = None) -> List[str]:
  """The dotted keys a resume compares: EXPERIMENT_KEYS, 'model' as its keys."""
  keys = []
  for key in EXPERIMENT_KEYS:
    if key != 'model':
      keys.append(key)
      continue
    names = set(config.model.keys()) | set((saved or {}).get('model') or {})
    keys += [f'model.{name}' for name in sorted(names - {'dtype'})]
  return keys


def check_allowed_changes(names: Sequence[str], config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for a name in `names` that a resume does not compare."""
  known = set(compared_keys(config)) | {'model'}
  wrong = [name for name in names if name not in known]
  if wrong:
    raise errors.ConfigError(
        f'--allow_changes={",".join(names)}: {", ".join(wrong)} is not a key a resume '
        f'compares; these are: {", ".join(sorted(known))}')


def changed_keys(saved: dict, config: ml_collections.ConfigDict) -> List[Tuple[str, Any, Any]]:
  """(key, checkpoint's value, this run's value) for each compared key that differs.

  A key the checkpoint lacks (written before the key existed) counts as having
  `config_lib.base()`'s default.
  """
  current, defaults = _plain(config.to_dict()), _plain(config_lib.base().to_dict())
  saved = _plain(saved)
  changes = []
  for key in compared_keys(config, saved):
    default = _get(defaults, key)
    old, new = _get(saved, key, default), _get(current, key, default)
    if old is not _MISSING and new is not _MISSING and old != new:
      changes.append((key, old, new))
  return changes


def _plain(values: Any) -> Any:
  """Tuples as lists, as the checkpoint's JSON holds them."""
  return json.loads(json.dumps(values, default=str))


def _get(values: dict, dotted: str, default: Any = _MISSING) -> Any:
  for part in dotted.split('.'):
    if not isinstance(values, dict) or part not in values:
      return default
    values = values[part]
  return values


def describe_changes(changes: Sequence[Tuple[str, Any, Any]]) -> str:
  return '; '.join(f'{key}: {old!r} (checkpoint) vs {new!r} (this run)'
                   for key, old, new in changes)


def _array_shapes(tree: Any) -> Dict[str, tuple]:
  """{'params/conv0/kernel': shape, ...} of a train state or of its checkpoint metadata."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shapes[jax.tree_util.keystr(path, simple=True, separator='/')] = tuple(leaf.shape)
  return shapes


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of the error's root cause (orbax wraps TensorStore's)."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).strip().splitlines()
  text = text[0] if text else ''
  text = text if len(text) <= limit else text[:limit] + '...'
  return f'{type(error).__name__}: {text}'


class Checkpointer:
  """Saves and restores the train state of one run."""

  def __init__(self, workdir: epath.Path, config: ml_collections.ConfigDict,
               allow_changes: Sequence[str] = ()):
    self.directory = workdir / 'checkpoints'
    self.unreadable_directory = workdir / UNREADABLE_DIR
    self._config = config
    check_allowed_changes(allow_changes, config)
    self._allow_changes = tuple(allow_changes)
    # Several processes: synchronous saves. An async save's background thread
    # runs orbax's barriers (collective `sync_global_devices` computations)
    # while the training thread launches its own collectives; the processes can
    # then launch them in different orders and deadlock (2 CPU processes with
    # gloo hung in the first evaluation after an async save).
    use_async = config.async_checkpointing and jax.process_count() == 1
    if config.async_checkpointing and not use_async:
      logging.info('%d processes: checkpoints are saved synchronously.', jax.process_count())
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints,
        enable_async_checkpointing=use_async,
        create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'config': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, state: Any) -> Any:
    """The newest readable checkpoint restored like `state` (shapes, shardings), or `state`.

    Unreadable checkpoints are moved aside; refuses a checkpoint that another
    experiment wrote (see the module docstring).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    moved = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        saved_config = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
        saved_shapes = _array_shapes(self._manager.item_metadata(step)['state'].tree)
        ok, error = True, None
      except Exception as e:  # pylint: disable=broad-except
        if isinstance(e, _PROGRAM_ERRORS):
          raise
        ok, error = False, e
      if _all_processes(ok):
        self._check_compatible(step, saved_config, saved_shapes, abstract)
        try:
          restored = self._manager.restore(
              step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))['state']
        except Exception as e:  # pylint: disable=broad-except
          if isinstance(e, _PROGRAM_ERRORS):
            raise
          ok, error = False, e
        if _all_processes(ok):
          console.show('Resumed from %s at step %d.', self.directory, step)
          return restored
      moved.append(self._move_aside(step, error))
    if moved:
      raise NoReadableCheckpointError(
          f'no checkpoint in {self.directory} can be read: moved {", ".join(moved)} aside '
          f'(the errors are in run.log). Nothing was deleted; rerunning starts from step 0.')
    return state

  def _check_compatible(self, step: int, saved_config: dict, saved_shapes: Dict[str, tuple],
                        abstract: Any) -> None:
    """Raises if the checkpoint at `step` has other arrays or (not allowed) other keys."""
    changes = changed_keys(saved_config, self._config)
    shapes = _array_shapes(abstract)
    if saved_shapes != shapes:
      differing = sorted(k for k in set(shapes) | set(saved_shapes)
                         if shapes.get(k) != saved_shapes.get(k))
      example = differing[0]
      raise IncompatibleCheckpointError(
          f'{self.directory} holds a checkpoint (step {step}) whose train state has other '
          f'arrays than this run\'s ({len(differing)} differ, e.g. {example}: '
          f'{saved_shapes.get(example)} vs {shapes.get(example)})'
          + (f'; its config differs in {describe_changes(changes)}' if changes else '')
          + '. Use a new --workdir for this config, or the config that wrote it. '
          'Nothing was overwritten.')
    refused = [c for c in changes if not any(
        c[0] == name or c[0].startswith(name + '.') for name in self._allow_changes)]
    if refused:
      raise ChangedConfigError(
          f'{self.directory} holds a checkpoint (step {step}) of another experiment: '
          f'{describe_changes(refused)}. Use a new --workdir, or the checkpoint\'s values, or '
          f'--allow_changes={",".join(key for key, _, _ in refused)} to continue from step '
          f'{step} with this run\'s values. Nothing was overwritten.')
    if changes:
      console.show('Resuming step %d with changes allowed by --allow_changes: %s', step,
                   describe_changes(changes))

  def _move_aside(self, step: int, error: BaseException) -> str:
    """Renames checkpoint `step` into UNREADABLE_DIR (process 0); returns where it went."""
    target = self.unreadable_directory / str(step)
    suffix = 0
    while target.exists():
      suffix += 1
      target = self.unreadable_directory / f'{step}.{suffix}'
    if jax.process_index() == 0:
      self.unreadable_directory.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'ssc_jax_move_aside_{step}')
    self._manager.reload()
    logging.info('Checkpoint %d could not be read:', step, exc_info=error)
    logging.warning('Checkpoint step %d cannot be read (%s): moved to %s; trying the '
                    'previous one.', step, first_line(error) if error else 'on another process',
                    target)
    return str(target)

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Starts saving `state` at `step` (asynchronously if configured)."""
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      config=ocp.args.JsonSave(self._config.to_dict())),
        force=force)

  def reached_preemption(self, step: int) -> bool:
    """True when the cluster (multi-host) signalled preemption at this step."""
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _all_processes(ok: bool) -> bool:
  """True when `ok` holds on every process (they then take the same branch)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))
