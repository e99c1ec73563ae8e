"""segmentation_models_pytorch with a plain loop: ``smp.Unet`` on the benchmark's timm encoder and
weights file (``tu-<arch>``, the file passed to timm through ``pretrained_cfg_overlay``) with
finetune's decoder channels; smp's Dice loss + cross-entropy (unweighted), torch's AdamW defaults
(lr 1e-3, weight decay 0.01), cosine decay per step; the recipe's random crops and augmentation
(``spec['augment']``, torchvision v2 on image and label map together; colour jitter touches the
image only); evaluation on whole images padded to a multiple of 32 (the usual smp way), pixels
equal to ``ignore_index`` left out. mIoU: the mean over the classes present of TP / (TP + FP + FN)
from the pixel confusion matrix of the whole split.

    python run_smp.py '<json spec>'      # prints one JSON result line
"""

from __future__ import annotations

import numpy as np
import segmentation_models_pytorch as smp
import torch
from peerdata import Clock, emit, load_data, read_spec
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

PACKAGES = ("segmentation-models-pytorch", "torch", "torchvision", "timm", "numpy", "pillow")


class Crops(torch.utils.data.Dataset):
    """``samples`` random augmented crops of every training image per epoch."""

    def __init__(self, images: list[str], masks: list[str], samples: int, transform: v2.Compose) -> None:
        self.images, self.masks, self.samples, self.transform = images, masks, samples, transform

    def __len__(self) -> int:
        return len(self.images) * self.samples

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = read_pair(self.images[i // self.samples], self.masks[i // self.samples])
        image, mask = self.transform(image, mask)
        return image, mask.long()


def read_pair(image: str, mask: str) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    rgb = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"))).permute(2, 0, 1)
    return tv_tensors.Image(rgb), tv_tensors.Mask(torch.from_numpy(np.asarray(Image.open(mask), dtype=np.int64)))


def check_pretrained(encoder: nn.Module, weights: str) -> None:
    """Stop unless every encoder tensor equals the weights file's (smp would not say if it random-initialised)."""
    expected = load_file(weights)
    differ = [n for n, t in encoder.state_dict().items() if n not in expected or not torch.equal(t, expected[n])]
    if differ:
        raise SystemExit(f"encoder not loaded from {weights}: {differ[:5]}")


def train_transform(spec: dict) -> v2.Compose:
    aug, ignore = spec["augment"], spec["ignore_index"]
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore}
    ops: list = [v2.RandomHorizontalFlip(aug["hflip"]), v2.RandomVerticalFlip(aug["vflip"])]
    if aug["rotate"] or aug["zoom"]:
        ops.append(v2.RandomAffine(aug["rotate"], scale=(1 - aug["zoom"], 1 + aug["zoom"]), fill=fill))
    ops.append(v2.RandomCrop(spec["image_size"], pad_if_needed=True, fill=fill))  # segmentation: the crop size
    if aug["color_jitter"]:
        ops.append(v2.ColorJitter(aug["color_jitter"], aug["color_jitter"], aug["color_jitter"]))
    return v2.Compose([*ops, normalize(spec)])


def normalize(spec: dict) -> v2.Compose:
    """uint8 image → float, normalised with the weights' mean and std."""
    pre = spec["preprocessing"]
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre["mean"], pre["std"])])


@torch.no_grad()
def confusion(model: nn.Module, images: list[str], masks: list[str], spec: dict) -> np.ndarray:
    """Pixel confusion matrix [true, predicted] of whole images (padded to a multiple of 32)."""
    k, to_input = spec["num_classes"], normalize(spec)
    model.eval()
    total = np.zeros((k, k), dtype=np.int64)
    for image_path, mask_path in zip(images, masks):
        image, mask = read_pair(image_path, mask_path)
        x = to_input(image)[None]
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect")
        predicted = model(x)[0, :, :h, :w].argmax(0)
        keep = mask != spec["ignore_index"]
        total += np.bincount((mask[keep] * k + predicted[keep]).numpy(), minlength=k * k).reshape(k, k)
    return total


def segmentation_scores(matrix: np.ndarray) -> dict:
    """mIoU and mean Dice over the classes present (true or predicted), and pixel accuracy."""
    tp = np.diag(matrix).astype(float)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    present = (tp + fp + fn) > 0
    return {
        "miou": round(float((tp / np.maximum(tp + fp + fn, 1))[present].mean()), 6),
        "mdice": round(float((2 * tp / np.maximum(2 * tp + fp + fn, 1))[present].mean()), 6),
        "pixel_acc": round(float(tp.sum() / matrix.sum()), 6),
    }


def main() -> None:
    spec = read_spec()
    clock = Clock("miou")
    torch.manual_seed(spec["seed"])
    data = load_data(spec)
    overlay = {"file": spec["weights"], **spec["preprocessing"]}
    model = smp.Unet(
        f"tu-{spec['arch']}",
        encoder_weights=True,
        classes=spec["num_classes"],
        decoder_channels=spec["decoder_channels"],
        pretrained_cfg_overlay=overlay,
    )
    check_pretrained(model.encoder.model, spec["weights"])
    train = torch.utils.data.DataLoader(
        Crops(data.train.items, data.train.labels, spec["samples_per_image"], train_transform(spec)),
        batch_size=spec["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=spec["workers"],
        generator=torch.Generator().manual_seed(spec["seed"]),
    )
    dice = smp.losses.DiceLoss("multiclass", from_logits=True, ignore_index=spec["ignore_index"])
    cross_entropy = nn.CrossEntropyLoss(ignore_index=spec["ignore_index"])
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, spec["epochs"] * len(train))
    for _ in range(spec["epochs"]):
        model.train()
        for x, y in train:
            logits = model(x)
            loss = cross_entropy(logits, y) + dice(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        val = segmentation_scores(confusion(model, data.val.items, data.val.labels, spec))
        clock.epoch(val["miou"])
    test = segmentation_scores(confusion(model, data.test.items, data.test.labels, spec))
    emit("smp", spec, clock, val, test, PACKAGES)


if __name__ == "__main__":
    main()
