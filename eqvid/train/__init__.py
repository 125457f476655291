"""Training: `train(config)` / `python -m eqvid.train` for every registered model on
every dataset: configs, the sharded train step, optimiser groups from parameter
roles, checkpoints, metrics (CSV + TensorBoard) and sample export. Imports the data
stack (Grain)."""

from ._checkpoint import Checkpointer as Checkpointer
from ._config import OptimizerConfig as OptimizerConfig
from ._config import RunConfig as RunConfig
from ._config import TrainConfig as TrainConfig
from ._distributed import DistributedConfig as DistributedConfig
from ._distributed import initialize_distributed as initialize_distributed
from ._loop import TrainResult as TrainResult
from ._loop import train as train
from ._mesh import MeshConfig as MeshConfig
from ._mesh import make_mesh as make_mesh
from ._optimizer import make_optimizer as make_optimizer
from ._samples import save_prediction_gif as save_prediction_gif
from ._samples import save_prediction_strip as save_prediction_strip
from ._step import ParameterPlan as ParameterPlan
from ._step import TrainState as TrainState
from ._step import init_train_state as init_train_state
from ._step import make_train_step as make_train_step
