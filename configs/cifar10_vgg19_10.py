"""CIFAR-10, VGG-19, 10% winning ticket (supplementary 1.1).

g = [1, 2, 4, 16], p = [1, 2, 2, 2] on the layers with [64, 128, 256, 512] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 10.01% of the conv + Dense weights and 19.75% of the MACs
(`python -m ssc_jax.budget`), against the stated 10% ticket; with
--config.model.taps=full (all 9 taps) 13.93% and 32.00%.
--config.model.ticket=0.10 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.cifar`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar10_vgg19_10.py --workdir=/tmp/cifar10_vgg19_10
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar10', 'vgg19')
  config.model.g = (1, 2, 4, 16)
  config.model.p = (1, 2, 2, 2)
  config.model.taps = 'cross'
  return config
