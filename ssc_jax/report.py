"""Tables and plots of finished runs: `python -m ssc_jax.report RUN_DIR... --out=results`.

RUN_DIR is a run's workdir (summary.json, metrics.jsonl, and row.json where
`ssc_jax.reproduce` filed it) or a folder searched for such workdirs, e.g.
`results/runs`. Writes to --out:

- README.md: one table per recipe, one row per run: config, dataset, epochs,
  final and best test top-1, validation top-1, the paper's accuracy (where
  the supplementary prints one), the gap to the dense run of the same
  network, dataset and recipe, kept weight and MAC fractions, images/s, wall
  time, card, date; the command of each run below its table. The rows
  `reproduce` plans for each recipe that have no run are listed as not run.
- results.json: the same rows as data (accuracies as fractions).
- accuracy_vs_kept.png: test top-1 against the kept fraction, one panel per
  recipe, one line per network, dataset and variant, dense as a reference
  line, the paper's points at its stated tickets.
- curves.png: train, validation and test accuracy against epoch for each run
  of the recipe with the most runs; curves_<recipe>.png for each other one.
"""

import ast
import collections
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from matplotlib.figure import Figure

from ssc_jax import config_lib
from ssc_jax import reproduce

DATASET_NAMES = {'cifar10': 'CIFAR-10', 'cifar100': 'CIFAR-100', 'tiny_imagenet': 'Tiny-ImageNet',
                 'imagenet2012': 'ImageNet', 'digits': 'digits (scikit-learn)'}
NETWORK_NAMES = {'resnet32': 'ResNet-32', 'vgg19': 'VGG-19', 'resnet50': 'ResNet-50'}
RECIPE_ORDER = ('short', 'paper')
_PAPER_LINE = re.compile(r'Paper test accuracy:\s*(?:([0-9.]+)%|(.*?)\.?\s*$)', re.MULTILINE)


# --- reading runs ------------------------------------------------------------
@dataclasses.dataclass
class Metrics:
  """A run's metrics.jsonl: train and eval records (last per step), and its hparams."""
  train: List[Dict[str, float]]
  evals: List[Dict[str, float]]
  hparams: Dict[str, str]

  def steps_per_epoch(self) -> Optional[float]:
    for record in self.evals:
      if record.get('epoch'):
        return record['step'] / record['epoch']
    return None


def read_metrics(path: pathlib.Path) -> Metrics:
  """Parses metrics.jsonl; after a resume a step can repeat: the last record of each kind wins."""
  train: Dict[int, dict] = {}
  evals: Dict[int, dict] = {}
  hparams: Dict[str, str] = {}
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except ValueError:  # empty, or cut short by a kill (the run resumed after it)
        continue
      if 'hparams' in record:
        hparams = record['hparams']
      elif any(k.startswith('train_') for k in record):
        train[record['step']] = record
      elif any(k.startswith(('test_', 'validation_')) for k in record):
        evals[record['step']] = record
  return Metrics([train[s] for s in sorted(train)], [evals[s] for s in sorted(evals)], hparams)


def find_runs(paths: Sequence[str]) -> List[pathlib.Path]:
  """Each path that holds a summary.json, or the run dirs below it; a path that does not exist
  is an error naming it; one that holds no run is reported on stderr."""
  runs: List[pathlib.Path] = []
  for name in paths:
    path = pathlib.Path(name)
    if not path.exists():
      raise ValueError(f'run dir {name!r} does not exist')
    found = ([path] if (path / 'summary.json').is_file() else
             sorted(p.parent for p in path.rglob('summary.json')
                    if not any(part.startswith('.') for part in p.relative_to(path).parts)))
    if not found:
      print(f'report: {name}: no summary.json (unfinished or not a run); left out', file=sys.stderr)
    for run in found:
      if run.resolve() not in [r.resolve() for r in runs]:
        runs.append(run)
  return runs


def _literal(text: Optional[str]) -> Any:
  if text is None:
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def recipe_text(epochs: Optional[float], boundaries: Sequence[float], decay: float = 0.1) -> str:
  """'30 epochs, lr x0.1 at epochs 12/18/24'."""
  if epochs is None:
    return 'recipe unknown'
  drops = '/'.join(reproduce.format_number(b) for b in boundaries)
  text = f'{reproduce.format_number(epochs)} epochs'
  return text + (f', lr x{decay:g} at epochs {drops}' if drops else '')


def dataset_name(dataset: str, data_source: Optional[str]) -> str:
  name = DATASET_NAMES.get(dataset, dataset)
  if data_source == 'folder':
    name += ' (JPEG copy)' if dataset == 'cifar10' else ' (image folder)'
  return name


def network_name(model: str, width: Any) -> str:
  name = NETWORK_NAMES.get(model, model)
  return f'{name} ({width}x wide)' if width not in (None, 1, '1') and model == 'resnet32' else name


def paper_accuracy(config_path: pathlib.Path) -> Tuple[Optional[float], str]:
  """(accuracy as a fraction, note) from the config docstring's 'Paper test accuracy:' line."""
  doc = config_lib.load_config_module(config_path).__doc__ or ''
  match = _PAPER_LINE.search(doc)
  if not match:
    return None, '—'
  if match.group(1):
    return float(match.group(1)) / 100, ''
  return None, match.group(2).strip() or 'not given'


def _paper(config_path: Optional[pathlib.Path], row_overrides) -> Tuple[Optional[float], str]:
  """The paper's accuracy for a row: none for a variant (row overrides) or an unknown config."""
  if row_overrides:
    return None, '— (variant)'
  if config_path is None or not config_path.is_file():
    return None, '—'
  return paper_accuracy(config_path)


def paper_ticket(config_stem: str) -> Optional[float]:
  """The weight fraction a row's name states: CIFAR/ImageNet rows are named by the ticket
  (`_10`: 10%), Tiny-ImageNet rows by the pruning rate (`_90`: 10%), ablations are 10% tickets."""
  if 'ablation' in config_stem:
    return 0.10
  match = re.search(r'_(\d+)$', config_stem)
  if not match:
    return None
  percent = float(match.group(1))
  return (100 - percent) / 100 if config_stem.startswith('tinyimagenet') else percent / 100


def _date(summary: dict, info: dict, summary_path: pathlib.Path) -> str:
  stamp = info.get('finished_utc') or summary.get('finished_utc')
  if stamp:
    return str(stamp)[:10]
  mtime = datetime.datetime.fromtimestamp(summary_path.stat().st_mtime, datetime.timezone.utc)
  return mtime.strftime('%Y-%m-%d')


def _best_test(summary: dict, metrics: Metrics) -> Tuple[Optional[float], Optional[float]]:
  if summary.get('best_test_top1') is not None:
    return summary['best_test_top1'], summary.get('best_test_top1_epoch')
  scored = [r for r in metrics.evals if r.get('test_accuracy') is not None]
  if not scored:
    return None, None
  best = max(scored, key=lambda r: r['test_accuracy'])
  return best['test_accuracy'], best.get('epoch')


def load_run(run_dir: pathlib.Path, out: pathlib.Path) -> Dict[str, Any]:
  """One table row from a run dir."""
  summary = json.loads((run_dir / 'summary.json').read_text())
  info = json.loads((run_dir / 'row.json').read_text()) if (run_dir / 'row.json').is_file() else {}
  metrics = read_metrics(run_dir / 'metrics.jsonl')
  hp = metrics.hparams
  epochs = _literal(hp.get('num_epochs')) or info.get('epochs') or summary.get('epochs')
  boundaries = _literal(hp.get('lr_boundaries_epochs')) or ()
  text = recipe_text(epochs, boundaries, _literal(hp.get('lr_decay_factor')) or 0.1)
  config = info.get('config')
  paper, paper_note = _paper(reproduce.REPO / config if config else None,
                             info.get('row_overrides'))
  stem = pathlib.Path(config).stem if config else None
  spe = metrics.steps_per_epoch()
  best, best_epoch = _best_test(summary, metrics)
  dense_macs = summary.get('dense_macs')
  dataset = summary.get('dataset', hp.get('dataset'))
  model = summary.get('config_model', hp.get('model.name'))
  return {
      'row': info.get('row', run_dir.name), 'status': 'run', 'reason': '',
      'recipe': info.get('recipe', text), 'recipe_text': text,
      'config': config, 'dataset': dataset,
      'dataset_name': dataset_name(dataset, hp.get('data_source')),
      'network': f'{model}/{hp.get("model.width", "1")}',
      'network_name': network_name(model, _literal(hp.get('model.width'))),
      'variant': ', '.join(info.get('row_overrides', [])),
      'dense': ((stem or run_dir.name).endswith('_dense') or
                summary.get('kept_fraction', 0) >= 1 - 1e-9),
      'epochs': epochs, 'lr_boundaries_epochs': list(boundaries), 'steps': summary.get('steps'),
      'epochs_trained': (metrics.evals[-1].get('epoch') if metrics.evals else None) or
                        (summary.get('steps') / spe if spe and summary.get('steps') else None),
      'test_top1': summary.get('test_top1'), 'best_test_top1': best,
      'best_test_top1_epoch': best_epoch,
      'validation_top1': summary.get('validation_accuracy'),
      'val_selected_test_top1': summary.get('val_selected_test_top1'),
      'paper_top1': paper, 'paper_note': paper_note,
      'paper_ticket': paper_ticket(stem) if stem and paper is not None else None,
      'kept_fraction': summary.get('kept_fraction'), 'kept_params': summary.get('kept_params'),
      'mac_fraction': summary['macs'] / dense_macs if dense_macs and summary.get('macs') else None,
      'images_per_second': summary.get('images_per_second'),
      'wall_time_s': summary.get('wall_time_s'), 'card': summary.get('devices') or info.get('card'),
      'jax_version': summary.get('jax_version') or info.get('jax_version'),
      'date': _date(summary, info, run_dir / 'summary.json'),
      'command': info.get('command'), 'reproduce': info.get('reproduce'),
      'run_dir': os.path.relpath(run_dir.resolve(), out.resolve()),
      'curves': _curves(metrics, spe),
  }


def _curves(metrics: Metrics, steps_per_epoch: Optional[float]) -> Dict[str, List[List[float]]]:
  """{'train' | 'validation' | 'test': [[epoch (or step), accuracy], ...]}."""
  x = (lambda r: r['step'] / steps_per_epoch) if steps_per_epoch else (lambda r: r['step'])
  curves = {'train': [[x(r), r['train_accuracy']] for r in metrics.train if 'train_accuracy' in r]}
  for split in ('validation', 'test'):
    curves[split] = [[x(r), r[f'{split}_accuracy']] for r in metrics.evals
                     if f'{split}_accuracy' in r]
  curves['x'] = 'epoch' if steps_per_epoch else 'step'
  return curves


def planned_row(spec: str, recipe: str, reason: str) -> Dict[str, Any]:
  """The table row of a planned row that has no run."""
  row = reproduce.parse_row(spec)
  config = config_lib.load_config_module(row.config_path).get_config()
  epochs, boundaries, _ = reproduce.recipe_schedule(config, recipe)
  paper, note = _paper(row.config_path, row.overrides)
  return {
      'row': spec, 'status': 'not run', 'reason': reason, 'recipe': recipe,
      'recipe_text': recipe_text(epochs, boundaries, config.lr_decay_factor),
      'config': f'configs/{row.config}.py', 'dataset': config.dataset,
      'dataset_name': dataset_name(config.dataset, 'folder'),
      'network': f'{config.model.name}/{config.model.width}',
      'network_name': network_name(config.model.name, config.model.width),
      'variant': ', '.join(f'{k}={v}' for k, v in row.overrides),
      'dense': row.config.endswith('_dense'), 'epochs': epochs,
      'lr_boundaries_epochs': list(boundaries),
      'paper_top1': paper, 'paper_note': note,
      'paper_ticket': paper_ticket(row.config) if paper is not None else None,
      'reproduce': f'python -m ssc_jax.reproduce --rows={spec} --recipe={recipe} --out=DIR',
  }


def add_gaps(records: List[Dict[str, Any]]) -> None:
  """Sets 'gap_to_dense' (top-1 minus the dense run's, same network, dataset and recipe) and
  'dense_row'; the dense reference is the group's dense run without row overrides, if any."""
  groups = collections.defaultdict(list)
  for record in records:
    if record['status'] == 'run':
      groups[(record['recipe'], record['dataset'], record['network'])].append(record)
  for members in groups.values():
    dense = sorted((r for r in members if r['dense']), key=lambda r: bool(r['variant']))
    for record in members:
      record['dense_row'] = dense[0]['row'] if dense else None
      if dense and record is not dense[0] and record['test_top1'] is not None:
        record['gap_to_dense'] = record['test_top1'] - dense[0]['test_top1']


def collect(run_dirs: Sequence[pathlib.Path], out: pathlib.Path,
            not_run_reason: str) -> Dict[str, List[Dict[str, Any]]]:
  """{recipe: rows}: the runs, then each recipe's planned rows without a run, in table order."""
  runs = [load_run(d, out) for d in run_dirs]
  add_gaps(runs)
  tables: Dict[str, List[Dict[str, Any]]] = collections.defaultdict(list)
  for recipe, specs in reproduce.PLANNED_ROWS.items():
    for spec in specs:
      matching = [r for r in runs if r['recipe'] == recipe and r['row'] == spec]
      tables[recipe] += matching or [planned_row(spec, recipe, not_run_reason)]
  for record in runs:
    if not any(record is r for rows in tables.values() for r in rows):
      tables[record['recipe']].append(record)
  order = [r for r in RECIPE_ORDER if r in tables] + sorted(set(tables) - set(RECIPE_ORDER))
  return {recipe: _table_order(tables[recipe]) for recipe in order}


def _table_order(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Planned rows keep their order; other runs follow by dataset, network, variant, dense
  first, then kept fraction descending."""
  planned = [r for r in rows if r['row'] in reproduce.PLANNED_ROWS.get(r['recipe'], ())]
  others = sorted((r for r in rows if not any(r is p for p in planned)),
                  key=lambda r: (r['dataset'], r['network'], r['variant'], not r['dense'],
                                 -(r.get('kept_fraction') or 0), r['row']))
  return planned + others


# --- the table ---------------------------------------------------------------
def _recipe_title(recipe: str, rows: List[Dict[str, Any]]) -> str:
  """'short: 30 epochs, lr x0.1 at epochs 12/18/24' (a run's own recipe is its schedule)."""
  text = rows[0]['recipe_text']
  return recipe if recipe == text else f'{recipe}: {text}'


def _pct(x: Optional[float], digits: int = 2) -> str:
  return '—' if x is None else f'{100 * x:.{digits}f}%'


def _cell(record: Dict[str, Any], key: str) -> str:
  """One table cell of `record`."""
  value = record.get(key)
  if key == 'row':
    return f'[{value}]({record["run_dir"]}/)' if record.get('run_dir') else value
  if key == 'test_top1' and record['status'] != 'run':
    return f'not run: {record["reason"]}'
  if key in ('test_top1', 'validation_top1', 'kept_fraction', 'mac_fraction'):
    return _pct(value)
  if key == 'best_test_top1':
    epoch = record.get('best_test_top1_epoch')
    return _pct(value) + (f' (ep. {epoch:.3g})' if value is not None and epoch is not None else '')
  if key == 'paper_top1':
    return _pct(value, 1) if value is not None else (record.get('paper_note') or '—')
  if key == 'gap_to_dense':
    if record['status'] != 'run':
      return '—'
    if record.get('dense_row') == record['row']:
      return 'dense'
    return '—' if value is None else f'{100 * value:+.2f} pp'
  if key == 'epochs':
    trained = record.get('epochs_trained')
    text = '—' if value is None else f'{value:g}'
    return text + (f' (ran {trained:.3g})' if trained is not None and value is not None
                   and abs(trained - value) > 1e-6 else '')
  if key == 'images_per_second':
    return '—' if value is None else f'{value:,.0f}'
  if key == 'wall_time_s':
    return '—' if value is None else f'{value / 60:.1f} min'
  return '—' if value in (None, '') else str(value)


COLUMNS = (('row', 'row'), ('network_name', 'network'), ('dataset_name', 'dataset'),
           ('epochs', 'epochs'), ('test_top1', 'test top-1 (final)'),
           ('best_test_top1', 'test top-1 (best)'), ('validation_top1', 'validation top-1'),
           ('paper_top1', 'paper'), ('gap_to_dense', 'gap to dense'),
           ('kept_fraction', 'kept weights'), ('mac_fraction', 'MACs'),
           ('images_per_second', 'images/s'), ('wall_time_s', 'wall time'), ('card', 'card'),
           ('date', 'date'))


def markdown(tables: Dict[str, List[Dict[str, Any]]], figures: Sequence[Tuple[str, str]],
             command: str) -> str:
  """results/README.md."""
  lines = [
      '# Results', '',
      f'Written by `{command}` from the run directories listed in each row; '
      'rows without a run are the rows `python -m ssc_jax.reproduce` plans for each recipe.', '',
      'CIFAR-10 here is the lossy JPEG copy of CIFAR-10 (quality 75), so absolute accuracies run '
      'below published ones: compare SSC with dense on it (the gap column: percentage points '
      'against the dense run of the same network, dataset and recipe), not our numbers with the '
      "paper's. The paper's accuracies are its 250-epoch figures on the original CIFAR-10. Kept "
      'weights and MACs are fractions of the dense network under this project\'s SSC definition '
      "(`python -m ssc_jax.budget`); the paper names rows by their stated ticket.", '',
  ]
  for recipe, rows in tables.items():
    lines += [f'## {_recipe_title(recipe, rows)}', '',
              '| ' + ' | '.join(h for _, h in COLUMNS) + ' |',
              '|' + '|'.join('---:' if k not in ('row', 'network_name', 'dataset_name', 'card')
                             else '---' for k, _ in COLUMNS) + '|']
    for record in rows:
      cells = [_cell(record, key) for key, _ in COLUMNS]
      lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
    lines += ['', 'Commands:', '']
    for record in rows:
      command_text = record.get('command') if record['status'] == 'run' else record.get('reproduce')
      if command_text:
        lines.append(f'- `{record["row"]}`: `{command_text}`')
      elif record['status'] == 'run':
        lines.append(f'- `{record["row"]}`: not recorded (not filed by ssc_jax.reproduce)')
    lines.append('')
  if not figures:
    lines += ['No run yet, so no plots.', '']
  for path, caption in figures:
    lines += [f'![{caption}]({path})', '', f'*{caption}*', '']
  return '\n'.join(lines)


# --- the plots ---------------------------------------------------------------
def _runs(rows):
  return [r for r in rows if r['status'] == 'run']


def _plotted(rows):
  """The runs a plot can place: those with a test top-1 and a kept fraction."""
  return [r for r in _runs(rows) if r['test_top1'] is not None and r['kept_fraction']]


def plot_accuracy_vs_kept(tables: Dict[str, List[Dict[str, Any]]], path: pathlib.Path) -> None:
  """Test top-1 against kept fraction: a panel per recipe with runs, a line per network,
  dataset and variant, dense as a dotted reference line, the paper's points as crosses."""
  recipes = [recipe for recipe, rows in tables.items() if _plotted(rows)]
  fig = Figure(figsize=(7 * len(recipes), 7.5), layout='constrained')
  axes = fig.subplots(1, len(recipes), squeeze=False)[0]
  for ax, recipe in zip(axes, recipes):
    rows = tables[recipe]
    runs = _plotted(rows)
    networks = sorted({(r['dataset'], r['network']) for r in runs})
    colors = {n: f'C{i % 10}' for i, n in enumerate(networks)}
    groups = collections.defaultdict(list)
    for r in runs:
      groups[(r['dataset'], r['network'], r['variant'])].append(r)
    kept = [r['kept_fraction'] for r in runs]
    datasets = sorted({r['dataset_name'] for r in runs})

    def name(record):  # the network, and the dataset where the panel has several
      return ', '.join([record['network_name']] + [record['dataset_name']] * (len(datasets) > 1))

    for (dataset, network, variant), members in sorted(groups.items()):
      color = colors[(dataset, network)]
      sparse = sorted((r for r in members if not r['dense']), key=lambda r: r['kept_fraction'])
      if sparse:
        ax.plot([r['kept_fraction'] for r in sparse], [100 * r['test_top1'] for r in sparse],
                'o-' if not variant else 's--', color=color,
                label=', '.join(['SSC ' + name(members[0])] + [variant] * bool(variant)))
      for r in members:
        if r['dense'] and not variant:
          ax.axhline(100 * r['test_top1'], color=color, linestyle=':', linewidth=1.2)
          ax.plot([r['kept_fraction']], [100 * r['test_top1']], '*', color=color, markersize=11,
                  label=f'dense {name(r)}: {100 * r["test_top1"]:.2f}%')
    for (dataset, network) in networks:
      paper = [r for rows_ in tables.values() for r in rows_ if r['dataset'] == dataset and
               r['network'] == network and r.get('paper_ticket') and not r.get('variant')]
      points = sorted({(r['paper_ticket'], r['paper_top1']) for r in paper})
      if points:
        kept += [x for x, _ in points]
        ax.plot(*zip(*[(x, 100 * y) for x, y in points]), 'x', color=colors[(dataset, network)],
                markersize=9, markeredgewidth=2,
                label=f'paper {paper[0]["network_name"]}: stated ticket, 250 epochs, '
                      'original CIFAR')
    ax.set_xscale('log')
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0) if min(kept) * 0.7 <= t <= 1.3]
    ax.set_xticks(ticks, [f'{100 * t:g}%' for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(min(kept) * 0.7, 1.3)
    ax.set_xlabel('kept fraction of conv + Dense weights (log scale)')
    ax.set_ylabel('test top-1 (%)')
    ax.set_title(f'Test top-1 against weights kept, {", ".join(datasets)}\n'
                 f'recipe {_recipe_title(recipe, rows)}')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.12))
  fig.savefig(path, dpi=120)


def plot_curves(recipe: str, rows: List[Dict[str, Any]], path: pathlib.Path) -> None:
  """One panel per run: train (dashed), validation (dotted) and test (solid) accuracy."""
  runs = _runs(rows)
  columns = min(4, len(runs))
  lines = math.ceil(len(runs) / columns)
  fig = Figure(figsize=(4.2 * columns, 3.2 * lines + 0.8), layout='constrained')
  axes = fig.subplots(lines, columns, squeeze=False, sharey=True)
  styles = {'train': ('C0', '--', 'train (mean over each log interval)'),
            'validation': ('C2', ':', 'validation'), 'test': ('C3', '-', 'test')}
  for ax, r in zip(axes.flat, runs):
    for split, (color, style, label) in styles.items():
      points = r['curves'][split]
      if points:
        xs, ys = zip(*points)
        ax.plot(xs, [100 * y for y in ys], style, color=color, label=label,
                marker='.' if split != 'train' and len(points) <= 40 else None)
    last = max((x for split in styles for x, _ in r['curves'][split]), default=0)
    if r['curves']['x'] == 'epoch':
      drops = [b for b in r.get('lr_boundaries_epochs') or () if b <= last]
      for i, boundary in enumerate(drops):
        ax.axvline(boundary, color='0.6', linewidth=0.8, label='lr drop' if i == 0 else None)
    kept = f', {_pct(r["kept_fraction"], 1)} kept' if r.get('kept_fraction') else ''
    ax.set_title(f'{r["row"]}{kept}', fontsize=9)
    ax.set_xlabel(r['curves']['x'])
    ax.grid(True, alpha=0.3)
  for ax in axes[:, 0]:
    ax.set_ylabel('accuracy (%)')
  for ax in list(axes.flat)[len(runs):]:
    ax.axis('off')
  handles = {}
  for ax in axes.flat:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, handle)
  fig.legend(list(handles.values()), list(handles.keys()), loc='outside lower center',
             ncols=len(handles))
  datasets = ', '.join(sorted({r['dataset_name'] for r in runs}))
  fig.suptitle(f'Accuracy per epoch, {datasets}, recipe {_recipe_title(recipe, rows)}')
  fig.savefig(path, dpi=110)


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_-]+', '_', text).strip('_')


def write(run_dirs: Sequence[pathlib.Path], out: pathlib.Path, not_run_reason: str,
          command: str) -> Dict[str, Any]:
  """Writes README.md, results.json and the plots to `out`; returns results.json's content."""
  out.mkdir(parents=True, exist_ok=True)
  tables = collect(run_dirs, out, not_run_reason)
  figures = []
  with_runs = {recipe: rows for recipe, rows in tables.items() if _runs(rows)}
  if any(_plotted(rows) for rows in with_runs.values()):
    plot_accuracy_vs_kept(tables, out / 'accuracy_vs_kept.png')
    figures.append(('accuracy_vs_kept.png', 'Test top-1 against the kept fraction of weights.'))
    first = max(with_runs, key=lambda recipe: len(_runs(with_runs[recipe])))
    for recipe, rows in with_runs.items():
      name = 'curves.png' if recipe == first else f'curves_{_slug(recipe)}.png'
      plot_curves(recipe, rows, out / name)
      figures.append((name, f'Accuracy per epoch, recipe {recipe}.'))
  (out / 'README.md').write_text(markdown(tables, figures, command))
  content = {
      'command': command, 'figures': [name for name, _ in figures],
      'tables': {recipe: [{k: v for k, v in r.items() if k != 'curves'} for r in rows]
                 for recipe, rows in tables.items()},
  }
  (out / 'results.json').write_text(json.dumps(content, indent=2) + '\n')
  return content


def _command_text(paths: Sequence[str], out: str) -> str:
  """The report command as README.md shows it: a long list of run dirs is summarised."""
  if len(paths) <= 3:  # none: every planned row not run
    return ' '.join(['python -m ssc_jax.report', *paths, f'--out={out}'])
  return (f'python -m ssc_jax.report RUN_DIR... --out={out}` on {len(paths)} run directories '
          f'under `{os.path.commonpath([os.path.abspath(p) for p in paths])}')


FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so the module imports cleanly)."""
  flags.DEFINE_string('out', 'results', 'Where README.md, results.json and the plots go.')
  flags.DEFINE_string('not_run_reason', 'no GPU run yet',
                      'Why the planned rows without a run have none.')


def main(argv):
  try:
    run_dirs = find_runs(argv[1:])
    out = pathlib.Path(FLAGS.out)
    command = _command_text(argv[1:], FLAGS.out)
    content = write(run_dirs, out, FLAGS.not_run_reason, command)
  except ValueError as e:
    sys.exit(f'report: {e}')
  total = sum(len(rows) for rows in content['tables'].values())
  ran = sum(r['status'] == 'run' for rows in content['tables'].values() for r in rows)
  print(f'report: {ran} runs, {total - ran} rows not run; wrote {out / "README.md"}, '
        f'{out / "results.json"}' + ''.join(f', {out / f}' for f in content['figures']))


if __name__ == '__main__':
  define_flags()
  app.run(main)
