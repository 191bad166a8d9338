"""CIFAR-100, VGG-19, 2% winning ticket (supplementary 1.2).

g = [1, 4, 8, 64], p = [1, 4, 8, 25] on the layers with [64, 128, 256, 512] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 2.52% of the conv + Dense weights and 11.25% of the MACs
(`python -m ssc_jax.budget`), against the stated 2% ticket; with
--config.model.taps=full (all 9 taps) 3.91% and 19.19%.
--config.model.ticket=0.02 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.cifar`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/cifar100_vgg19_2.py --workdir=/tmp/cifar100_vgg19_2
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.cifar('cifar100', 'vgg19')
  config.model.g = (1, 4, 8, 64)
  config.model.p = (1, 4, 8, 25)
  config.model.taps = 'cross'
  return config
