"""Tiny-ImageNet, VGG-19, dense baseline (every g = 1).

Kept: 100% of the conv + Dense weights and of the MACs.
Recipe: the paper's (`config_lib.tiny_imagenet`; docs/configs.md, "Training recipe").

Run:
  python -m ssc_jax.main --config=configs/tinyimagenet_vgg19_dense.py --workdir=/tmp/tinyimagenet_vgg19_dense
"""

from ssc_jax import config_lib


def get_config():
  config = config_lib.tiny_imagenet('vgg19')
  config.lowering = 'grouped'  # plain convolutions (g = 1), as nn.Conv
  return config
