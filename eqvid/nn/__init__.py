"""Layers: the generic building blocks every eqvid model family composes (dense,
convolutions, up/down-sampling, norms, activations, embeddings, attention,
transformer and ResNet blocks), the sequence layers (ConvS5, ConvLSTM), and the VQ
tokenizers' parts (vector quantiser, taming's 2D and TATS's 3D VQGAN encoders and
decoders, PatchGAN discriminators). Equinox modules with typed array signatures,
channels last."""

from ._activations import ActivationName as ActivationName
from ._activations import activation as activation
from ._activations import gelu as gelu
from ._activations import gelu_sigmoid as gelu_sigmoid
from ._attention import MultiheadAttention as MultiheadAttention
from ._conv import Conv2d as Conv2d
from ._conv import ConvTranspose2d as ConvTranspose2d
from ._conv import Padding as Padding
from ._conv import conv2d_nhwc as conv2d_nhwc
from ._convlstm import ConvLSTM as ConvLSTM
from ._convlstm import ConvLSTMCell as ConvLSTMCell
from ._convs5 import ConvS5 as ConvS5
from ._convs5 import ResNetOutput as ResNetOutput
from ._dense import Dense as Dense
from ._embeddings import Embedding as Embedding
from ._embeddings import FactorisedPositionEmbedding as FactorisedPositionEmbedding
from ._embeddings import sinusoidal_positions as sinusoidal_positions
from ._embeddings import timestep_embedding as timestep_embedding
from ._hippo import discretize_zoh as discretize_zoh
from ._hippo import hippo_block_init as hippo_block_init
from ._maskgit import MaskGitPrior as MaskGitPrior
from ._maskgit import sample_confidence as sample_confidence
from ._maskgit import sample_draft_and_revise as sample_draft_and_revise
from ._maskgit import training_mask as training_mask
from ._norm import GroupNorm as GroupNorm
from ._norm import LayerNorm as LayerNorm
from ._patch_discriminator import BatchNorm as BatchNorm
from ._patch_discriminator import PatchDiscriminator as PatchDiscriminator
from ._quantize import Quantized as Quantized
from ._quantize import VectorQuantizer as VectorQuantizer
from ._resnet import ResNetBlock as ResNetBlock
from ._resnet import ResNetDecoder as ResNetDecoder
from ._resnet import ResNetEncoder as ResNetEncoder
from ._roles import ParamRole as ParamRole
from ._roles import parameter_roles as parameter_roles
from ._roles import role as role
from ._roles import role_filter as role_filter
from ._sampling import Downsample as Downsample
from ._sampling import Upsample as Upsample
from ._sampling import avg_pool_2x as avg_pool_2x
from ._sampling import depth_to_space as depth_to_space
from ._sampling import space_to_depth as space_to_depth
from ._sampling import upsample_nearest_2x as upsample_nearest_2x
from ._sequence import AbstractSequenceLayer as AbstractSequenceLayer
from ._temporal_core import AbstractTemporalCore as AbstractTemporalCore
from ._temporal_core import ConvS5Core as ConvS5Core
from ._temporal_core import TransformerCore as TransformerCore
from ._temporal_transformer import TemporalTransformer as TemporalTransformer
from ._transformer import KVCache as KVCache
from ._transformer import TransformerBlock as TransformerBlock
from ._vqgan3d_codec import BatchNorm3d as BatchNorm3d
from ._vqgan3d_codec import PatchDiscriminator3D as PatchDiscriminator3D
from ._vqgan3d_codec import ResBlock3d as ResBlock3d
from ._vqgan3d_codec import SamePadConv3d as SamePadConv3d
from ._vqgan3d_codec import SamePadConvTranspose3d as SamePadConvTranspose3d
from ._vqgan3d_codec import VQGAN3DDecoder as VQGAN3DDecoder
from ._vqgan3d_codec import VQGAN3DEncoder as VQGAN3DEncoder
from ._vqgan_codec import SpatialSelfAttention as SpatialSelfAttention
from ._vqgan_codec import VQGANDecoder as VQGANDecoder
from ._vqgan_codec import VQGANEncoder as VQGANEncoder
from ._vqgan_codec import VQGANResnetBlock as VQGANResnetBlock
