"""Arrays computed on first use, at most once, by whichever thread or process first needs them.

The runtime's `pointcloud` observation is one: the assembler captures what the build needs (the frames and
the cameras' geometry at that instant) in the control loop's thread, and the costly back-projection and
sampling run later, in the thread that first asks for the value (the inference worker's, the episode
recorder's writer, or the control loop itself with synchronous inference), and never twice.

A `Deferred` sent to another process (the process inference worker) travels as its value when it is built
already and as its recipe otherwise; the receiving process keeps the last few by identity, so an
observation that is part of two consecutive requests (T_o = 2) is built there once, not per request.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_ids = itertools.count()
_RESTORED: OrderedDict[tuple[int, int], Deferred] = OrderedDict()  # in a receiving process: key -> object
_RESTORED_LOCK = threading.Lock()
_RESTORED_MAX = 64  # a few requests' worth of observations; each keeps only its small built value


class Deferred:
    """An array computed by `build()` on first use, at most once; safe to share between threads.

    Args:
        build: zero-argument callable returning the array; dropped once it has run, so whatever it holds
            (camera frames) is freed. Must be picklable for the value to cross to another process unbuilt.
        shape, dtype: what `build` returns, declared up front so consumers (the episode recorder's schema
            check) can use them without building; a build that returns anything else raises ValueError.
    """

    def __init__(self, build: Callable[[], Any], shape: Sequence[int], dtype: Any = np.float32,
                 key: tuple[int, int] | None = None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._build: Callable[[], Any] | None = build
        self._value: np.ndarray | None = None
        self._lock = threading.Lock()
        self._key = key if key is not None else (os.getpid(), next(_ids))

    @property
    def built(self) -> bool:
        """Whether the value has been computed."""
        return self._value is not None

    def get(self) -> np.ndarray:
        """The value (read-only: it is shared), computing it now if no one has yet."""
        value = self._value
        if value is not None:
            return value
        with self._lock:  # a second caller waits for the first one's build instead of repeating it
            if self._value is None:
                assert self._build is not None
                out = np.asarray(self._build())
                if out.shape != self.shape or out.dtype != self.dtype:
                    raise ValueError(f"deferred build returned {out.dtype}{list(out.shape)}, declared "
                                     f"{self.dtype}{list(self.shape)}")
                out.flags.writeable = False
                self._value = out  # set before the recipe is dropped: __reduce__ relies on this order
                self._build = None
            return self._value

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        # np.asarray / np.stack on a Deferred build it: code that does not know about deferral stays correct
        value = self.get()
        if dtype is not None and np.dtype(dtype) != value.dtype:
            return value.astype(dtype)
        return value.copy() if copy else value

    def __reduce__(self) -> tuple[Any, ...]:
        # No lock: the control loop pickles requests and must not wait for a build running in another thread.
        # Reading the recipe before the value is safe because get() sets the value before dropping the recipe.
        build, value = self._build, self._value
        return _restore, (self._key, None if value is not None else build, value, self.shape, self.dtype.str)

    def __repr__(self) -> str:
        return f"Deferred({self.dtype}{list(self.shape)}, {'built' if self.built else 'pending'})"


def _restore(key: tuple[int, int], build: Callable[[], Any] | None, value: np.ndarray | None,
             shape: tuple[int, ...], dtype: str) -> Deferred:
    """Unpickle: the object already received under `key` when there is one (its build is then shared)."""
    with _RESTORED_LOCK:
        obj = _RESTORED.get(key)
        if obj is None:
            obj = Deferred(build if build is not None else _missing, shape, dtype, key=key)
            _RESTORED[key] = obj
            while len(_RESTORED) > _RESTORED_MAX:
                _RESTORED.popitem(last=False)
        else:
            _RESTORED.move_to_end(key)
    if value is not None and obj._value is None:
        with obj._lock:
            if obj._value is None:
                value.flags.writeable = False
                obj._value, obj._build = value, None
    return obj


def _missing() -> Any:
    raise RuntimeError("a Deferred arrived with neither its value nor its recipe")


@dataclass
class DeferredStack:
    """One key of a stacked observation history whose per-step values are (partly) deferred.

    `resolve_stacked` turns it into the (1, T_o, ...) array `np.stack(items)[None]` the eager path gives.
    """

    items: tuple[Any, ...]  # per observation: an ndarray or a Deferred, oldest first

    def resolve(self) -> np.ndarray:
        """The (1, T_o, ...) array, building the deferred items not built yet."""
        return np.stack([np.asarray(x) for x in self.items])[None]


def resolve_stacked(obs: Mapping[str, Any]) -> dict[str, Any]:
    """`obs` with every DeferredStack replaced by its array (called where the policy runs, before act())."""
    return {k: v.resolve() if isinstance(v, DeferredStack) else v for k, v in obs.items()}
