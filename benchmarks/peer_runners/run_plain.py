"""The floor: a plain timm + PyTorch loop (torch's AdamW defaults: lr 1e-3, weight decay 0.01;
cosine decay per step; cross-entropy), with the augmentation of finetune's recipe for the data
(``spec['augment']``: flips, rotation, shift, zoom after a direct resize, as finetune does).

    python run_plain.py '<json spec>'      # prints one JSON result line
"""

from __future__ import annotations

import numpy as np
import torch
from peerdata import Clock, emit, load_data, read_spec, rgb_image, scores, timm_model
from torch import nn
from torchvision import transforms as T

PACKAGES = ("torch", "torchvision", "timm", "numpy", "pillow")


class Images(torch.utils.data.Dataset):
    def __init__(self, items: list, labels: list[int], transform: T.Compose) -> None:
        self.items, self.labels, self.transform = items, labels, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(rgb_image(self.items[i])), self.labels[i]


def transforms(spec: dict, train: bool) -> T.Compose:
    """Resize straight to the square size (antialiased, the weights' filter), recipe augmentation, normalize."""
    pre, aug, size = spec["preprocessing"], spec["augment"], spec["image_size"]
    ops: list = [T.Resize((size, size), interpolation=T.InterpolationMode(pre["interpolation"]), antialias=True)]
    if train:
        ops += [T.RandomHorizontalFlip(aug["hflip"]), T.RandomVerticalFlip(aug["vflip"])]
        if aug["rotate"] or aug["shift"] or aug["zoom"]:
            ops.append(
                T.RandomAffine(aug["rotate"], translate=(aug["shift"],) * 2, scale=(1 - aug["zoom"], 1 + aug["zoom"]))
            )
    return T.Compose([*ops, T.ToTensor(), T.Normalize(pre["mean"], pre["std"])])


@torch.no_grad()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader) -> np.ndarray:
    model.eval()
    return torch.cat([model(x).softmax(1) for x, _ in loader]).numpy()


def loader(spec: dict, items: list, labels: list[int], train: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        Images(items, labels, transforms(spec, train)),
        batch_size=spec["batch_size"],
        shuffle=train,
        num_workers=spec["workers"],
        generator=torch.Generator().manual_seed(spec["seed"]),
    )


def main() -> None:
    spec = read_spec()
    clock = Clock()
    torch.manual_seed(spec["seed"])
    data = load_data(spec)
    model = timm_model(spec, len(data.classes))
    train = loader(spec, data.train.items, data.train.labels, True)
    val = loader(spec, data.val.items, data.val.labels, False)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec["epochs"] * len(train))
    for _ in range(spec["epochs"]):
        model.train()
        for x, y in train:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        val_scores = scores(predict(model, val), data.val.labels)
        clock.epoch(val_scores["acc"])
    test = (
        scores(predict(model, loader(spec, data.test.items, data.test.labels, False)), data.test.labels)
        if data.test
        else None
    )
    emit("plain", spec, clock, val_scores, test, PACKAGES)


if __name__ == "__main__":
    main()
