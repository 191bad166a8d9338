"""The main job: `python -m ssc_jax.main --config=configs/X.py --workdir=DIR`.

Any config key can be overridden: `--config.batch_size=256`,
`--config.model.g='(1,2,4,16)'`. A run resumes from the latest checkpoint in
its workdir. On a cluster that jax.distributed does not detect by itself,
give --coordinator_address, --num_processes and --process_id to every process.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ssc_jax import sharding
from ssc_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and the summary.')
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
  logging.info('Config:\n%s', FLAGS.config)
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
