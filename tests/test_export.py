"""ssc_jax.deploy, python -m ssc_jax.export and ssc_jax.predict: folding, export, checks,
the exported files against jax, bad input. Needs the '[export]' extra (skipped without it)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from PIL import Image

from ssc_jax import config_lib, deploy, ssc_structure, train
from ssc_jax.data import digits
from ssc_jax.ssc import geometry, layout, lowerings

ort = pytest.importorskip('onnxruntime', reason="needs the '[export]' extra")
pytest.importorskip('jax2onnx', reason="needs the '[export]' extra")

ROOT = pathlib.Path(__file__).resolve().parents[1]
HIGHEST = lax.Precision.HIGHEST


def _config(name='default', **overrides):
  config = config_lib.load_config_module(ROOT / 'configs' / f'{name}.py').get_config()
  config.update(overrides)
  return config


def _command(module, *args):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=900)


def _one_error_line(result):
  lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A digits run of a few steps (its checkpoint at step 12)."""
  workdir = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(_config(num_train_steps=12, checkpoint_every_steps=12),
                           str(workdir))
  return workdir


@pytest.fixture(scope='module')
def exported(trained_run, tmp_path_factory):
  out = tmp_path_factory.mktemp('export') / 'model'
  result = _command('ssc_jax.export', f'--workdir={trained_run}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def test_export_writes_checked_files(exported, trained_run):
  metadata = json.loads((exported / 'export.json').read_text())
  assert sorted(p.name for p in exported.iterdir()) == sorted(
      ['model.onnx', 'model.stablehlo', 'export.json', 'check_inputs.npy', 'check_logits.npy'])
  assert metadata['checkpoint_step'] == 12 and metadata['config']['dataset'] == 'digits'
  assert metadata['input'] == {'name': 'image', 'shape': ['batch', 8, 8, 1], 'layout': 'NHWC',
                               'dtype': 'float32', 'batch': 'dynamic'}
  assert metadata['class_names'] == [str(d) for d in range(10)]
  assert metadata['preprocessing']['mean'] == [0.3053] and metadata['lowerings']['onnx'] == 'plain'
  check = metadata['check']
  assert check['inputs'] == 'the first test images of digits' and check['examples'] == 64
  for name in ('onnx', 'stablehlo'):
    assert check[name]['relative_difference'] <= 1e-4 and check[name]['top1_agreement'] == 1.0

  inputs = np.load(exported / 'check_inputs.npy')
  logits = np.load(exported / 'check_logits.npy')
  images, _ = digits.load_split('test')
  np.testing.assert_allclose(inputs, deploy.normalize(images[:64], 'digits'), rtol=1e-6)
  network = deploy.from_workdir(str(trained_run))
  np.testing.assert_allclose(logits, deploy.training_forward(network)(inputs), rtol=1e-5,
                             atol=1e-5)
  session = ort.InferenceSession(str(exported / 'model.onnx'), providers=['CPUExecutionProvider'])
  for batch in (1, 5, 64):  # the batch dimension is dynamic
    onnx_logits = session.run(None, {'image': inputs[:batch]})[0]
    assert np.max(np.abs(onnx_logits - logits[:batch])) <= 1e-4 * np.max(np.abs(logits))


def test_onnx_graph_is_plain_convolutions(exported):
  import onnx  # pylint: disable=g-import-not-at-top
  ops = {node.op_type for node in onnx.load(str(exported / 'model.onnx')).graph.node}
  assert 'Conv' in ops and not ops & {'Einsum', 'BatchNormalization', 'ScatterND', 'MatMul'}


def test_stablehlo_loads_without_ssc_jax(exported):
  script = (
      "import sys; sys.modules['ssc_jax'] = None\n"  # any import of ssc_jax fails
      'import jax, numpy as np\n'
      f"d = {str(exported)!r}\n"
      "exported = jax.export.deserialize(bytearray(open(d + '/model.stablehlo', 'rb').read()))\n"
      "x = np.load(d + '/check_inputs.npy')\n"
      "y = np.asarray(exported.call(x[:3]))\n"
      "ref = np.load(d + '/check_logits.npy')[:3]\n"
      "assert np.max(np.abs(y - ref)) <= 1e-4 * np.max(np.abs(ref)), np.max(np.abs(y - ref))\n"
      "print('ok', y.shape)\n")
  result = subprocess.run([sys.executable, '-c', script], cwd='/', capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0 and 'ok (3, 10)' in result.stdout, result.stderr[-3000:]


def test_batch_norm_folding_is_exact():
  """The folded network (BatchNorm in the weights and biases) computes the training
  network's eval forward, with BatchNorm statistics far from their initial values."""
  for name, shape in (('default', (8, 8, 1)), ('cifar10_resnet32_10', (12, 12, 3))):
    network = deploy.from_config(_config(name))
    rng = np.random.default_rng(0)
    network.variables['batch_stats'] = jax.tree.map(
        lambda a: np.abs(rng.standard_normal(a.shape)).astype(np.float32) + 0.5,
        network.variables['batch_stats'])
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: (a * (1 + 0.3 * rng.standard_normal(a.shape))).astype(np.float32)
        if 'bn' in jax.tree_util.keystr(path) else a, network.variables['params'])
    network.variables['params'] = params
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    reference = deploy.training_forward(network)(x)
    folded = deploy.fold_batch_norm(network)
    assert not any('bn' in jax.tree_util.keystr(path) for path, _ in
                   jax.tree_util.tree_leaves_with_path(folded))
    for lowering in ('dense', 'plain'):
      logits = jax.jit(deploy.inference_forward(network, lowering, folded))(x)
      assert np.max(np.abs(logits - reference)) <= 2e-5 * np.max(np.abs(reference)), (name,
                                                                                       lowering)


# (M, N, K, g, p, taps, strides, padding): every kind of layer 'plain' meets.
LAYERS = [(16, 24, 3, 4, 3, 'cross', 1, 'SAME'), (12, 12, 3, 5, 4, 'x', 2, 1),
          (10, 14, 3, 3, 5, 'alternate', 1, 'VALID'), (12, 9, 3, 3, None, '011/111/110', 1, 1),
          (16, 32, 1, None, 2, 'full', 2, 0), (8, 8, 3, 1, None, 'full', 1, 'SAME'),
          (12, 16, 5, 4, 4, 'cross', 1, 'SAME')]


@pytest.mark.parametrize('case', LAYERS, ids=lambda c: '-'.join(map(str, c[:6])))
def test_every_layer_kind_exports_to_onnx_and_stablehlo(case, tmp_path):
  m, n, k, g, p, taps, strides, padding = case
  lay = layout.layout(ssc_structure(m, n, k, g, p, taps))
  geo = geometry.geometry((9, 9), k, strides, padding)
  rng = np.random.default_rng(1)
  weights = [None if part is None else jnp.asarray(rng.standard_normal(part.shape), jnp.float32)
             for part in (lay.kernel, lay.mix)]
  x = rng.standard_normal((3, 9, 9, m)).astype(np.float32)
  reference = np.asarray(lowerings.run('dense', jnp.asarray(x), *weights, lay, geo, HIGHEST))
  names = ['plain', 'rects+dconv', 'rects+pconv', 'split']
  for name in names:
    forward = lambda x, name=name: lowerings.run(name, x, *weights, lay, geo, HIGHEST)
    deploy.write_onnx(forward, ('batch', 9, 9, m), tmp_path / 'layer.onnx')
    session = ort.InferenceSession(str(tmp_path / 'layer.onnx'),
                                   providers=['CPUExecutionProvider'])
    y = session.run(None, {'image': x})[0]
    assert np.max(np.abs(y - reference)) <= 1e-5 * np.max(np.abs(reference)), name
  for name in lowerings.candidates(lay) + names:  # every lowering, through jax.export
    forward = lambda x, name=name: lowerings.run(name, x, *weights, lay, geo, HIGHEST)
    deploy.write_stablehlo(forward, ('batch', 9, 9, m), tmp_path / 'layer.stablehlo')
    y = deploy.run_stablehlo(tmp_path / 'layer.stablehlo', x)
    assert np.max(np.abs(y - reference)) <= 1e-5 * np.max(np.abs(reference)), name


def test_predict_prints_top5_of_the_onnx_model(exported, tmp_path):
  images, _ = digits.load_split('test')
  paths = []
  for i in (0, 1):
    path = tmp_path / f'digit{i}.png'
    Image.fromarray(images[i, :, :, 0]).save(path)
    paths.append(str(path))
  result = _command('ssc_jax.predict', f'--model={exported}', *paths)
  assert result.returncode == 0, result.stderr[-3000:]
  inputs = np.load(exported / 'check_inputs.npy')[:2]
  session = ort.InferenceSession(str(exported / 'model.onnx'), providers=['CPUExecutionProvider'])
  expected = np.argsort(-session.run(None, {'image': inputs})[0], axis=-1)[:, :5]
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 2
  for line, path, classes in zip(lines, paths, expected):
    assert line.startswith(f'{path}: ')
    ranked = [entry.rsplit(' ', 1) for entry in line.split(': ', 1)[1].split(', ')]
    assert [int(name) for name, _ in ranked] == list(classes)
    probabilities = [float(value) for _, value in ranked]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001


def test_export_of_an_untrained_config(tmp_path):
  result = _command('ssc_jax.export', '--config=configs/cifar10_resnet32_10.py',
                    f'--out={tmp_path / "r32"}', '--format=onnx', '--batch=2')
  assert result.returncode == 0, result.stderr[-3000:]
  metadata = json.loads((tmp_path / 'r32' / 'export.json').read_text())
  assert metadata['checkpoint_step'] is None and metadata['input']['shape'] == [2, 32, 32, 3]
  assert metadata['files'] == {'onnx': 'model.onnx', 'stablehlo': None}
  assert metadata['class_names'][0] == 'airplane'
  assert metadata['check']['inputs'].endswith('(no test images of cifar10 at hand)')


def test_bad_input_is_one_line_and_leaves_nothing(trained_run, tmp_path):
  empty = tmp_path / 'empty_run'
  empty.mkdir()
  line = _one_error_line(_command('ssc_jax.export', f'--workdir={empty}',
                                  f'--out={tmp_path / "a"}'))
  assert 'no checkpoint in' in line and 'train one first' in line
  line = _one_error_line(_command('ssc_jax.export', f'--workdir={trained_run}',
                                  '--config=configs/cifar10_resnet32_10.py',
                                  f'--out={tmp_path / "b"}'))
  assert 'holds a checkpoint of another config' in line and 'dataset' in line
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  line = _one_error_line(_command('ssc_jax.export', f'--workdir={trained_run}',
                                  f'--out={blocker / "out"}'))
  assert f'--out={blocker / "out"}: cannot write in' in line
  line = _one_error_line(_command('ssc_jax.export', f'--workdir={trained_run}',
                                  f'--out={tmp_path / "c"}', '--format=onnx,tflite'))
  assert 'must be a comma-separated subset of onnx,stablehlo' in line
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a_file', 'empty_run']


def test_an_op_jax2onnx_lacks_writes_nothing(trained_run, tmp_path):
  with pytest.raises(deploy.errors.UserError, match='jax2onnx cannot export an op'):
    deploy.export(deploy.from_workdir(str(trained_run)), str(tmp_path / 'out'),
                  onnx_lowering='taps')  # windows stacked and barriers: no ONNX
  assert list(tmp_path.iterdir()) == []


def test_a_failed_check_writes_nothing(trained_run, tmp_path, monkeypatch):
  network = deploy.from_workdir(str(trained_run))
  wrong = deploy.fold_batch_norm(network)
  wrong['conv0']['bias'] = wrong['conv0']['bias'] + 0.5  # a folding error
  monkeypatch.setattr(deploy, 'fold_batch_norm', lambda network: wrong)
  with pytest.raises(deploy.errors.UserError, match=r'the exported ONNX model differs from the '
                                                    r'training network: logits .* apart'):
    deploy.export(network, str(tmp_path / 'out'))
  assert list(tmp_path.iterdir()) == []


def test_folder_images_not_at_the_input_size_check_on_random_inputs(tmp_path):
  """A folder dataset stored at another size (ImageNet's JPEGs) cannot be the check's
  inputs: the export checks on standard normal inputs instead and says so."""
  for split in ('train', 'test'):
    for index, label in enumerate(('a', 'b')):
      (tmp_path / split / label).mkdir(parents=True)
      Image.fromarray(np.full((40, 30, 3), 60 * index, np.uint8)).save(
          tmp_path / split / label / 'x.png')
  config = config_lib.load_config_module('configs/cifar10_resnet32_10.py').get_config()
  network = deploy.from_config(config)
  config = network.config
  with config.unlocked():
    config.data_source, config.folder_dir = 'folder', str(tmp_path)
  inputs, described = deploy.check_inputs(network, 4)
  assert inputs.shape == (4, 32, 32, 3) and 'standard normal' in described
  assert abs(float(inputs.std()) - 1) < 0.2
