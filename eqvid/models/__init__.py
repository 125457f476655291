"""Model families on one contract (`AbstractModel`: a batch loss with named terms, state,
parameter roles) in two kinds, `AbstractVideoModel` (generates video) and
`AbstractVideoTokenizer` (videos to codes and back), each family registered by name.

To add a family: write its config dataclass and its final model class (implementing
one of the kinds) in its own file, end the file with `register_model(ModelSpec(...))`,
and import the file below. Training (`eqvid.train`) and evaluation (`eqvid.evaluate`)
then build it by name, with no edit to either.
"""

from ._abstract import AbstractInfillingVideoModel as AbstractInfillingVideoModel
from ._abstract import AbstractModel as AbstractModel
from ._abstract import AbstractObjectCentricVideoModel as AbstractObjectCentricVideoModel
from ._abstract import AbstractUnconditionalVideoModel as AbstractUnconditionalVideoModel
from ._abstract import AbstractVideoModel as AbstractVideoModel
from ._abstract import GroupSettings as GroupSettings
from ._abstract import LossTerms as LossTerms
from ._abstract import VideoBatch as VideoBatch
from ._abstract import mean_over_videos as mean_over_videos
from ._abstract import per_video_keys as per_video_keys
from ._latent import AbstractLatentVideoModel as AbstractLatentVideoModel
from ._latent import check_latent_batch as check_latent_batch
from ._model_files import load_model as load_model
from ._model_files import save_model as save_model
from ._recurrent import AbstractRecurrentVideoModel as AbstractRecurrentVideoModel
from ._recurrent import RecurrentConfig as RecurrentConfig
from ._registry import MODELS as MODELS
from ._registry import ModelSpec as ModelSpec
from ._registry import make_model as make_model
from ._registry import model_spec as model_spec
from ._registry import register_model as register_model
from ._rollout import rollout as rollout
from ._rollout import sample_unconditional as sample_unconditional
from ._tokenizer import AbstractVideoTokenizer as AbstractVideoTokenizer
from ._tokenizer import decode_codes as decode_codes
from ._tokenizer import encode_videos as encode_videos
from ._tokenizer import reconstruct_videos as reconstruct_videos
from ._tokenizer_files import load_tokenizer as load_tokenizer
from ._tokenizer_files import save_tokenizer as save_tokenizer

# The families (each registers itself on import).
from ._convs5_video import CONVS5_PRESETS as CONVS5_PRESETS  # isort: skip
from ._convs5_video import ConvS5Config as ConvS5Config  # isort: skip
from ._convs5_video import ConvS5VideoModel as ConvS5VideoModel  # isort: skip
from ._convlstm_video import CONVLSTM_PRESETS as CONVLSTM_PRESETS  # isort: skip
from ._convlstm_video import ConvLSTMConfig as ConvLSTMConfig  # isort: skip
from ._convlstm_video import ConvLSTMVideoModel as ConvLSTMVideoModel  # isort: skip
from ._transformer_video import TRANSFORMER_PRESETS as TRANSFORMER_PRESETS  # isort: skip
from ._transformer_video import TransformerConfig as TransformerConfig  # isort: skip
from ._transformer_video import TransformerVideoModel as TransformerVideoModel  # isort: skip
from ._vqgan2d import VQGAN2D as VQGAN2D  # isort: skip
from ._vqgan2d import VQGAN2D_PRESETS as VQGAN2D_PRESETS  # isort: skip
from ._vqgan2d import VQGAN2DConfig as VQGAN2DConfig  # isort: skip
from ._vqgan3d import VQGAN3D as VQGAN3D  # isort: skip
from ._vqgan3d import VQGAN3D_PRESETS as VQGAN3D_PRESETS  # isort: skip
from ._vqgan3d import VQGAN3DConfig as VQGAN3DConfig  # isort: skip
from ._vqgan3d import TATSImageDiscriminator as TATSImageDiscriminator  # isort: skip
from ._teco import TECO as TECO  # isort: skip
from ._teco import TECO_PRESETS as TECO_PRESETS  # isort: skip
from ._teco import TECOConfig as TECOConfig  # isort: skip
from ._teco import TECO_CONVS5_PRESETS as TECO_CONVS5_PRESETS  # isort: skip
from ._teco import TECOConvS5Config as TECOConvS5Config  # isort: skip
from ._teco import TECO_S5_PRESETS as TECO_S5_PRESETS  # isort: skip
from ._teco import TECOS5Config as TECOS5Config  # isort: skip
from ._latent_video import LATENT_CONVS5_PRESETS as LATENT_CONVS5_PRESETS  # isort: skip
from ._latent_video import LATENT_TRANSFORMER_PRESETS as LATENT_TRANSFORMER_PRESETS  # isort: skip
from ._latent_video import LatentConvS5Config as LatentConvS5Config  # isort: skip
from ._latent_video import LATENT_S5_PRESETS as LATENT_S5_PRESETS  # isort: skip
from ._latent_video import LatentS5Config as LatentS5Config  # isort: skip
from ._latent_video import LatentTransformerConfig as LatentTransformerConfig  # isort: skip
from ._latent_video import LatentVideoConfig as LatentVideoConfig  # isort: skip
from ._latent_video import LatentVideoModel as LatentVideoModel  # isort: skip
from ._mebt import MEBT_PRESETS as MEBT_PRESETS  # isort: skip
from ._mebt import MeBTConfig as MeBTConfig  # isort: skip
from ._mebt import MeBTVideoModel as MeBTVideoModel  # isort: skip
from ._slotssm import SLOTSSM_PRESETS as SLOTSSM_PRESETS  # isort: skip
from ._slotssm import SlotSSMConfig as SlotSSMConfig  # isort: skip
from ._slotssm import SlotSSMVideoModel as SlotSSMVideoModel  # isort: skip
from ._mcvd import MCVD_PRESETS as MCVD_PRESETS  # isort: skip
from ._mcvd import MCVDConfig as MCVDConfig  # isort: skip
from ._mcvd import MCVDVideoModel as MCVDVideoModel  # isort: skip
from ._mcvd import block_autoregressive as block_autoregressive  # isort: skip
