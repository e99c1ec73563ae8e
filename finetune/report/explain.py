"""What a fine-tuned model looks at: its predictions, Grad-CAM, stage activations, first-layer filters.

``finetune explain run=<run dir> inputs=<image | folder | glob> [topk=5] [stage=stage3]
[channels=16] [filters=true] [out=<dir>]`` writes, per image, ``<out>/<image stem>/``:
``topk.json``, ``gradcam.png`` (image | Grad-CAM overlay) and ``activations_<stage>.png`` (the
``channels`` strongest channels of that stage's output), plus ``<out>/filters.png``: the backbone's
first-layer convolution filters before (the pretrained weights the run started from) and after
fine-tuning, side by side. ``out`` defaults to ``<run dir>/explain``.

What is listed and what Grad-CAM explains belong to the run's task (``Task.explainer``, in
``finetune/tasks/<task>/report.py``): for classification the top-k classes and the top-1 class's
logit; for segmentation the classes by share of predicted pixels and the summed logit of one
predicted class over its predicted pixels (pytorch-grad-cam's ``SemanticSegmentationTarget``).

A stage's output is the last of its modules to finish a forward call with a spatial output
(``B×C×H×W``, or ``B×tokens×C`` for ViTs) before global pooling starts: ``layer4`` for a ResNet,
``bn2`` (conv head + norm + act) for an EfficientNet. Grad-CAM (from ``grad-cam``, i.e.
pytorch-grad-cam) uses the last backbone stage's output; for ViTs the stage before it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.image import show_cam_on_image  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from timm.layers import SelectAdaptivePool2d  # noqa: E402
from torch import nn  # noqa: E402

from finetune.data.files import find_images  # noqa: E402
from finetune.data.images import require_readable  # noqa: E402
from finetune.models.freezing import FineTuneModel  # noqa: E402
from finetune.models.saved_runs import LoadedRun, load_run  # noqa: E402
from finetune.models.weights import resolve_weights  # noqa: E402
from finetune.report.plots import save_figure  # noqa: E402
from finetune.run.artifacts import write_json  # noqa: E402
from finetune.run.errors import FinetuneError  # noqa: E402
from finetune.run.task import Task  # noqa: E402

_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, SelectAdaptivePool2d)
FILTER_BACKGROUND = 1.0  # white gaps between filter tiles
MAX_FILTERS = 64


# --- model internals ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StageOutput:
    """The module (name in the model) whose output is a stage's output, and that output's H×W."""

    layer: str
    size: tuple[int, int]
    tokens: bool  # a ViT's B×N×C tokens rather than B×C×H×W maps


def stage_outputs(model: FineTuneModel, x: torch.Tensor) -> dict[str, StageOutput]:
    """Per backbone stage (stem first), the module whose output is the stage's output for input ``x``."""
    finished: dict[str, StageOutput] = {}
    pooling = False

    def on_pool(*_: object) -> None:
        nonlocal pooling
        pooling = True

    def on_output(name: str, stage: str) -> Callable[[nn.Module, tuple, object], None]:
        def hook(_: nn.Module, __: tuple, output: object) -> None:
            if not pooling and isinstance(output, torch.Tensor) and output.ndim in (3, 4):
                finished[stage] = StageOutput(f"backbone.{name}", tuple(as_maps(output).shape[-2:]), output.ndim == 3)

        return hook

    handles = []
    stage_by_name = model.stage_map.stage_by_name
    for name, module in model.backbone.named_modules():
        if name not in stage_by_name:  # the backbone itself, or a wrapper (a segmentation encoder's ``model``)
            continue
        if isinstance(module, _GLOBAL_POOLS):
            handles.append(module.register_forward_pre_hook(on_pool))
        handles.append(module.register_forward_hook(on_output(name, model.stage_map.stage_of(name))))
    try:
        with torch.no_grad():
            model.backbone(x)
    finally:
        for handle in handles:
            handle.remove()
    return {stage: finished[stage] for stage in model.stage_map.stages if stage in finished}


def cam_stage_of(outputs: dict[str, StageOutput]) -> str:
    """Grad-CAM's stage: the last one; for ViTs the one before it (with class-token pooling no gradient
    reaches the last block's patch tokens)."""
    stages = list(outputs)
    return stages[-2] if outputs[stages[-1]].tokens and len(stages) > 1 else stages[-1]


def as_maps(t: torch.Tensor) -> torch.Tensor:
    """B×C×H×W as is; ViT tokens B×N×C without their prefix (class/register) tokens as B×C×√N×√N."""
    if t.ndim == 4:
        return t
    side = math.isqrt(t.shape[1])
    return t[:, -side * side :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


def first_conv(model: FineTuneModel) -> nn.Conv2d:
    """The backbone's first 2-D convolution (stem conv, or a ViT's patch embedding)."""
    conv = next((m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise FinetuneError(
            f"{type(model.backbone).__name__} has no Conv2d layer: no filters to show; pass filters=false"
        )
    return conv


# --- what the model says and where it looks -----------------------------------------------------


@dataclass(frozen=True)
class Explained:
    """What a task says about the model's output for one image: the listing written to
    ``topk.json``, the class Grad-CAM explains (index, name), the pytorch-grad-cam target (a
    callable on one image's output), a one-line caption and extra ``topk.json`` keys."""

    topk: list[dict]
    index: int
    name: str
    target: Callable[[torch.Tensor], torch.Tensor]
    caption: str
    extra: dict = field(default_factory=dict)


class Explainer(Protocol):
    """The task-specific part of ``explain`` (``Task.explainer(run)``)."""

    def model_input(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """The 1×C×H×W model input for a decoded HWC uint8 image, and the (h, w) top-left part of
        it that shows the image (the rest is padding)."""
        ...

    def explain(self, logits: torch.Tensor, valid: tuple[int, int], k: int) -> Explained:
        """What to list (``k`` entries at most) and what Grad-CAM explains, from the model's output
        for the input (``valid``: the (h, w) of it that shows the image)."""
        ...


def grad_cam(
    model: FineTuneModel, x: torch.Tensor, target: int | Callable[[torch.Tensor], torch.Tensor], layer: str
) -> np.ndarray:
    """Grad-CAM (H×W in [0, 1], at the input's size) at module ``layer`` for one image: of a class
    index's logit, or of any pytorch-grad-cam ``target`` (a callable on the image's output)."""
    module = model.get_submodule(layer)
    target = ClassifierOutputTarget(target) if isinstance(target, int) else target
    with GradCAM(model, [module], reshape_transform=as_maps) as cam:  # input grad: works with a frozen backbone
        heatmap = cam(x.detach().clone().requires_grad_(True), targets=[target])[0]
    model.zero_grad(set_to_none=True)
    return heatmap


def strongest_channels(model: FineTuneModel, x: torch.Tensor, layer: str, n: int) -> tuple[list[int], np.ndarray]:
    """The ``n`` channels of ``layer``'s output with the highest mean activation, and their maps (n×h×w)."""
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: captured.append(as_maps(out)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    maps = captured[0][0].float().cpu()
    order = maps.mean(dim=(1, 2)).argsort(descending=True)[:n]
    return order.tolist(), maps[order].numpy()


# --- first-layer filters ------------------------------------------------------------------------


def filter_mosaic(weights: torch.Tensor, scale: torch.Tensor | None = None, gap: int = 1) -> np.ndarray:
    """Filters (O×I×k×k) as one RGB image: a near-square grid of tiles, zoomed, white gaps.

    Each filter maps to gray 0.5 ± w / (2·scale) (``scale``: per-filter, default max |w|), so
    passing the pretrained filters' scale shows before and after on the same colour scale. 3 input
    channels are shown as RGB, any other number as their mean in gray.
    """
    w = weights.detach().float().cpu()
    scale = (w.abs().amax(dim=(1, 2, 3)) if scale is None else scale).clamp_min(1e-12)
    tiles = (0.5 + w / (2 * scale[:, None, None, None])).clamp(0, 1)
    tiles = tiles if tiles.shape[1] == 3 else tiles.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    n, _, kh, kw = tiles.shape
    zoom = max(1, 36 // max(kh, kw))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = kh * zoom + gap, kw * zoom + gap
    mosaic = np.full((rows * th + gap, cols * tw + gap, 3), FILTER_BACKGROUND, dtype=np.float32)
    for i, tile in enumerate(tiles.permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, cols)
        big = np.kron(tile, np.ones((zoom, zoom, 1), dtype=np.float32))
        mosaic[gap + r * th : gap + r * th + kh * zoom, gap + c * tw : gap + c * tw + kw * zoom] = big
    return mosaic


def pretrained_filters(run: LoadedRun) -> torch.Tensor | None:
    """First-layer filters of the weights the run started from (None for a random-init run)."""
    record = run.weights
    if record["source"] == "random":
        return None
    name = f"{record['model']}.{record['tag']}" if record.get("tag") else record["model"]
    file = record.get("file")
    try:
        found = resolve_weights(name, weights=file if file and Path(file).is_file() else None)
    except (ValueError, OSError, RuntimeError) as err:
        raise FinetuneError(
            f"cannot load the pretrained weights this run started from: {err} "
            "(pass filters=false to skip the before/after filter grid)"
        ) from None
    if found.sha256 != record["sha256"]:
        raise FinetuneError(
            f"the pretrained weights found now ({found.file}, sha256 {found.sha256[:12]}…) are "
            f"not the ones this run started from (sha256 {str(record['sha256'])[:12]}…); "
            "pass filters=false to skip the before/after filter grid"
        )
    before = run.task.build_model(run.cfg, found, run.preprocessing.in_chans, len(run.class_names))
    return first_conv(before).weight.detach()


def plot_filters(before: torch.Tensor | None, after: torch.Tensor, path: Path, limit: int = MAX_FILTERS) -> Path:
    """Before | after mosaics of the first ``limit`` filters on one colour scale, saved as PNG."""
    shown = f"first {limit} of {after.shape[0]}" if after.shape[0] > limit else f"{after.shape[0]}"
    after = after[:limit]
    panels = [
        (
            "after fine-tuning",
            filter_mosaic(after, None if before is None else before[:limit].abs().amax(dim=(1, 2, 3))),
        )
    ]
    title = f"first-layer filters ({shown}, {after.shape[2]}x{after.shape[3]})"
    if before is None:
        title += ": the run started from random weights, no pretrained filters to compare"
    else:
        before = before[:limit]
        change = float((after - before).norm() / before.norm().clamp_min(1e-12))
        panels.insert(0, ("before (pretrained)", filter_mosaic(before)))
        title += f"; relative change |after - before| / |before| = {change:.2%}"
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5.4), squeeze=False)
    for ax, (label, mosaic) in zip(axes[0], panels):
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_title(label)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


# --- pictures of one image ----------------------------------------------------------------------


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """HWC uint8 (1 or 3 channels) as float RGB in [0, 1]."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    return rgb.astype(np.float32) / 255.0


def plot_gradcam(image: np.ndarray, cam: np.ndarray, label: str, path: Path) -> Path:
    """Image | Grad-CAM overlay (the CAM resized to the image), titled with the explained class."""
    rgb = _display_rgb(image)
    mask = cv2.resize(cam.astype(np.float32), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    overlay = show_cam_on_image(rgb, np.clip(mask, 0, 1), use_rgb=True, image_weight=0.55)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4 * rgb.shape[0] / rgb.shape[1] + 0.6))
    for ax, picture, title in zip(axes, (rgb, overlay), ("image", f"Grad-CAM: {label}")):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return save_figure(fig, path, dpi=100)


def plot_activations(channels: list[int], maps: np.ndarray, title: str, path: Path) -> Path:
    """A grid of activation maps, each on its own colour scale, labelled with its channel."""
    cols = math.ceil(math.sqrt(len(channels)))
    rows = math.ceil(len(channels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, channel, activation in zip(axes.flat, channels, maps):
        ax.imshow(activation, cmap="viridis", interpolation="nearest")
        ax.set_title(f"ch {channel}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


# --- inputs and the whole explanation -----------------------------------------------------------


@dataclass(frozen=True)
class ExplainOptions:
    """What to write: top-k size, the stage whose activations to show, how many channels, filters or not."""

    topk: int = 5
    stage: str | None = None  # default: the middle backbone stage
    channels: int = 16
    filters: bool = True


def _size(size: tuple[int, int]) -> str:
    return "x".join(map(str, size))


def _pick_stage(requested: str | None, outputs: dict[str, StageOutput]) -> str:
    """The requested stage, or by default the middle one after the stem (stage3 of a ResNet's four)."""
    if requested is None:
        stages = [s for s in outputs if s != "stem"] or list(outputs)
        return stages[len(stages) // 2]
    if requested not in outputs:
        raise FinetuneError(f"stage={requested!r}: this backbone's stages are {', '.join(outputs)}")
    return requested


def _folder_names(images: list[Path]) -> list[str]:
    """One output folder name per image: its stem, numbered when stems repeat."""
    names, seen = [], {}
    for image in images:
        seen[image.stem] = seen.get(image.stem, 0) + 1
        names.append(image.stem if seen[image.stem] == 1 else f"{image.stem}_{seen[image.stem]}")
    return names


def explain(
    run_dir: str | Path,
    task: Task,
    inputs: str,
    out: str | Path | None = None,
    options: ExplainOptions = ExplainOptions(),
) -> dict:
    """Write the explanation files of a run of ``task`` for every image in ``inputs``; return an
    index of what was written."""
    images = find_images(inputs)
    require_readable(images)  # the check training runs, before any work
    run = load_run(run_dir, task)
    out = Path(out).expanduser() if out else run.run_dir / "explain"
    if any(out.resolve() in image.resolve().parents for image in images):
        raise FinetuneError(f"out={out} holds the input images; choose another folder (default: <run>/explain)")
    model = run.model.eval()
    index: dict = {"run": str(run.run_dir), "checkpoint": str(run.checkpoint), "images": []}
    if options.filters:
        after = first_conv(model).weight.detach()
        index["filters"] = str(plot_filters(pretrained_filters(run), after, out / "filters.png"))
    explainer = task.explainer(run)
    outputs: dict[str, StageOutput] | None = None
    shape = None
    for image_path, folder in zip(images, _folder_names(images)):
        image = run.read_image(image_path)
        x, (height, width) = explainer.model_input(image)
        if x.shape[-2:] != shape:  # segmentation inputs keep their own sizes
            outputs, shape = stage_outputs(model, x), x.shape[-2:]
        stage = _pick_stage(options.stage, outputs)
        cam_stage = cam_stage_of(outputs)
        with torch.no_grad():
            explained = explainer.explain(model(x), (height, width), options.topk)
        cam_at, shown = outputs[cam_stage], outputs[stage]
        cam = grad_cam(model, x, explained.target, cam_at.layer)[:height, :width]
        channels, maps = strongest_channels(model, x, shown.layer, options.channels)
        target = out / folder
        entry = {
            "image": str(image_path),
            "topk": explained.topk,
            **explained.extra,
            "summary": explained.caption,
            "gradcam": {"class": explained.name, "index": explained.index, "layer": cam_at.layer},
            "activations": {"stage": stage, "layer": shown.layer, "channels": channels},
        }
        write_json(target / "topk.json", entry)
        plot_gradcam(image, cam, f"{explained.caption} at {_size(cam_at.size)}", target / "gradcam.png")
        plot_activations(
            channels,
            maps,
            f"{stage} ({shown.layer}, {_size(shown.size)}): {len(channels)} strongest channels",
            target / f"activations_{stage}.png",
        )
        index["images"].append({**entry, "folder": str(target)})
    write_json(out / "explain.json", index)
    return index
