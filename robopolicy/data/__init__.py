"""The data layer: the zarr episode store, sequence sampling for training, normalizers, LeRobot interop."""

from robopolicy.data.episode_store import EpisodeStore
from robopolicy.data.errors import EpisodeValidationError, StoreFormatError
from robopolicy.data.lerobot_io import LeRobotFormatError, export_lerobot, import_lerobot
from robopolicy.data.recorder import EpisodeRecorder
from robopolicy.data.schema import FieldSpec, StoreSchema

__all__ = [
    "EpisodeRecorder",
    "EpisodeStore",
    "EpisodeValidationError",
    "FieldSpec",
    "LeRobotFormatError",
    "StoreFormatError",
    "StoreSchema",
    "export_lerobot",
    "import_lerobot",
]
