"""Policy registry: a head's name -> "module:Class", imported only when that head is asked for.

Heads live in their own modules (DESIGN.md); the registry keeps the names the configs use
(`policy=diffusion`) in one table instead of an if/elif factory, and builds a head from a plain dict
of hyper-parameters (what hydra and checkpoints carry) with clear errors for unknown or mistyped keys.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

from robopolicy.policies.base import Policy, PolicySpec

POLICIES: dict[str, str] = {
    "diffusion": "robopolicy.policies.diffusion:DiffusionPolicy",
    "flow": "robopolicy.policies.flow:FlowPolicy",
    "meanflow": "robopolicy.policies.meanflow:MeanFlowPolicy",
    "consistency": "robopolicy.policies.consistency:ConsistencyPolicy",
    "discrete_diffusion": "robopolicy.policies.discrete_diffusion:DiscreteDiffusionPolicy",
    "diffusion_language": "robopolicy.policies.language_diffusion:LanguageDiffusionPolicy",
    "streaming": "robopolicy.policies.streaming:StreamingDiffusionPolicy",
    "carp": "robopolicy.policies.carp:CARPPolicy",
    "steered": "robopolicy.policies.steered:SteeredPolicy",  # DSRL: frozen base head + noise actor
    "composed": "robopolicy.policies.compose:ComposedPolicy",  # GPC: convex composition of trained heads
}


class ConfigError(ValueError):
    """A config key or value that cannot be used; raised before anything is trained."""


PolicyConfigError = ConfigError  # the name policy-side code uses


def register_policy(name: str, target: str | type[Policy]) -> None:
    """Add (or replace) a head: `target` is "package.module:Class" or the class itself (tests, plugins)."""
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"policy target must look like 'package.module:Class', got {target!r}")
    POLICIES[name] = target  # type: ignore[assignment]


def available_policies() -> list[str]:
    return sorted(POLICIES)


def get_policy_class(name: str) -> type[Policy]:
    """The head class registered as `name`, importing its module on first use."""
    if name not in POLICIES:
        raise PolicyConfigError(f"unknown policy '{name}'; available: {', '.join(available_policies())}")
    target: Any = POLICIES[name]
    if not isinstance(target, str):
        return target
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the head's own module is missing, not a dependency
            raise PolicyConfigError(
                f"policy '{name}' is implemented by module '{module_name}', which does not exist in this "
                f"installation; available policies: {', '.join(available_policies())}"
            ) from None
        raise
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise PolicyConfigError(f"policy '{name}': module '{module_name}' has no class '{cls_name}'")
    return cls


def build_config(config_cls: type, values: dict[str, Any] | None, where: str = "policy") -> Any:
    """Instantiate a (possibly nested) config dataclass from a plain dict, rejecting unknown keys.

    Lists become tuples where the field is annotated as a tuple (YAML has no tuples); nested dataclass
    fields are built from nested dicts.
    """
    values = dict(values or {})
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{where}: {config_cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PolicyConfigError(
            f"unknown key(s) {unknown} in the {where} config ({config_cls.__qualname__}); valid keys: {sorted(fields)}"
        )
    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # unresolvable forward references: take the values as they come
        hints = {}
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(hints.get(key), value, f"{where}.{key}")
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise PolicyConfigError(f"{where}: invalid config for {config_cls.__qualname__}: {e}") from e


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if hint is None or value is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return build_config(hint, value, where)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def make_policy(name: str, spec: PolicySpec, cfg_dict: dict[str, Any] | None = None) -> Policy:
    """Build head `name` as `cls(spec, cls.Config(**cfg_dict))`, validating the config first."""
    cls = get_policy_class(name)
    config_cls = getattr(cls, "Config", None)
    if config_cls is None:
        raise PolicyConfigError(f"policy '{name}' ({cls.__qualname__}) has no nested Config dataclass")
    cfg = build_config(config_cls, cfg_dict, where=f"policy '{name}'")
    validate_policy_config(cls, spec, cfg)
    return cls(spec, cfg)


def make_policy_config(name: str, cfg_dict: dict[str, Any] | None = None) -> Any:
    """Only the typed Config of head `name` (for validation before any data is read)."""
    cls = get_policy_class(name)
    return build_config(cls.Config, cfg_dict, where=f"policy '{name}'")


def validate_policy_config(cls: type[Policy], spec: PolicySpec, cfg: Any) -> None:
    """Run the head's optional `validate_config(spec, cfg)` classmethod; its errors become PolicyConfigError."""
    hook = getattr(cls, "validate_config", None)
    if hook is None:
        return
    try:
        hook(spec, cfg)
    except PolicyConfigError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if e.args else str(e)
        raise PolicyConfigError(f"{cls.__qualname__}: {msg}") from e
