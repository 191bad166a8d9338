"""The main job: `python -m ssc_jax.main --config=configs/X.py --workdir=DIR`.

Any config key can be overridden: `--config.batch_size=256`,
`--config.model.g='(1,2,4,16)'`. A run resumes from the latest checkpoint in
its workdir; `--allow_changes=KEY,...` lets it resume with other values of
those keys (see ssc_jax.checkpointing). On a cluster that jax.distributed
does not detect by itself, give --coordinator_address, --num_processes and
--process_id to every process.

The console shows the config's differences from config_lib.base(), the
parameters, a progress line every `log_every_steps`, a line per evaluation and
the summary; the full log is `<workdir>/run.log` (see ssc_jax.console).
"""

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssc_jax import console
from ssc_jax import sharding
from ssc_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, the summary and run.log.')
flags.DEFINE_list('allow_changes', [], 'Config keys whose value may differ from the '
                  "checkpoint's when resuming, e.g. num_epochs,lr_boundaries_epochs.")
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process only).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process only).')
flags.DEFINE_integer('process_id', None, 'Index of this process (multi-process only).')
config_flags.DEFINE_config_file('config', None, 'Path of a config file in configs/.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sharding.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                  FLAGS.process_id)
  workdir = train.prepare_workdir(FLAGS.workdir)
  console.log_to_file(workdir, jax.process_index())
  logging.info('Config %s:\n%s', config_flags.get_config_filename(FLAGS['config']),
               FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_changes)


if __name__ == '__main__':
  console.run(main)
