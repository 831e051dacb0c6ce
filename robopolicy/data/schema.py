"""The schema of an EpisodeStore: which keys it holds, their dtypes and per-step shapes, fps, cameras.

The schema is fixed by the first episode written (or declared at creation) and every later write is
validated against it before anything touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopolicy.data.errors import EpisodeValidationError

IMAGE_PREFIX = "images/"
DEPTH_PREFIX = "depth/"
TIMESTAMP_KEY = "timestamp"
POINTCLOUD_KEY = "pointcloud"  # float32 [N, 3 or 6]: base-frame xyz (m) (+ rgb in [0, 1]), robopolicy/perception


def key_kind(key: str) -> str:
    """'image', 'depth', 'pointcloud', 'timestamp' or 'lowdim', from the key's name (DESIGN.md conventions)."""
    if key == POINTCLOUD_KEY or key.startswith(POINTCLOUD_KEY + "/"):
        return "pointcloud"
    if key.startswith(IMAGE_PREFIX):
        return "image"
    if key.startswith(DEPTH_PREFIX):
        return "depth"
    if key == TIMESTAMP_KEY:
        return "timestamp"
    return "lowdim"


@dataclass(frozen=True)
class FieldSpec:
    """dtype and per-step shape of one key."""

    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> FieldSpec:
        return FieldSpec(dtype=str(d["dtype"]), shape=tuple(int(s) for s in d["shape"]))


# dtypes each kind of key must have; low-dim keys may be any numeric dtype.
_KIND_DTYPES = {"image": {"uint8"}, "depth": {"uint16"}, "timestamp": {"float64"}, "pointcloud": {"float32"}}


@dataclass
class StoreSchema:
    """Keys with their FieldSpecs, plus the recording rate."""

    fields: dict[str, FieldSpec]
    fps: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cameras(self) -> list[str]:
        return sorted(k[len(IMAGE_PREFIX):] for k in self.fields if k.startswith(IMAGE_PREFIX))

    @property
    def depth_cameras(self) -> list[str]:
        return sorted(k[len(DEPTH_PREFIX):] for k in self.fields if k.startswith(DEPTH_PREFIX))

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": {k: v.to_json() for k, v in sorted(self.fields.items())},
            "fps": self.fps,
            "cameras": self.cameras,
            "extra": self.extra,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> StoreSchema:
        return StoreSchema(
            fields={k: FieldSpec.from_json(v) for k, v in d["fields"].items()},
            fps=float(d["fps"]),
            extra=dict(d.get("extra", {})),
        )

    @staticmethod
    def from_steps(steps: dict[str, np.ndarray], fps: float) -> StoreSchema:
        """Infer a schema from a first episode (time-major arrays)."""
        fields = {}
        for key, arr in steps.items():
            arr = np.asarray(arr)
            if arr.ndim < 1:
                raise EpisodeValidationError(f"key '{key}': expected a time-major array, got a scalar")
            fields[key] = FieldSpec(dtype=arr.dtype.name, shape=tuple(arr.shape[1:]))
        schema = StoreSchema(fields=fields, fps=float(fps))
        schema.check_kinds()
        return schema

    def check_kinds(self) -> None:
        """Reject schemas that break the data conventions (e.g. float images, missing timestamps)."""
        if TIMESTAMP_KEY not in self.fields:
            raise EpisodeValidationError(
                "every episode needs a 'timestamp' key (float64 seconds, measured on the monotonic clock)"
            )
        for key, spec in self.fields.items():
            kind = key_kind(key)
            allowed = _KIND_DTYPES.get(kind)
            if allowed and spec.dtype not in allowed:
                raise EpisodeValidationError(
                    f"key '{key}' ({kind}) must have dtype {'/'.join(sorted(allowed))}, got {spec.dtype}"
                )
            if kind == "image" and (len(spec.shape) != 3 or spec.shape[2] != 3):
                raise EpisodeValidationError(f"key '{key}': images are [H, W, 3], got per-step shape {spec.shape}")
            if kind == "depth" and len(spec.shape) != 2:
                raise EpisodeValidationError(f"key '{key}': depth is [H, W] uint16, got per-step shape {spec.shape}")
            if kind == "pointcloud" and (len(spec.shape) != 2 or spec.shape[1] not in (3, 6)):
                raise EpisodeValidationError(f"key '{key}': point clouds are [N, 3] (xyz) or [N, 6] (xyz + rgb) "
                                             f"float32, got per-step shape {spec.shape}")
            if kind == "lowdim" and not np.issubdtype(np.dtype(spec.dtype), np.number) and spec.dtype != "bool":
                raise EpisodeValidationError(f"key '{key}': low-dim data must be numeric, got {spec.dtype}")

    def validate_episode(self, steps: dict[str, np.ndarray]) -> int:
        """Check a whole episode against the schema; return its length. Raises EpisodeValidationError."""
        missing = sorted(set(self.fields) - set(steps))
        extra = sorted(set(steps) - set(self.fields))
        if missing or extra:
            raise EpisodeValidationError(
                f"episode keys do not match the store's schema: missing {missing}, unexpected {extra}. "
                f"The store holds {sorted(self.fields)}."
            )
        length = None
        for key, spec in self.fields.items():
            arr = steps[key]
            if not isinstance(arr, np.ndarray):
                raise EpisodeValidationError(f"key '{key}': expected a numpy array, got {type(arr).__name__}")
            if arr.dtype.name != spec.dtype:
                raise EpisodeValidationError(
                    f"key '{key}': dtype {arr.dtype.name} does not match the store's {spec.dtype}; "
                    f"convert with .astype(np.{spec.dtype}) before writing"
                )
            if tuple(arr.shape[1:]) != spec.shape:
                raise EpisodeValidationError(
                    f"key '{key}': per-step shape {tuple(arr.shape[1:])} does not match the store's {spec.shape}"
                )
            if length is None:
                length = arr.shape[0]
            elif arr.shape[0] != length:
                raise EpisodeValidationError(
                    f"key '{key}' has {arr.shape[0]} steps but other keys have {length}; all keys need one row per step"
                )
            self._check_values(key, arr)
        if not length:
            raise EpisodeValidationError("an episode needs at least one step")
        return int(length)

    @staticmethod
    def _check_values(key: str, arr: np.ndarray) -> None:
        kind = key_kind(key)
        if kind in ("lowdim", "timestamp", "pointcloud") and np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
            if bad.any():
                step = int(np.flatnonzero(bad)[0])
                raise EpisodeValidationError(f"key '{key}': NaN or inf at step {step} ({int(bad.sum())} steps affected)")
        if kind == "timestamp":
            diffs = np.diff(arr)
            if (diffs <= 0).any():
                step = int(np.flatnonzero(diffs <= 0)[0]) + 1
                raise EpisodeValidationError(
                    f"key 'timestamp': not strictly increasing at step {step} "
                    f"({arr[step - 1]:.6f} -> {arr[step]:.6f})"
                )
