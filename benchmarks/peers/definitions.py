"""The tools in the comparison (``PEERS``), the data (``DATASETS``) and what every tool of one invocation shares
(``Settings``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..common import CAMVID, HYMENOPTERA, MEDMNIST

ARCH = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class Peer:
    """A tool in the comparison: its runner script and the pinned packages of its venv (none: the project's)."""

    script: str
    requirements: tuple[str, ...]
    how: str
    venv: str | None = None  # another peer's venv (same packages); None: its own
    options: tuple[tuple[str, object], ...] = ()  # added to the runner's spec
    tasks: tuple[str, ...] = ("classification",)  # the datasets it runs on


FASTAI = Peer(
    "run_fastai.py",
    ("fastai==2.8.12", "timm==1.0.31"),
    "`vision_learner` (default head) + `fine_tune` (1 frozen epoch, default lr 2e-3), `Resize` + `aug_transforms()`",
)
PEERS: dict[str, Peer] = {
    "finetune": Peer(
        "run_finetune.py",
        (),
        "its recipe for the data (`+classification=…` / `+medical=…` / "
        "`+segmentation=…`); with `--epochs N` the recipe's settings in one phase of N epochs at the "
        "freeze depth of its last phase",
        tasks=("classification", "segmentation"),
    ),
    "fastai": FASTAI,
    "fastai_lr_find": replace(
        FASTAI,
        venv="fastai",
        options=(("lr_find", True),),
        how="as fastai, with the base lr `lr_find()` suggests (its `valley`; the range test's time is counted)",
    ),
    "hf_trainer": Peer(
        "run_hf.py",
        ("transformers==5.24.0", "accelerate==1.15.0", "timm==1.0.31"),
        "`Trainer` defaults (AdamW lr 5e-5, linear decay, no weight decay), the HF example's RandomResizedCrop + flip",
    ),
    "plain": Peer(
        "run_plain.py",
        ("timm==1.0.31",),
        "timm + PyTorch loop: AdamW (torch defaults), cosine per step, the recipe's augmentation",
    ),
    "smp": Peer(
        "run_smp.py",
        ("segmentation-models-pytorch==0.6.0", "timm==1.0.31"),
        "`smp.Unet` (`tu-` timm encoder, the same weights file and decoder channels) + a plain loop: smp's "
        "Dice + cross-entropy, AdamW (torch defaults), cosine per step, the recipe's crops and augmentation "
        "(torchvision v2), whole-image evaluation",
        tasks=("segmentation",),
    ),
}


TEST_NOTE = (
    "finetune tests the checkpoint of its best val epoch (its default, checkpoints.keep=best); the other "
    "tools test their final weights with argmax"
)


@dataclass(frozen=True)
class Dataset:
    """Data in the comparison: where it lies, its size in the issue (segmentation: the training crop),
    finetune's recipe for it."""

    name: str
    kind: str  # "folder" (root/train, root/val) | "medmnist" (an official npz) | "seglist" (CamVid's list files)
    path: Path
    image_size: int
    num_classes: int
    has_test: bool
    recipe: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    notes: tuple[str, ...] = ()
    task: str = "classification"
    budget_s: float = 60.0  # the equal-wall-clock comparison's budget (seconds per run)

    @property
    def metric(self) -> str:
        """The validation curve's metric and the table's headline: accuracy, or mIoU for segmentation."""
        return "miou" if self.task == "segmentation" else "acc"


DATASETS: dict[str, Dataset] = {
    "hymenoptera": Dataset(
        "hymenoptera",
        "folder",
        HYMENOPTERA,
        224,
        2,
        False,
        ("+classification=hymenoptera",),
        (0, 1, 2),
        (
            (
                "no test split: val/ is what every tool reports; finetune keeps its last "
                "checkpoint (checkpoints.keep=last) so no tool picks an epoch on the split it reports"
            ),
        ),
    ),
    "bloodmnist": Dataset(
        "bloodmnist",
        "medmnist",
        MEDMNIST / "bloodmnist.npz",
        64,
        8,
        True,
        ("+medical=blood",),
        notes=(TEST_NOTE,),
        budget_s=300,
    ),
    "breastmnist": Dataset(
        "breastmnist",
        "medmnist",
        MEDMNIST / "breastmnist.npz",
        128,
        2,
        True,
        ("+medical=breast",),
        (0, 1, 2),
        (
            TEST_NOTE + "; its test acc also uses the decision threshold it tunes on val "
            "(threshold=tune): compare AUC, which no threshold changes",
        ),
        budget_s=180,
    ),
    "camvid": Dataset(
        "camvid",
        "seglist",
        CAMVID,
        256,
        11,
        True,
        ("+segmentation=camvid", "schedule.epochs=6"),
        (0, 1, 2),
        notes=(
            "finetune's recipe shortened to 2 decoder-only + 6 full epochs (`schedule.epochs=6`; the "
            "recipe has 2 + 12) for CPU time; smp trains everything for the same 8 epochs. finetune "
            "evaluates overlapping 256 px windows and tests its best val epoch (the other tool: "
            "whole images, final weights). mIoU: mean over the 11 classes, void ignored",
        ),
        task="segmentation",
        budget_s=240,
    ),
}


@dataclass(frozen=True)
class Settings:
    """What every tool shares in one invocation."""

    threads: int = 1
    workers: int = 0
    batch_size: int | None = None  # None: finetune's recipe for each dataset (32; CamVid 8)
    image_size: int | None = None  # None: each dataset's own
    epochs: int | None = None  # None: finetune's recipe total; N: finetune runs one phase of N epochs
    budget_s: float | None = None  # the equal-wall-clock comparison's budget; None: each dataset's own


# The epoch comparison: every tool the same epochs; the budget comparison: every tool's schedule fitted to
# the same seconds (``budget_spec``), sized from its runs in the first.
COMPARISONS = ("epochs", "budget")
