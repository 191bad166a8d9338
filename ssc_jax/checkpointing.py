"""Checkpoints of a run: orbax CheckpointManager, resume, compatibility.

Each checkpoint holds the train state and the config that wrote it. A run
resumes from the latest checkpoint in `<workdir>/checkpoints`, restored onto
the current mesh (any number of devices or processes), and refuses one that
an incompatible config wrote rather than overwrite it.
"""

from typing import Any, Optional

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# Config keys that fix the structure of the train state (model.dtype does not).
STATE_DEFINING_KEYS = ('dataset', 'model', 'optimizer', 'nesterov')


class IncompatibleCheckpointError(ValueError):
  """The workdir holds a checkpoint of a run with a different state structure."""


def _state_defining(values: dict) -> dict:
  """The parts of a config (as a dict) that fix the train state's structure."""
  defining = {key: values.get(key) for key in STATE_DEFINING_KEYS}
  defining['model'] = {k: v for k, v in (defining['model'] or {}).items() if k != 'dtype'}
  defining['momentum_state'] = bool(values.get('momentum'))  # momentum 0 keeps no trace
  return defining


def _differences(saved: dict, current: dict, prefix: str = '') -> list:
  """'key: saved -> current' for every leaf that differs."""
  lines = []
  for key in sorted(set(saved) | set(current)):
    a, b = (list(v) if isinstance(v, tuple) else v for v in (saved.get(key), current.get(key)))
    if isinstance(a, dict) and isinstance(b, dict):
      lines += _differences(a, b, f'{prefix}{key}.')
    elif a != b:
      lines.append(f'{prefix}{key}: {a!r} (checkpoint) vs {b!r} (this run)')
  return lines


class Checkpointer:
  """Saves and restores the train state of one run."""

  def __init__(self, workdir: epath.Path, config: ml_collections.ConfigDict):
    self.directory = workdir / 'checkpoints'
    self._config = config
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
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'config'))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, state: Any) -> Any:
    """The latest checkpoint restored like `state` (shapes, shardings), or `state`."""
    step = self._manager.latest_step()
    if step is None:
      return state
    saved = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    differences = _differences(_state_defining(saved['config']),
                               _state_defining(self._config.to_dict()))
    if differences:
      raise IncompatibleCheckpointError(
          f'{self.directory} holds a checkpoint (step {step}) written by an incompatible '
          'config: ' + '; '.join(differences) + '. Use a new --workdir for this config, '
          'or the config that wrote it. Nothing was overwritten.')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    logging.info('Resumed from %s at step %d', self.directory, step)
    return restored['state']

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
