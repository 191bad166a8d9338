"""python -m ssc_jax.report: tables, gap to dense and plots from real runs of the digits config."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
from matplotlib import image

from ssc_jax import config_lib
from ssc_jax import report
from ssc_jax import reproduce
from ssc_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = {'digits_dense': ((1, 1, 1), (None, None, None)),  # every g = 1: the dense network
            'digits_ssc': ((1, 4, 8), (None, 2, 4))}  # configs/default.py's SSC network


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Two real 25-step runs of configs/default.py: (their root, {name: summary})."""
  root = tmp_path_factory.mktemp('runs')
  summaries = {}
  for name, (g, p) in SETTINGS.items():
    config = config_lib.load_config_module(REPO / 'configs' / 'default.py').get_config()
    config.model.g, config.model.p = g, p
    config.num_train_steps, config.log_every_steps = 25, 5
    summaries[name] = train.train_and_evaluate(config, str(root / name))
  return root, summaries


def tables(readme: str) -> dict:
  """{section title: {row name: {column: cell}}} of a README written by report."""
  sections, title, header = {}, None, None
  for line in readme.splitlines():
    if line.startswith('## '):
      title, header = line[3:], None
      sections[title] = {}
    elif line.startswith('| ') and title:
      cells = [c.strip() for c in line.strip('|').split(' | ')]
      if header is None:
        header = cells
      else:
        name = cells[0].split('](')[0].lstrip('[')
        sections[title][name] = dict(zip(header, cells))
  return sections


def assert_png(path: pathlib.Path):
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert path.stat().st_size > 10_000
  height, width, _ = image.imread(path).shape
  assert height > 300 and width > 300


def test_report_of_two_digits_runs(runs, tmp_path):
  root, summaries = runs
  out = tmp_path / 'results'
  result = subprocess.run([sys.executable, '-m', 'ssc_jax.report', str(root / 'digits_dense'),
                           str(root / 'digits_ssc'), f'--out={out}'], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  dense, ssc = summaries['digits_dense'], summaries['digits_ssc']
  assert dense['kept_fraction'] == 1.0 and ssc['kept_fraction'] < 0.3

  sections = tables((out / 'README.md').read_text())
  ours = sections['30 epochs, lr x0.1 at epochs 15/25']
  assert list(ours) == ['digits_dense', 'digits_ssc']
  assert ours['digits_dense']['test top-1 (final)'] == f'{100 * dense["test_top1"]:.2f}%'
  assert ours['digits_dense']['gap to dense'] == 'dense'
  assert ours['digits_ssc']['test top-1 (final)'] == f'{100 * ssc["test_top1"]:.2f}%'
  gap = ssc['test_top1'] - dense['test_top1']
  assert ours['digits_ssc']['gap to dense'] == f'{100 * gap:+.2f} pp'
  assert ours['digits_ssc']['kept weights'] == f'{100 * ssc["kept_fraction"]:.2f}%'
  assert ours['digits_ssc']['MACs'] == f'{100 * ssc["macs"] / ssc["dense_macs"]:.2f}%'
  assert ours['digits_ssc']['validation top-1'] == f'{100 * ssc["validation_accuracy"]:.2f}%'
  assert ours['digits_ssc']['card'] == ssc['devices']
  assert ours['digits_ssc']['epochs'].startswith('30 (ran 1.')  # 25 steps of 21 a epoch

  content = json.loads((out / 'results.json').read_text())
  [row] = [r for r in content['tables']['30 epochs, lr x0.1 at epochs 15/25']
           if r['row'] == 'digits_ssc']
  assert row['gap_to_dense'] == pytest.approx(gap) and row['dense_row'] == 'digits_dense'
  assert row['test_top1'] == ssc['test_top1'] and row['kept_fraction'] == ssc['kept_fraction']
  best = max(json.loads(line)['test_accuracy'] for line in (root / 'digits_ssc' / 'metrics.jsonl')
             .read_text().splitlines() if 'test_accuracy' in line)
  assert row['best_test_top1'] == best

  # The paper's planned rows have no run here: listed as not run, with the paper's accuracy.
  planned = sections['short: 30 epochs, lr x0.1 at epochs 12/18/24']['cifar10_resnet32_10']
  assert planned['test top-1 (final)'] == 'not run: no GPU run yet'
  assert planned['paper'] == '93.3%'
  assert len(sections['paper: 250 epochs, lr x0.1 at epochs 100/150/200']) == 8
  assert content['figures'] == ['accuracy_vs_kept.png', 'curves.png']
  assert_png(out / 'accuracy_vs_kept.png')
  assert_png(out / 'curves.png')
  # One test, not two: under pytest-xdist each worker would train the module's runs again.
  check_filed_runs(runs, tmp_path / 'filed')


def check_filed_runs(runs, tmp_path):
  """Runs filed by reproduce (row.json) take their planned row's place, with the paper's
  accuracy and their command; the gap is to the dense run of the same recipe."""
  root, summaries = runs
  for name, row in (('digits_dense', 'cifar10_resnet32_dense'),
                    ('digits_ssc', 'cifar10_resnet32_10')):
    entry = tmp_path / 'results' / 'runs' / 'short' / row
    shutil.copytree(root / name, entry)
    (entry / 'row.json').write_text(json.dumps({
        'row': row, 'recipe': 'short', 'config': f'configs/{row}.py',
        'command': f'python -m ssc_jax.main --config=configs/{row}.py', 'card': 'ignored',
        'finished_utc': '2026-01-02T03:04:05Z'}))
  out = tmp_path / 'results'
  content = report.write(report.find_runs([str(out / 'runs')]), out, 'no GPU run yet', 'test')
  short = {r['row']: r for r in content['tables']['short']}
  assert short['cifar10_resnet32_10']['status'] == 'run'
  assert short['cifar10_resnet32_10']['paper_top1'] == pytest.approx(0.933)
  assert short['cifar10_resnet32_10']['gap_to_dense'] == pytest.approx(
      summaries['digits_ssc']['test_top1'] - summaries['digits_dense']['test_top1'])
  assert short['cifar10_resnet32_10']['date'] == '2026-01-02'
  assert short['cifar10_resnet32_10']['run_dir'] == 'runs/short/cifar10_resnet32_10'
  assert short['cifar10_resnet32_5']['status'] == 'not run'
  assert list(content['tables']) == ['short', 'paper']  # no other table
  readme = (out / 'README.md').read_text()
  command = 'python -m ssc_jax.main --config=configs/cifar10_resnet32_10.py'
  assert f'- `cifar10_resnet32_10`: `{command}`' in readme
  assert_png(out / 'accuracy_vs_kept.png')
  assert_png(out / 'curves.png')


def test_no_runs_lists_every_planned_row_as_not_run(tmp_path):
  content = report.write([], tmp_path, 'no GPU was at hand', 'test')
  rows = [r for table in content['tables'].values() for r in table]
  assert len(rows) == len(reproduce.PLANNED_ROWS['short']) + len(reproduce.PLANNED_ROWS['paper'])
  assert {(r['status'], r['reason']) for r in rows} == {('not run', 'no GPU was at hand')}
  assert content['figures'] == [] and not list(tmp_path.glob('*.png'))
  assert 'No run yet, so no plots.' in (tmp_path / 'README.md').read_text()


def test_metrics_keep_the_last_record_of_each_step(tmp_path):
  """After a resume a step repeats; train and eval records of one step are kept apart."""
  lines = [{'hparams': {'num_epochs': '30'}},
           {'step': 10, 'train_accuracy': 0.1}, {'step': 20, 'train_accuracy': 0.2},
           {'step': 20, 'test_accuracy': 0.3, 'epoch': 2.0},
           {'step': 20, 'train_accuracy': 0.25}, {'step': 20, 'test_accuracy': 0.35, 'epoch': 2.0},
           {'step': 30, 'train_accuracy': 0.4}]
  path = tmp_path / 'metrics.jsonl'
  path.write_text('\n'.join(json.dumps(line) for line in lines) + '\n')
  metrics = report.read_metrics(path)
  assert [(r['step'], r['train_accuracy']) for r in metrics.train] == [(10, 0.1), (20, 0.25),
                                                                      (30, 0.4)]
  assert [(r['step'], r['test_accuracy']) for r in metrics.evals] == [(20, 0.35)]
  assert metrics.hparams == {'num_epochs': '30'} and metrics.steps_per_epoch() == 10


def test_find_runs(tmp_path, capsys):
  with pytest.raises(ValueError, match="'nowhere' does not exist"):
    report.find_runs(['nowhere'])
  for name in ('a/x', 'b/y', 'b/.y.tmp-1'):
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / 'summary.json').write_text('{}')
  (tmp_path / 'c').mkdir()
  found = report.find_runs([str(tmp_path / 'a' / 'x'), str(tmp_path), str(tmp_path / 'c')])
  assert found == [tmp_path / 'a' / 'x', tmp_path / 'b' / 'y']
  assert 'c: no summary.json' in capsys.readouterr().err


def test_paper_accuracy_of_every_config():
  for path in sorted((REPO / 'configs').glob('*.py')):
    accuracy, note = report.paper_accuracy(path)
    assert (accuracy is None) == bool(note), path.name
    if path.stem == 'cifar10_resnet32_10':
      assert accuracy == pytest.approx(0.933)
    if path.stem == 'cifar100_resnet32_ablation_1':
      assert accuracy == pytest.approx(0.6995)
    if path.stem == 'cifar10_vgg19_10':
      assert note == 'not given in the supplementary'
  assert report.paper_ticket('cifar10_resnet32_5') == pytest.approx(0.05)
  assert report.paper_ticket('tinyimagenet_vgg19_98') == pytest.approx(0.02)
  assert report.paper_ticket('cifar100_resnet32_ablation_4') == pytest.approx(0.10)
  assert report.paper_ticket('cifar10_vgg19_dense') is None
