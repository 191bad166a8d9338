"""Shared configuration: the base every config in `configs/` starts from.

A config file in `configs/` defines `get_config()`, starts from one of the
builders here (`base`, `cifar`, `tiny_imagenet`, `imagenet`) and sets only
what differs for its row; `cifar`, `tiny_imagenet` and `imagenet` start from
`paper()`, the training recipe every paper row shares. Every key a run may
read is declared here, so `--config.some_key=...` on a key that does not
exist fails in ml_collections with the key's name, and `check_config`
rejects values out of range.
"""

import difflib
import importlib.util
import os
import re
import types

import ml_collections

from ssc_jax import optim
from ssc_jax.data import specs
from ssc_jax.ssc import lowerings
from ssc_jax.errors import ConfigError  # a user error: one line on the command line

# Learning-rate recipes of the paper's supplementary (epochs, boundaries).
CIFAR_RECIPE = dict(num_epochs=250, lr_boundaries_epochs=(100, 150, 200))
TINY_IMAGENET_RECIPE = dict(num_epochs=350, lr_boundaries_epochs=(150, 250, 300))
IMAGENET_RECIPE = dict(num_epochs=150, lr_boundaries_epochs=(50, 100))


def load_config_module(path: str | os.PathLike) -> types.ModuleType:
  """The config file at `path` as a module: its `get_config()` and its docstring."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0],
                                                os.fspath(path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base() -> ml_collections.ConfigDict:
  """Every key of a run, with defaults; datasets and networks override."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data.
  config.dataset = 'cifar10'  # cifar10 | cifar100 | tiny_imagenet | imagenet2012 | digits
  config.data_source = 'tfds'  # tfds | folder (<folder_dir>/<split>/<class>/<image>)
  config.data_dir = ''  # TFDS data_dir; '' = TFDS's default (~/tensorflow_datasets)
  config.folder_dir = ''  # root of the image folders when data_source = 'folder'
  config.pipeline = 'tf_data'  # tf_data (host, TensorFlow) | device (device-resident, no TF)
  # True: train on all of train and evaluate on test only (the paper rows);
  # False: hold out the last 10% as validation (the split the (p, g) search uses).
  config.full_train = False
  config.validation_fraction = 0.1
  # False: never read the test split (evaluate validation only; needs full_train=False).
  # The (p, g) search (ssc_jax.search) sets it so that choosing settings never sees test.
  config.eval_test = True
  config.batch_size = 128  # global, over all devices and processes
  config.eval_batch_size = 500  # global
  config.shuffle_buffer_size = 50_000
  config.prefetch_batches = 2

  # Model.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'vgg19'  # vgg19 | resnet32 | resnet50 | digits_ssc
  config.model.width = 1  # ResNet-32 width multiplier (2 in the paper)
  # Per-filter-count SSC settings, one entry per filter count of the network
  # (see ssc_jax.models.filter_counts); None in a g or p entry disables that part.
  config.model.g = ml_collections.FieldReference(None, field_type=tuple)
  config.model.p = ml_collections.FieldReference(None, field_type=tuple)
  # ResNet-50 only: p of the 1x1 convs per filter count [64, ..., 2048].
  config.model.p_1x1 = ml_collections.FieldReference(None, field_type=tuple)
  # If set (0 < ticket <= 1), solve (g, p) to keep this fraction of weights
  # (ssc_jax.budget) and use those instead of g/p/p_1x1.
  config.model.ticket = ml_collections.FieldReference(None, field_type=float)
  config.model.dtype = 'float32'  # compute dtype: float32 | bfloat16; parameters stay float32
  # KxK pattern of the SSC layers that take (g, p): full | cross | x | alternate, or a
  # grid of 0/1 rows joined by '/' ('010/111/010'); see ssc_jax/ssc/structure.py.
  config.model.taps = 'full'
  config.model.init = 'he'  # he | grasp (the paper's, after GraSP); see ssc_jax/models/conv.py
  config.model.zero_init_residual = True  # ResNet-50: each block's last BatchNorm scale starts at 0

  # How SSC layers run (ssc_jax/tuning.py): 'auto' chooses per layer and pass, or one
  # lowering for every layer ('dense', 'split', 'sliced+matmul', ...; ssc_jax/ssc/lowerings.py).
  config.lowering = 'auto'
  config.autotune = True  # 'auto': measure the layer shapes the cache file lacks (False: cost rule)

  # Optimisation (SGD as in the paper).
  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.lr_scale_with_batch = False  # lr * batch_size / base_batch_size
  config.base_batch_size = 128
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 1e-4  # coupled (added to the gradient), see weight_decay_on
  # 'kernels': conv and Dense weights only; 'all': every parameter (BatchNorm
  # scale/bias, biases too), as the paper's PyTorch SGD(weight_decay=...) does.
  config.weight_decay_on = 'kernels'
  config.warmup_epochs = 0.0
  config.num_epochs = 250
  config.lr_boundaries_epochs = (100, 150, 200)
  config.lr_decay_factor = 0.1
  config.label_smoothing = 0.0

  # Loop, logging, checkpoints.
  config.num_train_steps = -1  # > 0 stops early (tests, smoke runs)
  config.log_every_steps = 100
  config.eval_every_epochs = 1
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.async_checkpointing = True
  return config


def paper() -> ml_collections.ConfigDict:
  """`base()` with what every paper row shares: the whole training set, decay on all
  params, GraSP's initialisation."""
  config = base()
  config.full_train = True
  config.weight_decay_on = 'all'
  config.model.init = 'grasp'
  return config


def cifar(dataset: str, network: str) -> ml_collections.ConfigDict:
  """CIFAR-10/100 with VGG-19 or doubled-width ResNet-32, the paper's recipe."""
  config = paper()
  config.dataset = dataset
  config.model.name = network
  config.model.width = 2 if network == 'resnet32' else 1
  config.update(CIFAR_RECIPE)
  return config


def tiny_imagenet(network: str) -> ml_collections.ConfigDict:
  """Tiny-ImageNet (64x64, 200 classes), the paper's recipe."""
  config = paper()
  config.dataset = 'tiny_imagenet'
  config.model.name = network
  config.model.width = 2 if network == 'resnet32' else 1
  config.update(TINY_IMAGENET_RECIPE)
  return config


def imagenet() -> ml_collections.ConfigDict:
  """ImageNet with ResNet-50 v1.5, the paper's recipe."""
  config = paper()
  config.dataset = 'imagenet2012'
  config.model.name = 'resnet50'
  config.model.dtype = 'bfloat16'
  config.model.zero_init_residual = False
  config.batch_size = 256
  config.eval_batch_size = 500
  config.shuffle_buffer_size = 16 * 1024
  config.checkpoint_every_steps = 2000
  config.update(IMAGENET_RECIPE)
  return config


def _unknown_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                  prefix: str = '') -> list:
  """Dotted names of keys in `config` that `reference` does not declare."""
  unknown = []
  for key in config.keys():
    if key not in reference:
      close = difflib.get_close_matches(key, list(reference.keys()), n=1)
      hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ''
      unknown.append(f"'{prefix}{key}'{hint}")
    elif isinstance(config[key], ml_collections.ConfigDict):
      unknown += _unknown_keys(config[key], reference[key], f'{prefix}{key}.')
  return unknown


_CHOICES = {
    'dataset': specs.DATASETS,
    'data_source': ('tfds', 'folder'),
    'pipeline': ('tf_data', 'device'),
    'optimizer': ('sgd',),
    'weight_decay_on': optim.WEIGHT_DECAY_ON,
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming any key `base()` does not declare or any value out of range."""
  unknown = _unknown_keys(config, base())
  if unknown:
    raise ConfigError(f'config: unknown key(s) {", ".join(unknown)}; every key must be one '
                     'that ssc_jax/config_lib.py:base() declares')
  for key, choices in _CHOICES.items():
    if config[key] not in choices:
      raise ConfigError(f'config.{key}={config[key]!r} must be one of {choices}')
  if config.model.dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f"config.model.dtype={config.model.dtype!r} must be 'float32' or 'bfloat16'")
  for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'checkpoint_every_steps',
              'keep_checkpoints', 'eval_every_epochs', 'num_epochs'):
    if not isinstance(config[key], int) or config[key] < 1:
      raise ConfigError(f'config.{key}={config[key]!r} must be a positive int')
  boundaries = list(config.lr_boundaries_epochs)
  if boundaries != sorted(set(boundaries)) or any(b <= 0 for b in boundaries):
    raise ConfigError(f'config.lr_boundaries_epochs={config.lr_boundaries_epochs!r} must be '
                     'positive and strictly increasing')
  if config.warmup_epochs < 0:
    raise ConfigError(f'config.warmup_epochs={config.warmup_epochs!r} must be >= 0')
  if boundaries and config.warmup_epochs > boundaries[0]:
    raise ConfigError(f'config.warmup_epochs={config.warmup_epochs!r} is longer than the first '
                     f'of config.lr_boundaries_epochs={config.lr_boundaries_epochs!r}; the '
                     'warm-up must end by the first learning-rate decay')
  if not 0.0 <= config.validation_fraction < 1.0:
    raise ConfigError(f'config.validation_fraction={config.validation_fraction!r} must be in [0, 1)')
  if not config.eval_test and (config.full_train or not config.validation_fraction):
    raise ConfigError('config.eval_test=False evaluates the validation split only: it needs '
                      'config.full_train=False and config.validation_fraction > 0 (got '
                      f'{config.full_train}, {config.validation_fraction})')
  if config.lowering != 'auto' and not lowerings.is_name(config.lowering):
    raise ConfigError(f"config.lowering={config.lowering!r} must be 'auto' or a lowering: "
                      f'{lowerings.NAMES} (ssc_jax/ssc/lowerings.py)')
  if config.learning_rate <= 0 or config.weight_decay < 0 or not 0 <= config.momentum < 1:
    raise ConfigError('config: learning_rate must be > 0, weight_decay >= 0 and momentum in '
                     f'[0, 1) (got {config.learning_rate}, {config.weight_decay}, {config.momentum})')


def flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
  """{'model.g': ..., 'batch_size': ...}: the config as flat hyperparameters."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def dense_baseline(name: str) -> str:
  """The `_dense` config in configs/ that the seed config `name` is compared with
  (cifar10_resnet32_10 -> cifar10_resnet32_dense, the ablations -> cifar100_resnet32_dense,
  imagenet_r50_* -> imagenet_r50_dense)."""
  if name.startswith('imagenet_r50'):
    return 'imagenet_r50_dense'
  return re.sub(r'_(\d+|ablation_\d+)$', '_dense', name)
