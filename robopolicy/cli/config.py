"""Hydra config composition shared by the CLIs (the library never reads hydra; only cli/ does)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def config_dir() -> Path:
    """The repository's configs/ directory (override with ROBOPOLICY_CONFIG_DIR)."""
    env = os.environ.get("ROBOPOLICY_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def compose_config(config_name: str, argv: list[str], plain_keys: tuple[str, ...] = ()) -> Any:
    """Compose `configs/<config_name>.yaml` with key=value overrides through hydra's compose API.

    Keys in `plain_keys` are set as plain values after composing: hydra would read e.g. `task=pusht` as a
    choice of the `configs/task/` group, while for eval and collection `task` is a sim registry name.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    plain, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in plain_keys:
            plain[key] = value
        else:
            overrides.append(arg)
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(config_name=config_name, overrides=overrides)
    for key, value in plain.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def to_plain(value: Any) -> Any:
    """OmegaConf containers -> Python lists/dicts (e.g. image_size=[84,84])."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
