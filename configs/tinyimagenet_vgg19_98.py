"""Tiny-ImageNet, VGG-19, 98% pruning (supplementary 1.3).

g = [1, 4, 8, 64], p = [1, 4, 12, 40] on the layers with [64, 128, 256, 512] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 2.58% of the conv + Dense weights and 11.04% of the MACs
(`python -m ssc_jax.budget`), against the stated 2% ticket; with
--config.model.taps=full (all 9 taps) 3.96% and 18.98%.
--config.model.ticket=0.02 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_vgg19_98.py --workdir=/tmp/tinyimagenet_vgg19_98
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('vgg19')
  config.model.g = (1, 4, 8, 64)
  config.model.p = (1, 4, 12, 40)
  config.model.taps = 'cross'
  return config
