"""Tiny-ImageNet, ResNet-32 (doubled width), 85% pruning (supplementary 1.3).

g = [1, 2, 11], p = [1, 4, 10] on the layers with [32, 64, 128] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 14.63% of the conv + Dense weights and 31.18% of the MACs
(`python -m ssc_jax.budget`), against the stated 15% ticket; with
--config.model.taps=full (all 9 taps) 23.96% and 54.95%.
--config.model.ticket=0.15 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_resnet32_85.py --workdir=/tmp/tinyimagenet_resnet32_85
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('resnet32')
  config.model.g = (1, 2, 11)
  config.model.p = (1, 4, 10)
  config.model.taps = 'cross'
  return config
