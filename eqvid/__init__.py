"""eqvid: long-range video modelling in JAX, as typed Equinox modules.

```python
import jax, eqvid
model = eqvid.ConvS5VideoModel(eqvid.ConvS5Config.preset("small"), key=jax.random.key(0))
```

Data pipelines live in `eqvid.data` and training in `eqvid.train`; they are not
imported here so that models and kernels load without the data stack.
"""

from . import kernels as kernels
from ._attention import MultiheadAttention as MultiheadAttention
from ._conv import Conv2d as Conv2d
from ._convlstm import ConvLSTM as ConvLSTM
from ._convlstm import ConvLSTMCell as ConvLSTMCell
from ._convs5 import ConvS5 as ConvS5
from ._convs5 import ResNetOutput as ResNetOutput
from ._hippo import discretize_zoh as discretize_zoh
from ._hippo import hippo_block_init as hippo_block_init
from ._norm import GroupNorm as GroupNorm
from ._norm import LayerNorm as LayerNorm
from ._resnet import ResNetBlock as ResNetBlock
from ._resnet import ResNetDecoder as ResNetDecoder
from ._resnet import ResNetEncoder as ResNetEncoder
from .kernels import AttentionMask as AttentionMask
from .models import CONVS5_PRESETS as CONVS5_PRESETS
from .models import AbstractVideoPredictor as AbstractVideoPredictor
from .models import ConvLSTMConfig as ConvLSTMConfig
from .models import ConvLSTMVideoModel as ConvLSTMVideoModel
from .models import ConvS5Config as ConvS5Config
from .models import ConvS5VideoModel as ConvS5VideoModel
from .models import TransformerConfig as TransformerConfig
from .models import TransformerVideoModel as TransformerVideoModel

__version__ = "0.1.0"
