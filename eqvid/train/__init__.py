"""Training: `train(config)` for every model, its configs, optimiser, checkpoints,
sample export and the held-out rollout evaluation. Imports the data stack (Grain)."""

from ._checkpoint import Checkpointer as Checkpointer
from ._config import OptimizerConfig as OptimizerConfig
from ._config import RunConfig as RunConfig
from ._config import TrainConfig as TrainConfig
from ._distributed import DistributedConfig as DistributedConfig
from ._distributed import initialize_distributed as initialize_distributed
from ._loop import TrainResult as TrainResult
from ._loop import make_train_step as make_train_step
from ._loop import train as train
from ._mesh import MeshConfig as MeshConfig
from ._mesh import make_mesh as make_mesh
from ._optimizer import make_optimizer as make_optimizer
from ._rollout_eval import RolloutReport as RolloutReport
from ._rollout_eval import rollout as rollout
from ._rollout_eval import rollout_mse as rollout_mse
from ._samples import save_prediction_gif as save_prediction_gif
from ._samples import save_prediction_strip as save_prediction_strip
from ._sharded_step import make_sharded_train_step as make_sharded_train_step
from ._sharded_step import shard_state as shard_state
