"""A run directory read back: its checkpoint, its saved config (for resume) and its model."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.data.transforms import Preprocessing
from finetune.errors import FinetuneError
from finetune.models.freezing import FineTuneModel
from finetune.tasks import build_model
from finetune.models.weights import resolve_weights


def resume_config(run_dir: Path, current: DictConfig) -> DictConfig:
    """The run's saved config, plus today's defaults for top-level keys added since it was
    written (e.g. ``monitor``), so an older run directory can still be resumed."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    for key in current.keys() - saved.keys():
        saved[key] = current[key]
    return saved


@dataclass
class LoadedRun:
    """A finished run: its config, model (best checkpoint, eval mode), classes and preprocessing."""

    run_dir: Path
    cfg: DictConfig
    model: FineTuneModel
    class_names: list[str]
    multilabel: bool
    preprocessing: Preprocessing
    weights: dict
    checkpoint: Path
    window: tuple[float, float] | None = None  # DICOM [center, width] the run read its files with


def find_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.ckpt", "last.ckpt")) -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory or a checkpoint file inside one."""
    path = Path(path).expanduser()
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run_dir, path
    for name in prefer:
        if (path / "checkpoints" / name).is_file():
            return path, path / "checkpoints" / name
    raise FinetuneError(f"{path} is not a finetune run directory or checkpoint: expected "
                        f"{path}/checkpoints/best.ckpt (pass run=<run dir> or run=<file>.ckpt)")


def load_run(path: str | Path) -> LoadedRun:
    """Rebuild the model of a run and load its checkpoint (``weights_only``: no pickle is executed)."""
    run_dir, ckpt = find_checkpoint(path)
    for name in ("config.yaml", "data.json", "weights.json"):
        if not (run_dir / name).is_file():
            raise FinetuneError(f"{run_dir / name} is missing: {run_dir} is not a complete run directory")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = json.loads((run_dir / "data.json").read_text())
    skeleton = resolve_weights(cfg.backbone.name, pretrained=False)  # the checkpoint holds every tensor
    model = build_model(cfg, skeleton, data["model_in_chans"], len(data["class_names"]))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    preprocessing = Preprocessing.from_dict(data["preprocessing"])
    return LoadedRun(run_dir, cfg, model.eval(), data["class_names"], data.get("multilabel", False), preprocessing,
                     json.loads((run_dir / "weights.json").read_text()), ckpt,
                     tuple(data["window"]) if data.get("window") else None)
