"""ssc_jax: structured sparse convolutions (SSC) in JAX/Flax."""

from ssc_jax import xla_flags

xla_flags.without_ynn_fusions()

# pylint: disable=wrong-import-position
from ssc_jax.ssc import Fans
from ssc_jax.ssc import SSCConv
from ssc_jax.ssc import SSCStructure
from ssc_jax.ssc import TAPS
from ssc_jax.ssc import conv_output_size
from ssc_jax.ssc import dense_kernel
from ssc_jax.ssc import he_normal
from ssc_jax.ssc import kaiming_normal_fan_out
from ssc_jax.ssc import lecun_normal
from ssc_jax.ssc import ssc_mask
from ssc_jax.ssc import ssc_structure
from ssc_jax.ssc import variance_scaling

__all__ = [
    'Fans', 'SSCConv', 'SSCStructure', 'TAPS', 'conv_output_size', 'dense_kernel',
    'he_normal', 'kaiming_normal_fan_out', 'lecun_normal', 'ssc_mask', 'ssc_structure',
    'variance_scaling',
]
