"""Linear probes after every backbone stage: how well the frozen pretrained features separate the
classes of this data, stage by stage (``finetune advise``).

The train and val splits go once through the evaluation transform and the frozen backbone (eval mode:
BatchNorm statistics and dropout as pretrained; nothing is trained). The stages are those of
``backbone.freeze`` (timm's ``group_matcher``, ``finetune.models.backbones``). A forward hook keeps the
output of each stage's last module, global-average-pooled: NCHW maps over height and width (NHWC
models over their spatial axes), token sequences over their patch tokens. The last stage gives the
backbone's own pooled features: what a linear probe (``backbone.freeze=all``) trains on.

Per stage a scikit-learn logistic regression (L2, ``C=1``, on features standardised with the train
split's mean and std; one per label for multi-label data) is fitted on train and scored on val:
accuracy (multi-label: per-label accuracy at 0.5) and the mean one-vs-rest AUC over the classes (or
labels) whose val split holds both positives and negatives.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import torch
from omegaconf import DictConfig
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from finetune.data.imbalance import imbalance_ratio
from finetune.models.backbones import StageMap
from finetune.models.freezing import FineTuneModel
from finetune.run.task import Task
from finetune.training.train import build

PROBE_C = 1.0  # inverse L2 strength of every probe: one fixed protocol, so stages compare fairly
PROBE_MAX_ITER = 1000


@dataclasses.dataclass(frozen=True)
class StageScore:
    """Val scores of the linear probe on one stage's pooled features."""

    stage: str
    dim: int
    acc: float
    auc: float | None  # None: no class has both positives and negatives in val


@dataclasses.dataclass(frozen=True)
class DataStats:
    """The splits the probes saw and the train split's class counts (multi-label: positives per label)."""

    train: int
    val: int
    class_counts: list[int]
    multilabel: bool

    @property
    def per_class(self) -> float:
        """Train images per class (multi-label: positives per label), the mean over classes."""
        return sum(self.class_counts) / len(self.class_counts)

    @property
    def imbalance(self) -> float:
        """Largest over smallest train class count (inf when a class has none)."""
        return imbalance_ratio(self.class_counts)

    def to_dict(self) -> dict:
        ratio = self.imbalance
        return dataclasses.asdict(self) | {
            "per_class": round(self.per_class, 1),
            "imbalance": None if ratio == float("inf") else round(ratio, 2),
        }


@dataclasses.dataclass
class Probing:
    """What the probes measured: scores by stage (stage1 … last), the data, the backbone, timings."""

    scores: list[StageScore]
    data: DataStats
    metric: str  # the score the recommendation reads: "acc", or "auc" for multi-label data
    backbone: str
    weights_source: str  # "random": backbone.pretrained=false, the curve says nothing about transfer
    transformer: bool
    seconds: dict[str, float]

    def curve(self) -> list[float]:
        """The recommendation's metric by stage (0 where the AUC is undefined)."""
        return [getattr(s, self.metric) or 0.0 for s in self.scores]


def probed_stages(stage_map: StageMap) -> list[str]:
    """The stages a probe is fitted after: every stage but the stem."""
    return [s for s in stage_map.stages if s != "stem"]


def stage_modules(backbone: nn.Module, stage_map: StageMap) -> dict[str, list[nn.Module]]:
    """The outermost modules of each stage (every tensor and leaf below them in that one stage), in
    registration order; the output of the last one that runs is the stage's output."""
    names = [n for n, _ in backbone.named_parameters()] + [n for n, _ in backbone.named_buffers()]
    names += [n for n, m in backbone.named_modules() if n and not any(m.children())]
    stages_below: dict[str, set[str]] = defaultdict(set)
    for name in names:
        stage = stage_map.stage_by_name.get(name)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            stages_below[".".join(parts[:i])].add(stage)
    pure = {n: next(iter(s)) for n, s in stages_below.items() if len(s) == 1 and None not in s}
    found: dict[str, list[nn.Module]] = defaultdict(list)
    for name, module in backbone.named_modules():
        if name in pure and name.rpartition(".")[0] not in pure:
            found[pure[name]].append(module)
    return dict(found)


def pool(output: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """Global average of one stage output: [B, C, H, W] (NHWC models: [B, H, W, C]) over space,
    [B, tokens, C] over the patch tokens, [B, C] as it is."""
    if output.ndim == 4:
        return output.mean(dim=(1, 2) if getattr(backbone, "output_fmt", "NCHW") == "NHWC" else (2, 3))
    if output.ndim == 3:
        return output[:, getattr(backbone, "num_prefix_tokens", 0) :].mean(dim=1)
    return output


@torch.no_grad()
def stage_features(
    model: FineTuneModel, loader: Iterable, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pooled features after every probed stage (``probed_stages``) of every batch, and the targets,
    in loader order; the model is in eval mode throughout (restored after)."""
    backbone, stages = model.backbone, probed_stages(model.stage_map)
    modules = stage_modules(backbone, model.stage_map)
    latest: dict[str, torch.Tensor] = {}

    def keep(stage: str):
        def hook(module: nn.Module, args, output) -> None:
            if isinstance(output, torch.Tensor):
                latest[stage] = pool(output, backbone)

        return hook

    hooks = [m.register_forward_hook(keep(stage)) for stage in stages[:-1] for m in modules.get(stage, [])]
    was_training = model.training
    model.eval()
    backbone.to(device)
    features: dict[str, list[torch.Tensor]] = {s: [] for s in stages}
    targets = []
    try:
        for images, target in loader:
            latest.clear()
            latest[stages[-1]] = backbone(images.to(device))
            for stage in stages:
                features[stage].append(latest[stage].float().cpu())
            targets.append(target)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {s: torch.cat(f) for s, f in features.items()}, torch.cat(targets)


def probe_pipeline(multilabel: bool = False) -> Pipeline:
    """The one linear probe of advise and inspect: standardised features, L2 logistic regression at ``PROBE_C``
    (one-vs-rest for multi-label)."""
    linear = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(linear) if multilabel else linear)


def probe(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, num_classes: int, multilabel: bool
) -> tuple[float, float | None]:
    """Fit one linear probe on train, score it on val: (accuracy, mean one-vs-rest AUC)."""
    classifier = probe_pipeline(multilabel)
    with warnings.catch_warnings():  # a probe that has not fully converged still ranks the stages
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(train_x, train_y)
    scores = classifier.predict_proba(val_x)
    if multilabel:
        return float(((scores > 0.5) == val_y).mean()), mean_auc(val_y, scores)
    proba = np.zeros((len(val_x), num_classes))
    proba[:, classifier.classes_] = scores  # a class absent from train keeps probability 0
    indicator = np.eye(num_classes)[val_y]
    return float((proba.argmax(1) == val_y).mean()), mean_auc(indicator, proba)


def mean_auc(indicator: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean ROC AUC over the columns whose targets hold both positives and negatives (None: none do)."""
    aucs = [
        roc_auc_score(indicator[:, k], scores[:, k])
        for k in range(indicator.shape[1])
        if 0 < indicator[:, k].sum() < len(indicator)
    ]
    return float(np.mean(aucs)) if aucs else None


def probe_device(accelerator: str) -> torch.device:
    """The device ``trainer.accelerator`` means for one process (auto, gpu, cuda: a GPU when there is one)."""
    wants_gpu = str(accelerator) in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def measure(task: Task, cfg: DictConfig) -> Probing:
    """Build the run as training would (``training.train.build``: data, weights, model), extract the
    pooled stage features of train and val once, fit and score a probe per stage on the labels
    ``task`` gives (``Task.probe_labels``; ``Task.check_probing`` refuses a task without them)."""
    started = time.perf_counter()
    built = build(task, cfg)
    model, data = built.model, built.data
    labels = task.probe_labels(data)
    multilabel = labels.multilabel
    device = probe_device(cfg.trainer.accelerator)
    built_at = time.perf_counter()
    train_x, train_y = stage_features(model, data.eval_dataloader("train"), device)
    val_x, val_y = stage_features(model, data.eval_dataloader("val"), device)
    extracted_at = time.perf_counter()
    scores = []
    for stage in probed_stages(model.stage_map):
        acc, auc = probe(
            train_x[stage].numpy(),
            train_y.numpy(),
            val_x[stage].numpy(),
            val_y.numpy(),
            labels.num_classes,
            multilabel,
        )
        scores.append(
            StageScore(stage, int(train_x[stage].shape[1]), round(acc, 4), None if auc is None else round(auc, 4))
        )
    done = time.perf_counter()
    stats = DataStats(train=len(train_y), val=len(val_y), class_counts=list(labels.class_counts), multilabel=multilabel)
    seconds = {
        "build": built_at - started,
        "features": extracted_at - built_at,
        "probes": done - extracted_at,
        "total": done - started,
    }
    return Probing(
        scores,
        stats,
        "auc" if multilabel else "acc",
        cfg.backbone.name,
        built.record.source,
        hasattr(model.timm_model, "patch_embed"),
        {k: round(v, 1) for k, v in seconds.items()},
    )
