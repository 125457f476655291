"""Video predictors sharing one interface (`AbstractVideoPredictor`)."""

from ._abstract import AbstractVideoPredictor as AbstractVideoPredictor
from ._convlstm_video import CONVLSTM_PRESETS as CONVLSTM_PRESETS
from ._convlstm_video import ConvLSTMConfig as ConvLSTMConfig
from ._convlstm_video import ConvLSTMVideoModel as ConvLSTMVideoModel
from ._convs5_video import CONVS5_PRESETS as CONVS5_PRESETS
from ._convs5_video import ConvS5Config as ConvS5Config
from ._convs5_video import ConvS5VideoModel as ConvS5VideoModel
from ._registry import MODELS as MODELS
from ._registry import ModelConfig as ModelConfig
from ._registry import ModelSpec as ModelSpec
from ._registry import make_model as make_model
from ._registry import model_spec as model_spec
from ._transformer_video import TRANSFORMER_PRESETS as TRANSFORMER_PRESETS
from ._transformer_video import TransformerConfig as TransformerConfig
from ._transformer_video import TransformerVideoModel as TransformerVideoModel
