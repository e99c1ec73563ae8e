"""Hugging Face ``Trainer`` with the benchmark's timm model and weights in a thin ``nn.Module``, the
Trainer's defaults (AdamW, lr 5e-5, linear decay, no warmup, no weight decay) and the augmentation
of transformers' image-classification example (RandomResizedCrop + horizontal flip for training,
resize + center crop for evaluation). Evaluates every epoch.

    python run_hf.py '<json spec>'      # prints one JSON result line
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from peerdata import Clock, emit, load_data, read_spec, rgb_image, scores, timm_model
from torch import nn
from torchvision import transforms as T
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

PACKAGES = ("transformers", "accelerate", "torch", "torchvision", "timm", "numpy", "pillow")


class TimmForTrainer(nn.Module):
    """A timm classifier speaking the Trainer's language: ``pixel_values``/``labels`` in, loss + logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.model(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


class Images(torch.utils.data.Dataset):
    def __init__(self, items: list, labels: list[int], transform: T.Compose) -> None:
        self.items, self.labels, self.transform = items, labels, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.transform(rgb_image(self.items[i])), "labels": self.labels[i]}


def transforms(spec: dict, train: bool) -> T.Compose:
    """transformers' run_image_classification.py transforms at the benchmark's size."""
    pre, size = spec["preprocessing"], spec["image_size"]
    ops = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if train else [T.Resize(size), T.CenterCrop(size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(pre["mean"], pre["std"])])


class Curve(TrainerCallback):
    """Validation accuracy and time after every epoch's evaluation."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.last = clock, {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        self.last = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items() if k in ("eval_acc", "eval_auc")}
        self.clock.epoch(self.last["acc"])


def probabilities(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).softmax(1).numpy()


def main() -> None:
    spec = read_spec()
    clock = Clock()
    set_seed(spec["seed"])
    data = load_data(spec)
    datasets = {
        name: Images(split.items, split.labels, transforms(spec, name == "train"))
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
        if split
    }
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            num_train_epochs=spec["epochs"],
            per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["batch_size"],
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="epoch",
            report_to="none",
            use_cpu=True,
            seed=spec["seed"],
            dataloader_num_workers=spec["workers"],
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        curve = Curve(clock)
        trainer = Trainer(
            model=TimmForTrainer(timm_model(spec, len(data.classes))),
            args=args,
            train_dataset=datasets["train"],
            eval_dataset=datasets["val"],
            callbacks=[curve],
            compute_metrics=lambda p: scores(probabilities(p.predictions), p.label_ids.tolist()),
        )
        trainer.train()
        test = (
            scores(probabilities(trainer.predict(datasets["test"]).predictions), data.test.labels)
            if data.test
            else None
        )
    emit("hf_trainer", spec, clock, curve.last, test, PACKAGES)


if __name__ == "__main__":
    main()
