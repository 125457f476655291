"""Video predictors sharing one interface (`AbstractVideoPredictor`)."""

from ._abstract import AbstractVideoPredictor as AbstractVideoPredictor
from ._convs5_video import CONVS5_PRESETS as CONVS5_PRESETS
from ._convs5_video import ConvS5Config as ConvS5Config
from ._convs5_video import ConvS5VideoModel as ConvS5VideoModel
