"""Export a trained SSC network for inference runtimes, checked against the training network.

    python -m ssc_jax.export --workdir=RUN --out=DIR [--format=onnx,stablehlo] [--batch=N]
    python -m ssc_jax.export --config=configs/X.py --out=DIR ...   # an untrained network

Reads the run's last checkpoint (and the config stored with it), folds every
BatchNorm into the convolution before it, and writes to DIR:
`model.onnx` (every SSC layer as plain ONNX Conv ops on the kept taps),
`model.stablehlo` (`jax.export`; loads with jax alone), `export.json` (config,
checkpoint step, input shape and layout, the preprocessing a caller applies,
class names, the check) and the check's `check_inputs.npy` and
`check_logits.npy`. The batch dimension is dynamic unless --batch fixes it.
The exported models must match the training network's eval forward within
1e-4 (relative) with the same top-1 on every check input, or nothing is
written. Needs the '[export]' extra for ONNX.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from ssc_jax import console
from ssc_jax import deploy
from ssc_jax import errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command-line flags; defined only when this module runs as a program."""
  flags.DEFINE_string('workdir', None, "A run's workdir: its last checkpoint is exported.")
  config_flags.DEFINE_config_file('config', None, 'A config file: exports its untrained network, '
                                  "or (with --workdir) must match the checkpoint's.")
  flags.DEFINE_string('out', None, 'The directory to write (created; an earlier export there '
                      'is replaced).')
  flags.DEFINE_list('format', list(deploy.FORMATS), 'What to write: onnx, stablehlo.')
  flags.DEFINE_integer('batch', None, 'A fixed batch size (default: dynamic).')
  flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.workdir is None and FLAGS.config is None:
    raise errors.UserError('give --workdir=RUN (a trained run) or --config=configs/X.py '
                           '(an untrained network)')
  if FLAGS.batch is not None and FLAGS.batch < 1:
    raise errors.UserError(f'--batch={FLAGS.batch} must be a positive int (or left out: dynamic)')
  config_path = (config_flags.get_config_filename(FLAGS['config'])
                 if FLAGS.config is not None else None)
  network = (deploy.from_workdir(FLAGS.workdir, FLAGS.config) if FLAGS.workdir
             else deploy.from_config(FLAGS.config))
  metadata = deploy.export(network, FLAGS.out, FLAGS.format, FLAGS.batch, config_path)
  check = metadata['check']
  for name in ('onnx', 'stablehlo'):
    if name in check:
      console.show('%s: %s, logits within %.1e (relative) of the training network on %s, '
                   'top-1 agreement %.0f%%.', name, metadata['files'][name],
                   check[name]['relative_difference'], check['inputs'],
                   100 * check[name]['top1_agreement'])
  console.show('Wrote %s (%s, step %s).', FLAGS.out, network.source, network.step)


if __name__ == '__main__':
  define_flags()
  console.run(main)
