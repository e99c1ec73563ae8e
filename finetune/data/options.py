"""Turning a config group (``dataset``, ``augment``) into the dataclass that reads it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from omegaconf import DictConfig, OmegaConf


def plain_dict(cfg: DictConfig | Mapping) -> dict:
    """A config group as a plain dict (interpolations resolved)."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def dataclass_values(cls: type, cfg: Mapping, group: str, error: type[Exception]) -> dict:
    """``cfg`` as keyword arguments for ``cls``: unknown keys raise ``error``; lists become tuples."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise error(f"unknown {group} key(s) {unknown}; known keys: {known}")
    return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()}
