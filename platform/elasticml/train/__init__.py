"""Training on Ray Train V2: config, per-worker loop, checkpoints, launcher."""

from elasticml.train.checkpoint import latest_checkpoint, load_model
from elasticml.train.config import TrainConfig

__all__ = ["TrainConfig", "latest_checkpoint", "load_model"]
