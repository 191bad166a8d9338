"""Tiny-ImageNet, ResNet-32 (doubled width), dense baseline (every g = 1).

Kept: 100% of the conv + Dense weights and of the MACs.
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_resnet32_dense.py --workdir=/tmp/tinyimagenet_resnet32_dense
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('resnet32')
  config.lowering = 'grouped'  # plain convolutions (g = 1), as nn.Conv
  return config
