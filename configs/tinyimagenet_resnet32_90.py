"""Tiny-ImageNet, ResNet-32 (doubled width), 90% pruning (supplementary 1.3).

g = [2, 4, 16], p = [2, 4, 8] on the layers with [32, 64, 128] filters.
3x3 kernels on the 'cross' pattern (5 of 9 taps, SSC_SPEC.md).
Kept: 9.98% of the conv + Dense weights and 17.91% of the MACs
(`python -m ssc_jax.budget`), against the stated 10% ticket; with
--config.model.taps=full (all 9 taps) 15.21% and 30.04%.
--config.model.ticket=0.10 trains at exactly the stated fraction with solved (g, p).
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").
Paper test accuracy: not given in the supplementary.

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_resnet32_90.py --workdir=/tmp/tinyimagenet_resnet32_90
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('resnet32')
  config.model.g = (2, 4, 16)
  config.model.p = (2, 4, 8)
  config.model.taps = 'cross'
  return config
