"""The embedded default: a small SSC network on scikit-learn's 8x8 digits.

Runs offline on a fresh machine (the data ships inside scikit-learn) with the
device-resident pipeline, so it needs no TensorFlow:

    python -m ssc_jax.main --config=configs/default.py --workdir=/tmp/ssc_default

Expected: test accuracy >= 0.97 after 30 epochs (630 steps); measured 0.9966
in 15 s on a 2-core CPU machine (2026-11-25). tests/test_train.py checks it.
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.base()
  config.dataset = 'digits'
  config.pipeline = 'device'
  config.model.name = 'digits_ssc'
  config.model.g = (1, 4, 8)  # filter counts (16, 32, 64)
  config.model.p = (None, 2, 4)
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_epochs = 30
  config.lr_boundaries_epochs = (15, 25)
  config.learning_rate = 0.05
  config.log_every_steps = 20
  config.checkpoint_every_steps = 200
  # The SSC layers here are tiny: the autotuner's cache file or its cost rule picks
  # their lowerings (measuring them would take longer than this whole run).
  config.autotune = False
  return config
