"""What is exported: a trained model with its config and records, and the metadata every export carries."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from finetune.version import __version__
from finetune.data.transforms import Preprocessing
from finetune.engine.config import setting
from finetune.engine.runs import load_run
from finetune.engine.schedule import phases_from
from finetune.models.freezing import FineTuneModel
from finetune.tasks.base import Task

# 2: images resized by Pillow (antialiased), the "input" contract and preprocess.py (1: OpenCV resize)
EXPORT_VERSION = 2


@dataclass(frozen=True)
class ModelBundle:
    """Everything an export needs: the trained model, its config and what it predicts."""

    model: FineTuneModel
    cfg: DictConfig  # the run's resolved config (build_model rebuilds the architecture from it)
    class_names: list[str]
    multilabel: bool
    preprocessing: Preprocessing
    image_channels: int  # channels of the training images (1: grayscale data)
    weights: dict  # WeightsRecord.to_dict() of the pretrained backbone
    training: dict = field(default_factory=dict)  # phases, BN policy, test metrics
    origin: str = ""
    backbone_weights: str | None = None  # pretrained weights file overriding the recorded one
    task_metadata: dict = field(default_factory=dict)  # the task's own export keys (e.g. segmentation tiles)
    dense: bool = False  # one prediction per pixel (the task's): exports keep height and width dynamic

    @classmethod
    def from_run(cls, path: str | Path, task: Task, backbone_weights: str | None = None) -> ModelBundle:
        """The best checkpoint of a run directory (or the given checkpoint) of ``task`` and its records."""
        run = load_run(path)
        data = json.loads((run.run_dir / "data.json").read_text())
        return cls(run.model, run.cfg, run.class_names, run.multilabel, run.preprocessing,
                   data["image_channels"], run.weights, training_summary(run.cfg, run.run_dir),
                   str(run.checkpoint), backbone_weights, task.export_metadata(data), task.dense)

    @property
    def window(self) -> tuple[float, float] | None:
        """DICOM ``[center, width]`` the run read its images with (None: each file's own VOI)."""
        window = self.task_metadata.get("window")
        return tuple(window) if window else None


def training_summary(cfg: DictConfig, run_dir: Path) -> dict:
    """Phases, BN policy, EMA, test metrics and how the run turned logits into its tested predictions:
    test-time flips (``tta``: their logits averaged with the image's), ``temperature`` (logits / T)
    and the decision ``threshold``; predict and the Python API apply the same."""
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    phases = [{"name": p.name, "epochs": p.epochs, "freeze": p.freeze} for p in phases_from(cfg)]
    per_label = metrics.get("test_per_class", {}).get("threshold")  # multi-label: one per class
    threshold = list(per_label.values()) if per_label else metrics.get("test", {}).get("threshold")
    calibration = metrics.get("calibration", {})
    return {"phases": phases, "bn": cfg.backbone.bn, "ema_decay": setting(cfg, "ema.decay"),
            "test": metrics.get("test", {}), "tta": calibration.get("tta", []),
            "temperature": calibration.get("temperature", 1.0), "threshold": threshold}


def metadata(bundle: ModelBundle, fmt: str) -> dict:
    """What every export records: classes, preprocessing, task, backbone, weights, training."""
    weights = {k: bundle.weights.get(k) for k in ("model", "tag", "source", "sha256")}
    return {
        "export_version": EXPORT_VERSION, "format": fmt, "finetune_version": __version__,
        "task": bundle.cfg.task, "multilabel": bundle.multilabel, "class_names": list(bundle.class_names),
        "preprocessing": bundle.preprocessing.to_dict(), "input": input_contract(bundle.preprocessing, bundle.dense),
        "image_channels": bundle.image_channels,
        "backbone": {"name": bundle.cfg.backbone.name, "in_chans": bundle.preprocessing.in_chans},
        "weights": weights, "training": bundle.training, "origin": bundle.origin,
        "adapter": bundle.model.adapter.to_dict() if bundle.model.adapter else None,
        **bundle.task_metadata,
    }


def input_contract(pre: Preprocessing, dense: bool) -> dict:
    """Every preprocessing step, stated library-neutrally; ``preprocess.py`` (next to the export)
    implements it with numpy and Pillow."""
    resize = None if dense else {
        "to_height_width": list(pre.size), "keep_aspect_ratio": False, "crop": None, "filter": pre.interpolation,
        "antialias": True, "implementation": f"Pillow Image.resize((width, height), Image.Resampling.{pre.interpolation.upper()})"}
    return {
        "reference": "preprocess.py (numpy + Pillow): preprocess(files_or_arrays, metadata['preprocessing'])",
        "decode": "8 bits per channel, EXIF orientation applied; 16/32-bit grayscale: round(value / 257); "
                  "palette, RGBA, CMYK, ...: RGB, alpha dropped",
        "channels": ("gray replicated to R, G, B" if pre.in_chans == 3 else
                     "1 channel; RGB to Pillow's L = (299 R + 587 G + 114 B) / 1000"),
        "resize": resize,
        "whole_image": ("the model takes whole images of any size with sides that are multiples of 32; finetune "
                        "predict slides the recorded tile over them (segmentation.tile, tile_overlap, scale)"
                        if dense else None),
        "scale": "value / 255 (float32)", "mean": list(pre.mean), "std": list(pre.std),
        "normalize": "(value / 255 - mean) / std per channel", "channel_order": "RGB" if pre.in_chans == 3 else "gray",
        "layout": "NCHW", "dtype": "float32",
    }
