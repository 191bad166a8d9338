"""The SSC layer as a package.

* `structure`: connectivity, spatial patterns, counts (`ssc_structure`).
* `layout`: compact parameter storage and the static gathers out of it
  (`dense_kernel`).
* `lowerings`: pure whole-layer functions, one per way of computing it.
* `initializers`: SSC initialisers from each weight's real fan-in/fan-out.
* `geometry`: sizes, strides and padding.
* `module`: the Flax module `SSCConv`.
"""

from ssc_jax.ssc.geometry import conv_output_size
from ssc_jax.ssc.initializers import he_normal
from ssc_jax.ssc.initializers import kaiming_normal_fan_out
from ssc_jax.ssc.initializers import lecun_normal
from ssc_jax.ssc.initializers import variance_scaling
from ssc_jax.ssc.layout import Fans
from ssc_jax.ssc.layout import dense_kernel
from ssc_jax.ssc.module import SSCConv
from ssc_jax.ssc.structure import TAPS
from ssc_jax.ssc.structure import SSCStructure
from ssc_jax.ssc.structure import ssc_mask
from ssc_jax.ssc.structure import ssc_structure

__all__ = [
    'Fans', 'SSCConv', 'SSCStructure', 'TAPS', 'conv_output_size', 'dense_kernel',
    'he_normal', 'kaiming_normal_fan_out', 'lecun_normal', 'ssc_mask', 'ssc_structure',
    'variance_scaling',
]
