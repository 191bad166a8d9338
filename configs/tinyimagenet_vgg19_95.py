"""Tiny-ImageNet, VGG-19, 95% pruning (supplementary 1.3).

g = [1, 1, 3, 35], p = [1, 2, 4, 35] on the layers with [64, 128, 256, 512] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 4.98% of the conv + Dense weights and 21.18% of the MACs
(`python -m ssc_jax.budget`), against the stated 5% ticket; with
--config.model.taps=full (all 9 taps) 8.19% and 37.18%.
--config.model.ticket=0.05 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_vgg19_95.py --workdir=/tmp/tinyimagenet_vgg19_95
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('vgg19')
  config.model.g = (1, 1, 3, 35)
  config.model.p = (1, 2, 4, 35)
  config.model.taps = 'cross'
  return config
