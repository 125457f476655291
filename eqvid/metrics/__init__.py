"""Video metrics: PSNR, SSIM, LPIPS, FVD and KVD, and the papers' evaluation protocol.

- Frame metrics (pure JAX, jit-able, any leading axes): `psnr`, `ssim` (TF form as
  in TECO/ConvS5, or scikit-image's as in MCVD); `psnr_ceiling`, the finite score
  reports give frames identical to the truth.
- Networks (Equinox, weights converted once from the public PyTorch files with
  `python -m eqvid.metrics.convert_weights`): `LPIPS` (AlexNet), `I3D`
  (Kinetics-400 logits for FVD), `preprocess_for_i3d`, `i3d_features`.
- Segmentations: `adjusted_rand_index` and `foreground_ari` (FG-ARI, whether an
  object-centric model's slots separate the objects).
- Feature distances (float64 on the host): `gaussian_statistics`,
  `frechet_distance`, `fvd_from_features`, `kvd`; the same in pure JAX for use
  inside `jit` (a training loop): `fvd_jax`, `kvd_jax`.
- The protocol: `frame_metrics` (generated frames only), `reduce_over_chunks`,
  `chunked_fvd`, `per_frame_curve`, and the sample files `save_samples_npz` /
  `load_samples_npz` (`real` / `fake` uint8 videos).
"""

from ._ari import adjusted_rand_index as adjusted_rand_index
from ._ari import foreground_ari as foreground_ari
from ._frechet import frechet_distance as frechet_distance
from ._frechet import fvd_from_features as fvd_from_features
from ._frechet import gaussian_statistics as gaussian_statistics
from ._frechet import kvd as kvd
from ._i3d import I3D as I3D
from ._i3d import i3d_features as i3d_features
from ._i3d import preprocess_for_i3d as preprocess_for_i3d
from ._jax_distances import fvd_jax as fvd_jax
from ._jax_distances import kvd_jax as kvd_jax
from ._lpips import LPIPS as LPIPS
from ._protocol import PAPER_CHUNK as PAPER_CHUNK
from ._protocol import MeanStd as MeanStd
from ._protocol import Samples as Samples
from ._protocol import check_value_range as check_value_range
from ._protocol import chunked_fvd as chunked_fvd
from ._protocol import frame_metrics as frame_metrics
from ._protocol import load_samples_npz as load_samples_npz
from ._protocol import per_frame_curve as per_frame_curve
from ._protocol import reduce_over_chunks as reduce_over_chunks
from ._protocol import save_samples_npz as save_samples_npz
from ._protocol import videos_to_uint8 as videos_to_uint8
from ._protocol import videos_to_unit as videos_to_unit
from ._psnr import psnr as psnr
from ._psnr import psnr_ceiling as psnr_ceiling
from ._ssim import ssim as ssim
from ._weights import default_weights_dir as default_weights_dir
