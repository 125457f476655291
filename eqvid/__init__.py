"""eqvid: long-range video modelling in JAX, as typed Equinox modules.

```python
import jax, eqvid
model = eqvid.ConvS5VideoModel(eqvid.ConvS5Config.preset("small"), key=jax.random.key(0))
# or, for any registered family, with its state: eqvid.make_model(config, key=key)
```

Data pipelines live in `eqvid.data` and training in `eqvid.train`; they are not
imported here so that models and kernels load without the data stack.

Every function and module in `eqvid` (kernels included) checks its arguments
against its type annotations, array shapes and dtypes included, when called
(jaxtyping + beartype; under `jit` this happens once per trace, so compiled code
pays nothing). A mismatch raises `jaxtyping.TypeCheckError` naming the argument.
Set the environment variable `EQVID_TYPECHECK=0` before importing eqvid to turn
the checks off (for example in a data-loading hot loop you have already tested).
"""

import os as _os

if _os.environ.get("EQVID_TYPECHECK", "1") != "0":
    from jaxtyping import install_import_hook as _install_import_hook

    # Installed for the whole process, so that `eqvid.train`, `eqvid.data`, … are
    # checked too when they are imported later.
    _install_import_hook(["eqvid"], "beartype.beartype")


from . import kernels as kernels
from . import nn as nn
from .kernels import AttentionMask as AttentionMask
from .models import CONVS5_PRESETS as CONVS5_PRESETS
from .models import AbstractLatentVideoModel as AbstractLatentVideoModel
from .models import AbstractModel as AbstractModel
from .models import AbstractRecurrentVideoModel as AbstractRecurrentVideoModel
from .models import AbstractVideoModel as AbstractVideoModel
from .models import AbstractVideoTokenizer as AbstractVideoTokenizer
from .models import ConvLSTMConfig as ConvLSTMConfig
from .models import ConvLSTMVideoModel as ConvLSTMVideoModel
from .models import ConvS5Config as ConvS5Config
from .models import ConvS5VideoModel as ConvS5VideoModel
from .models import GroupSettings as GroupSettings
from .models import ModelSpec as ModelSpec
from .models import TransformerConfig as TransformerConfig
from .models import TransformerVideoModel as TransformerVideoModel
from .models import VideoBatch as VideoBatch
from .models import make_model as make_model
from .models import register_model as register_model
from .models import rollout as rollout
from .nn import Conv2d as Conv2d
from .nn import ConvLSTM as ConvLSTM
from .nn import ConvLSTMCell as ConvLSTMCell
from .nn import ConvS5 as ConvS5
from .nn import GroupNorm as GroupNorm
from .nn import LayerNorm as LayerNorm
from .nn import MultiheadAttention as MultiheadAttention
from .nn import ResNetBlock as ResNetBlock
from .nn import ResNetDecoder as ResNetDecoder
from .nn import ResNetEncoder as ResNetEncoder
from .nn import ResNetOutput as ResNetOutput
from .nn import discretize_zoh as discretize_zoh
from .nn import hippo_block_init as hippo_block_init
from .nn import role as role

__version__ = "0.1.0"
