"""Deploying an SSC network: BatchNorm folded in, exported to ONNX and StableHLO, checked.

* `from_workdir` reads a run's last checkpoint (and the config stored with
  it) without writing anything; `from_config` builds an untrained network.
* `fold_batch_norm` folds every BatchNorm into the convolution before it:
  the compact SSC kernel and mix (and a dense kernel) scaled per output
  channel, the shift as the convolution's bias. The folded network is the
  same linen network built with `inference=<lowering>` (`ssc_jax.models`).
* `export` writes the folded network as `model.onnx` (jax2onnx; its SSC
  layers as plain ONNX Conv ops on the kept taps only: the 'plain'
  lowering) and `model.stablehlo` (`jax.export`: loads with jax alone),
  checks both against the training network's eval forward, and writes
  `export.json` with what a caller needs. A failed check, an op a runtime
  lacks or an unwritable directory leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from ssc_jax import budget
from ssc_jax import checkpointing
from ssc_jax import errors
from ssc_jax import models
from ssc_jax import optim
from ssc_jax import ssc
from ssc_jax import train
from ssc_jax.data import digits
from ssc_jax.data import errors as data_errors
from ssc_jax.data import folder
from ssc_jax.data import specs
from ssc_jax.models import conv as conv_lib
from ssc_jax.ssc import autotune
from ssc_jax.ssc import layout as layout_lib

FORMATS = ('onnx', 'stablehlo')
ONNX_FILE, STABLEHLO_FILE, METADATA_FILE = 'model.onnx', 'model.stablehlo', 'export.json'
CHECK_INPUTS_FILE, CHECK_LOGITS_FILE = 'check_inputs.npy', 'check_logits.npy'
ONNX_LOWERING = 'plain'  # plain convolutions on the kept taps: what ONNX Runtime runs well
STABLEHLO_LOWERING = 'split'  # the kept taps as dense convolutions: what XLA:CPU runs well
TOLERANCE = 1e-4  # the largest relative difference of logits an export may have
CHECK_EXAMPLES = 64
EVAL_RESIZE = 256  # ImageNet: the shorter side, before the central crop (as in training)
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
                   'ship', 'truck')


@dataclasses.dataclass
class Network:
  """A network to deploy: its config, float32 model config and variables.

  Attributes:
    config: the run's config.
    model_config: `config.model` with its ticket solved and float32 compute.
    num_classes, image_shape: the dataset's.
    variables: {'params', 'batch_stats'} of the training network.
    step: the checkpoint's step (None: untrained).
    source: where the variables come from (a checkpoint path, or the config).
  """
  config: ml_collections.ConfigDict
  model_config: ml_collections.ConfigDict
  num_classes: int
  image_shape: Tuple[int, int, int]
  variables: Dict[str, Any]
  step: Optional[int]
  source: str


def _model_config(config) -> Tuple[ml_collections.ConfigDict, int, Tuple[int, int, int]]:
  info = specs.info(config.dataset)
  model_config = budget.resolve_ticket(config.model, info.num_classes, info.input_shape[-1])
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  model_config.dtype = 'float32'  # inference on CPU runtimes: float32 whatever trained
  return model_config, info.num_classes, info.input_shape


def _abstract_state(config, model_config, num_classes, image_shape):
  """The shapes of the main job's TrainState for `config` (what a checkpoint holds)."""
  model = models.create_model(model_config, num_classes)
  tx = optim.create_optimizer(config, 1)
  with autotune.installed(autotune.Plan(force='dense')):
    return jax.eval_shape(functools.partial(train.initial_state, model, tx, image_shape),
                          jax.random.key(0))


def from_config(config) -> Network:
  """The untrained network of `config` (initialised from `config.seed`)."""
  model_config, num_classes, image_shape = _model_config(config)
  model = models.create_model(model_config, num_classes)
  with autotune.installed(autotune.Plan(force='dense')):
    variables = jax.jit(lambda: model.init(jax.random.key(config.seed),
                                           jnp.zeros((1,) + image_shape), train=False))()
  return Network(config, model_config, num_classes, image_shape, dict(variables), None,
                 'an untrained network (--config)')


def from_workdir(workdir: str, config=None) -> Network:
  """The network of the last checkpoint in `workdir`, read-only; `config` (optional) must
  describe the same network and data as the config the checkpoint holds."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = epath.Path(workdir) / 'checkpoints'
  steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if (
      directory.is_dir()) else []
  if not steps:
    raise errors.UserError(
        f'--workdir={workdir}: no checkpoint in {directory}; train one first (python -m '
        'ssc_jax.main --config=... --workdir=...) or export an untrained network with --config')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'config': ocp.JsonCheckpointHandler()})
  step = steps[-1]
  try:
    return _restore(manager, directory, step, config)
  finally:
    manager.close()


def _restore(manager, directory, step: int, config) -> Network:
  """The network of checkpoint `step`; `config` (optional) must describe the same network
  and data as the config it holds."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  try:
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  except Exception as error:  # pylint: disable=broad-except
    raise errors.UserError(f'{directory}/{step}: the checkpoint cannot be read '
                           f'({checkpointing.first_line(error)})') from None
  saved_config = ml_collections.ConfigDict(saved['config'])
  if config is not None:
    changes = [c for c in checkpointing.changed_keys(saved['config'], config)
               if c[0] == 'dataset' or c[0].startswith('model.')]
    if changes:
      raise errors.UserError(
          f'{directory}/{step} holds a checkpoint of another config: '
          f'{checkpointing.describe_changes(changes)} (checkpoint vs --config). Export it with '
          'its own config (leave out --config) or point --workdir at the run of this config')
  config = saved_config
  model_config, num_classes, image_shape = _model_config(config)
  abstract = _abstract_state(config, model_config, num_classes, image_shape)
  try:
    state = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
  except Exception as error:  # pylint: disable=broad-except
    raise errors.UserError(f'{directory}/{step}: the checkpoint does not hold the network of '
                           f'its config ({checkpointing.first_line(error)})') from None
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  return Network(config, model_config, num_classes, image_shape,
                 jax.tree.map(np.asarray, variables), step, f'{directory}/{step}')


def layer_structures(model, image_shape) -> Dict[Tuple[str, ...], ssc.SSCStructure]:
  """{module path: structure} of every SSC layer of `model`, from an abstract trace."""
  found = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, ssc.SSCConv) and context.method_name == '__call__':
      found[context.module.path] = context.module.structure(args[0].shape[-1])
    return next_fun(*args, **kwargs)

  with flax.linen.intercept_methods(record), autotune.installed(autotune.Plan(force='dense')):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + image_shape),
                                      train=False))
  return found


def _per_output(values: np.ndarray, entry_out: np.ndarray, shape) -> np.ndarray:
  """values[entry_out] in a parameter's shape: each stored weight's output channel's value."""
  return values[entry_out].reshape(shape)


def fold_batch_norm(network: Network) -> Dict[str, Any]:
  """The params of the folded inference network: each BatchNorm (named as its
  convolution with 'conv' read 'bn') folded into that convolution's weights and bias."""
  model = models.create_model(network.model_config, network.num_classes)
  structures = layer_structures(model, network.image_shape)
  params = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray,
                                                        network.variables['params']))
  stats = flax.traverse_util.flatten_dict(jax.tree.map(
      np.asarray, network.variables.get('batch_stats', {})))
  folded = {path: value for path, value in params.items()
            if path[:-1] not in structures and not any('bn' in part for part in path[:-1])}
  for path, structure in structures.items():
    bn = path[:-1] + (path[-1].replace('conv', 'bn'),)
    scale = params[bn + ('scale',)].astype(np.float64) / np.sqrt(
        stats[bn + ('var',)].astype(np.float64) + conv_lib.BN_EPSILON)
    shift = params[bn + ('bias',)] - stats[bn + ('mean',)] * scale
    lay = layout_lib.layout(structure)
    for name, part in (('kernel', lay.kernel), ('mix', lay.mix)):
      if part is not None:
        value = params[path + (name,)]
        folded[path + (name,)] = (value * _per_output(scale, part.entry_out, value.shape)
                                  ).astype(np.float32)
    folded[path + ('bias',)] = shift.astype(np.float32)
  return flax.traverse_util.unflatten_dict(folded)


def inference_forward(network: Network, lowering: str,
                      params: Optional[Dict[str, Any]] = None) -> Callable[[jax.Array], jax.Array]:
  """x -> float32 logits of the folded network (params: `fold_batch_norm`'s), its SSC
  layers run by `lowering`; the weights are constants of the function."""
  model = models.create_model(network.model_config, network.num_classes, inference=lowering)
  params = fold_batch_norm(network) if params is None else params
  # jax arrays, not numpy ones: a trace then holds them as constants (numpy arrays would
  # be staged as device_put), so the lowerings derive their kernels at trace time.
  params = jax.tree.map(jnp.asarray, params)
  return lambda x: model.apply({'params': params}, x, train=False)


def training_forward(network: Network, lowering: Optional[str] = 'dense'
                     ) -> Callable[[jax.Array], np.ndarray]:
  """x -> float32 logits of the training network's eval forward (BatchNorm on its averages),
  jitted, its SSC layers run by `lowering` (None: as the eval step runs them, from the
  autotuner's cache file or rule)."""
  model = models.create_model(network.model_config, network.num_classes)
  variables = network.variables
  forward = jax.jit(lambda x: model.apply(variables, x, train=False))
  plan = autotune.Plan(force=lowering) if lowering else None

  def logits(x):
    with autotune.inference():  # traced at the first call
      if plan is None:
        return np.asarray(forward(x))
      with autotune.installed(plan):
        return np.asarray(forward(x))
  return logits


def preprocessing(dataset: str) -> Dict[str, Any]:
  """What a caller does to an image before the model: export.json's 'preprocessing'."""
  info = specs.info(dataset)
  height, width, channels = info.input_shape
  steps = {'color': 'grayscale' if channels == 1 else 'RGB'}
  if info.augment == 'inception':
    steps.update(resize_shorter_side=EVAL_RESIZE, resize_method='bilinear, antialiased',
                 center_crop=[height, width])
  else:
    steps.update(resize=[height, width], resize_method='bilinear (images of another size)')
  steps.update(scale=1 / 255, mean=list(info.mean), std=list(info.std),
               formula='(pixel / 255 - mean) / std, per channel')
  return steps


def class_names(config) -> Optional[Sequence[str]]:
  """The dataset's class names, where known without its files."""
  if config.data_source == 'folder' and config.folder_dir:
    return folder.class_names(config.folder_dir)
  if config.dataset == 'digits':
    return tuple(str(d) for d in range(10))
  if config.dataset == 'cifar10':
    return CIFAR10_CLASSES
  return None


def normalize(images: np.ndarray, dataset: str) -> np.ndarray:
  """uint8 (N, H, W, C) images, already at the input size, as the model's float32 input."""
  info = specs.info(dataset)
  return ((images.astype(np.float32) / 255.0 - np.asarray(info.mean, np.float32))
          / np.asarray(info.std, np.float32))


def check_inputs(network: Network, count: int = CHECK_EXAMPLES) -> Tuple[np.ndarray, str]:
  """(inputs, what they are): test images of the network's dataset where they are at hand
  (digits; a folder source), else standard normal inputs of the input shape."""
  config = network.config
  images = None
  if config.dataset == 'digits':
    images, described = digits.load_split('test')[0][:count], 'the first test images of digits'
  elif config.data_source == 'folder' and os.path.isdir(os.path.join(config.folder_dir or '',
                                                                     'test')):
    files = folder.list_split(config.folder_dir, 'test')
    try:  # every count-th test image, across the classes
      images = folder.load_images(files.paths[::max(1, len(files) // count)][:count],
                                  network.image_shape)
      described = f'{len(images)} test images of {config.folder_dir}'
    except data_errors.UnreadableImageError:  # not stored at the input size (ImageNet)
      images = None
  if images is not None and images.shape[1:] == network.image_shape:
    return normalize(images, config.dataset), described
  rng = np.random.default_rng(0)
  return (rng.standard_normal((count,) + network.image_shape).astype(np.float32),
          f'{count} standard normal inputs (no test images of {config.dataset} at hand)')


def compare(logits: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
  """Max abs and relative difference of logits, and top-1 agreement, against `reference`."""
  difference = float(np.max(np.abs(logits - reference)))
  return {'max_abs_difference': difference,
          'relative_difference': difference / float(np.max(np.abs(reference))),
          'top1_agreement': float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1)))}


def _checked(format_name: str, result: Dict[str, float]) -> Dict[str, float]:
  if result['relative_difference'] > TOLERANCE or result['top1_agreement'] < 1.0:
    raise errors.UserError(
        f'the exported {format_name} model differs from the training network: logits '
        f"{result['relative_difference']:.2e} apart relative to their largest "
        f'(tolerance {TOLERANCE:g}), top-1 agreement {100 * result["top1_agreement"]:.1f}%; '
        'nothing was written')
  return result


def onnx_session(path: pathlib.Path, threads: Optional[int] = None):
  """An ONNX Runtime CPU session of the model at `path` (idle threads do not spin)."""
  import onnxruntime  # pylint: disable=g-import-not-at-top
  options = onnxruntime.SessionOptions()
  options.add_session_config_entry('session.intra_op.allow_spinning', '0')
  if threads:
    options.intra_op_num_threads = threads
  return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def write_onnx(forward: Callable, shape: Tuple[Any, ...], path: pathlib.Path) -> None:
  """`forward` as an ONNX model at `path` (jax2onnx); an op it cannot export is a UserError."""
  try:
    import flax.nnx  # pylint: disable=g-import-not-at-top,unused-import  (jax2onnx patches it)
    import jax2onnx  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError("ONNX export needs the '[export]' extra: pip install -e "
                           "'.[export]'") from None
  try:
    model = jax2onnx.to_onnx(forward, [shape], model_name='ssc_jax', input_names=['image'],
                             output_names=['logits'])
  except Exception as error:  # pylint: disable=broad-except  (any failure of the converter)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ''
    raise errors.UserError(f'ONNX export: jax2onnx cannot export an op of this network '
                           f'({type(error).__name__}: {first[:300]}); nothing was written'
                           ) from None
  path.write_bytes(model.SerializeToString())


def write_stablehlo(forward: Callable, shape: Tuple[Any, ...], path: pathlib.Path) -> None:
  """`forward` serialized with `jax.export` at `path` (symbolic batch where `shape[0]` is a
  name)."""
  if isinstance(shape[0], str):
    shape = jax.export.symbolic_shape(','.join([shape[0]] + [str(d) for d in shape[1:]]))
  exported = jax.export.export(jax.jit(forward))(jax.ShapeDtypeStruct(shape, jnp.float32))
  path.write_bytes(exported.serialize())


def run_stablehlo(path: pathlib.Path, inputs: np.ndarray) -> np.ndarray:
  return np.asarray(jax.export.deserialize(bytearray(path.read_bytes())).call(inputs))


def _writable_parent(out: pathlib.Path) -> None:
  """Raises a UserError unless `out` can be created (or replaced) as a directory."""
  parent = out.parent
  try:
    parent.mkdir(parents=True, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=parent, prefix='.ssc_jax_probe_')
    probe.close()
  except OSError as error:
    raise errors.UserError(f'--out={out}: cannot write in {parent} ({error})') from None
  if out.exists() and (not out.is_dir() or (any(out.iterdir()) and
                                            not (out / METADATA_FILE).exists())):
    raise errors.UserError(f'--out={out} exists and is not an export directory (no '
                           f'{METADATA_FILE}); choose a new or empty directory')


def export(network: Network, out: str, formats: Sequence[str] = FORMATS,
           batch: Optional[int] = None, config_path: Optional[str] = None,
           onnx_lowering: str = ONNX_LOWERING) -> Dict[str, Any]:
  """Writes the folded network to `out` in `formats`, checked; returns export.json's content.
  `onnx_lowering` runs the SSC layers of model.onnx (an ablation; the default is the one
  that ONNX Runtime runs fastest).

  Everything is written into a temporary directory beside `out`, which
  replaces `out` only once every file is written and every check passed.
  """
  unknown = [f for f in formats if f not in FORMATS]
  if unknown or not formats:
    raise errors.UserError(f'--format={",".join(formats)} must be a comma-separated subset of '
                           f'{",".join(FORMATS)}')
  out = pathlib.Path(out).resolve()
  _writable_parent(out)
  shape = (batch or 'batch',) + tuple(network.image_shape)
  large = np.prod(network.image_shape) > 64 * 64 * 3  # ImageNet: fewer, larger examples
  inputs, described = check_inputs(network, batch or (CHECK_EXAMPLES // 8 if large
                                                      else CHECK_EXAMPLES))
  reference = training_forward(network)(inputs)
  params = fold_batch_norm(network)
  checks: Dict[str, Any] = {}
  staging = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.partial-'))
  umask = os.umask(0)
  os.umask(umask)
  staging.chmod(0o777 & ~umask)  # mkdtemp's is private; the export is an ordinary directory
  try:
    if 'onnx' in formats:
      write_onnx(inference_forward(network, onnx_lowering, params), shape, staging / ONNX_FILE)
      logits = onnx_session(staging / ONNX_FILE).run(None, {'image': inputs})[0]
      checks['onnx'] = _checked('ONNX', compare(logits, reference))
    if 'stablehlo' in formats:
      write_stablehlo(inference_forward(network, STABLEHLO_LOWERING, params), shape,
                      staging / STABLEHLO_FILE)
      checks['stablehlo'] = _checked('StableHLO', compare(
          run_stablehlo(staging / STABLEHLO_FILE, inputs), reference))
    np.save(staging / CHECK_INPUTS_FILE, inputs)
    np.save(staging / CHECK_LOGITS_FILE, reference)
    metadata = _metadata(network, formats, batch, config_path, described, len(inputs), checks,
                         onnx_lowering)
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + '\n')
    _replace(staging, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return metadata


def _replace(staging: pathlib.Path, out: pathlib.Path) -> None:
  """Moves `staging` to `out`; an earlier export there is removed only after the move, and
  put back where the move fails."""
  old = None
  if out.exists():
    old = out.with_name(f'.{out.name}.old-{os.getpid()}')
    out.rename(old)
  try:
    staging.rename(out)
  except OSError:
    if old is not None:
      old.rename(out)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _versions() -> Dict[str, str]:
  versions = {'jax': jax.__version__}
  for package in ('jax2onnx', 'onnx', 'onnxruntime'):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:  # onnx and the runtime: [export] only
      pass
  return versions


def _metadata(network: Network, formats, batch, config_path, described, count,
              checks, onnx_lowering: str) -> Dict[str, Any]:
  height, width, channels = network.image_shape
  return {
      'config': network.config.to_dict(),
      'config_path': config_path,
      'source': network.source,
      'checkpoint_step': network.step,
      'files': {'onnx': ONNX_FILE if 'onnx' in formats else None,
                'stablehlo': STABLEHLO_FILE if 'stablehlo' in formats else None},
      'lowerings': {'onnx': onnx_lowering, 'stablehlo': STABLEHLO_LOWERING},
      'input': {'name': 'image', 'shape': [batch or 'batch', height, width, channels],
                'layout': 'NHWC', 'dtype': 'float32', 'batch': batch or 'dynamic'},
      'output': {'name': 'logits', 'shape': [batch or 'batch', network.num_classes],
                 'meaning': 'unnormalised log-probabilities; softmax gives probabilities'},
      'preprocessing': preprocessing(network.config.dataset),
      'class_names': list(class_names(network.config) or []) or None,
      'check': {'inputs': described, 'examples': count, 'tolerance': TOLERANCE,
                'reference': 'the training network (BatchNorm on its running averages), '
                             'float32, jax',
                'files': [CHECK_INPUTS_FILE, CHECK_LOGITS_FILE], **checks},
      'versions': _versions(),
      'exported_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }
