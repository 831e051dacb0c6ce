"""Imitation training: the trainer loop, AdamW with cosine warm-up, EMA, checkpoint I/O and logging.

The library never reads hydra: `robopolicy/cli/train.py` turns the composed config into these objects.
"""

from robopolicy.train.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from robopolicy.train.config import TaskConfig, TrainerConfig
from robopolicy.train.data import DataConfigError
from robopolicy.train.ema import EMA
from robopolicy.train.trainer import Trainer, TrainResult, train

__all__ = [
    "EMA",
    "CheckpointError",
    "DataConfigError",
    "LoadedCheckpoint",
    "TaskConfig",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "load_checkpoint",
    "train",
]
