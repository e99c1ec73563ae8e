"""Folder exports (``format=timm``): a folder that the model's own library opens, no finetune needed.

* ``timm`` (classification): ``timm/`` holds ``config.json`` + ``model.safetensors`` written by timm's own
  ``timm.models.save_for_hf``, so plain timm rebuilds the trained model, head included::

      model = timm.create_model("local-dir:runs/<run>/exports/timm", pretrained=True).eval()
      transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

  (``pretrained=True`` is needed: without it timm builds the architecture with random weights.)
  ``config.json`` records the class names (``label_names``), the arguments that rebuild the
  architecture (``model_args``: ``in_chans``, ``img_size`` of a ViT trained at another size) and the
  run's preprocessing in ``pretrained_cfg``: ``input_size``, ``mean``, ``std``, ``interpolation``,
  ``crop_pct=1.0`` and ``crop_mode="squash"`` (a straight resize to H x W, no crop, as the run did).
  Only a linear head (``head=linear``: dropout + one Linear) fits timm's classifier; another head is
  refused before anything is written.
* ``smp`` (segmentation): the same folder in segmentation_models_pytorch's layout (``config.json`` with
  ``encoder_weights: null``, so loading downloads nothing and needs no pretrained file,
  + ``model.safetensors`` + a model card ``README.md``), written by smp's ``save_pretrained``::

      model = segmentation_models_pytorch.from_pretrained("runs/<run>/exports/timm").eval()

  smp records no preprocessing: it is in ``finetune.json`` (below).

The run's task names its layout (``Task.folder_layout``, a name of ``LAYOUTS``; none: format=timm is
refused); the folder's metadata records it. Both carry ``finetune.json``: finetune's export metadata
(classes, preprocessing, training, the sha256 of ``model.safetensors``), which ``finetune predict`` /
``load_export`` read.

Upload the folder as it is to the Hugging Face Hub, then load it by its repo id::

    huggingface_hub.upload_folder(repo_id="<user>/<name>", folder_path="runs/<run>/exports/timm")
    timm.create_model("hf-hub:<user>/<name>", pretrained=True)   # or smp.from_pretrained("<user>/<name>")

(or ``timm.models.push_to_hf_hub(model, "<user>/<name>")`` with the model loaded as above, which
also writes a model card; it does not upload ``finetune.json``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import timm
from torch import nn

from finetune.export.bundle import ModelBundle, metadata
from finetune.export.registry import FOLDER_WEIGHTS
from finetune.models.factory import head_options
from finetune.models.weights import sha256_file
from finetune.run.errors import FinetuneError
from finetune.run.registry import Entry, Registry


def _linear_layer(head: nn.Module) -> nn.Linear | None:
    """The Linear of a ``head=linear`` head (Sequential(Dropout?, Linear)); None for any other head."""
    if not isinstance(head, nn.Sequential) or not len(head) or not isinstance(head[-1], nn.Linear):
        return None
    return head[-1] if all(isinstance(m, nn.Dropout) for m in head[:-1]) else None


def _layout(bundle: ModelBundle) -> FolderLayout:
    """The layout the bundle's task names; FinetuneError when it has none."""
    task = bundle.task
    if task.folder_layout is None:
        raise FinetuneError(
            f"format=timm: task={task.name} has no folder layout that its model's own library opens; "
            "use format=safetensors or onnx"
        )
    return LAYOUTS.get(task.folder_layout, key="folder layout")


def check_folder(bundle: ModelBundle) -> None:
    """FinetuneError when the bundle's model has no timm / smp equivalent (before anything is written)."""
    _layout(bundle).check(bundle)


def write_folder(bundle: ModelBundle, folder: Path) -> dict:
    """Write the model into the (existing, empty) ``folder`` in its task's layout; its metadata."""
    layout = _layout(bundle)
    layout.check(bundle)
    layout.write(bundle, folder)
    return metadata(bundle, "timm") | {"sha256": sha256_file(folder / FOLDER_WEIGHTS), "layout": layout.name}


def load_folder(folder: Path, meta: dict) -> nn.Module:
    """The model of a folder export, opened by its layout's library alone (eval mode)."""
    return LAYOUTS.get(meta.get("layout", "timm"), key="layout").load(folder)


# --- timm (a linear head on pooled features: timm's classifier) ----------------------------------


def _check_timm(bundle: ModelBundle) -> None:
    if _linear_layer(bundle.model.head) is None:
        raise FinetuneError(
            f"format=timm needs head=linear (one Linear layer, which becomes timm's classifier), "
            f"but this run has head={bundle.cfg.head.kind}; use format=safetensors or onnx"
        )


def _load_timm(folder: Path) -> nn.Module:
    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def _save_timm(bundle: ModelBundle, folder: Path) -> None:
    """A plain timm classifier with the run's backbone tensors and its linear head as timm's
    classifier, saved by timm with the run's class names and preprocessing."""
    backbone, linear = bundle.model.backbone, _linear_layer(bundle.model.head)
    arch, tag = bundle.weights["model"], bundle.weights.get("tag")
    args = timm.models.get_model_args(backbone)  # in_chans, img_size (ViTs), global_pool ... as built
    plain = timm.create_model(
        f"{arch}.{tag}" if tag else arch, pretrained=False, **(args | {"num_classes": linear.out_features})
    )
    classifier = plain.pretrained_cfg.get("classifier")
    if not isinstance(classifier, str):
        raise FinetuneError(
            f"format=timm: {arch} has no single classifier layer in timm ({classifier!r}); "
            "use format=safetensors or onnx"
        )
    state = dict(backbone.state_dict())
    state |= {f"{classifier}.weight": linear.weight, f"{classifier}.bias": linear.bias}
    expected = plain.state_dict()
    if set(state) != set(expected) or any(state[k].shape != v.shape for k, v in expected.items()):
        raise FinetuneError(
            f"format=timm: timm's {arch} classifier does not hold this run's backbone + head "
            f"(tensors differ: {sorted(set(state) ^ set(expected))[:3]}); use format=safetensors "
            "or onnx"
        )
    plain.load_state_dict(state)
    pre = bundle.preprocessing
    data_config = {
        "input_size": (pre.in_chans, *pre.size),
        "mean": pre.mean,
        "std": pre.std,
        "interpolation": pre.interpolation,
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    model_args = {"in_chans": pre.in_chans} | ({"img_size": args["img_size"]} if "img_size" in args else {})
    timm.models.save_for_hf(
        plain.eval(),
        str(folder),
        safe_serialization=True,
        data_config=data_config,
        model_args=model_args,
        # the run's own weights tag (none: not one of timm's, e.g. pip weights)
        model_config={"label_names": list(bundle.class_names), "pretrained_cfg": {"tag": tag}},
    )


# --- segmentation_models_pytorch (an smp decoder on a timm encoder) -----------------------------


def _check_smp(bundle: ModelBundle) -> None:
    """Every smp model the decoders build has its smp equivalent."""


def _save_smp(bundle: ModelBundle, folder: Path) -> None:
    _smp_model(bundle).save_pretrained(folder)


def _load_smp(folder: Path) -> nn.Module:
    import segmentation_models_pytorch as smp

    with redirect_stdout(io.StringIO()):  # huggingface_hub prints "Loading weights from local directory"
        return smp.from_pretrained(str(folder)).eval()


def _smp_model(bundle: ModelBundle) -> nn.Module:
    """The run's smp model rebuilt without pretrained weights (``encoder_weights=None``: loading the
    folder needs no download and no weights file) and given the trained tensors."""
    import segmentation_models_pytorch as smp

    net = smp.create_model(
        bundle.cfg.head.kind,
        encoder_name=f"tu-{bundle.weights['model']}",
        encoder_weights=None,
        in_channels=bundle.preprocessing.in_chans,
        classes=len(bundle.class_names),
        **head_options(bundle.cfg),
    )
    # FineTuneModel(backbone=net.encoder, head=DecoderHead(net.decoder, net.segmentation_head))
    state = {
        (f"encoder.{k.removeprefix('backbone.')}" if k.startswith("backbone.") else k.removeprefix("head.")): v
        for k, v in bundle.model.state_dict().items()
    }
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise FinetuneError(
            f"format=timm: the rebuilt {bundle.cfg.head.kind} does not hold this run's "
            f"tensors ({str(err).splitlines()[0]}); use format=safetensors or onnx"
        ) from None
    return net.eval()


# --- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderLayout(Entry):
    """A folder layout the model's own library opens: refuse a model it cannot hold, write, load."""

    check: Callable[[ModelBundle], None]  # FinetuneError before anything is written
    write: Callable[[ModelBundle, Path], None]  # into the existing, empty folder
    load: Callable[[Path], nn.Module]  # eval mode


LAYOUTS: Registry[FolderLayout] = Registry(
    "layout",
    [
        FolderLayout(
            "timm", "timm.create_model('local-dir:<folder>', pretrained=True)", _check_timm, _save_timm, _load_timm
        ),
        FolderLayout("smp", "segmentation_models_pytorch.from_pretrained(<folder>)", _check_smp, _save_smp, _load_smp),
    ],
)
