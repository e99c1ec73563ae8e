"""Safetensors exports: the head-only delta (``head``) or every tensor (``safetensors``), and rebuilding
the model from either. A head export stores only the tensors that differ from the pretrained backbone
(an adapter's own tensors always; loading rebuilds the adapter from the recorded config)
and pins the rest by a fingerprint (sha256 over the unchanged tensors); loading it refuses pretrained
weights whose fingerprint differs. The metadata also records a sha256 of every stored tensor, and
loading refuses a file whose tensors differ from them, or that records none (unless ``allow_unverified``).
Nothing is unpickled: tensors are safetensors, metadata JSON."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from finetune.export.bundle import (
    REEXPORT,
    ModelBundle,
    check_fields,
    metadata,
    parse_metadata,
    task_of,
    unverified,
)
from finetune.models.freezing import FineTuneModel
from finetune.models.weights import WeightsNotFoundError, WeightsRecord, resolve_weights
from finetune.run.config import typed_config
from finetune.run.errors import FinetuneError
from finetune.run.task import Task

log = logging.getLogger(__name__)

METADATA_KEY = "finetune"  # one key: safetensors writes several in random order
# What rebuilding the model reads from a safetensors export's metadata, besides every export's fields
REBUILD_FIELDS: dict[str, type] = {"format": str, "config": dict, "backbone": dict, "weights": dict, "fingerprint": str}


def fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 over one tensor's dtype, shape and bytes (recorded per stored tensor, checked on load)."""
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _resolve_backbone(cfg: DictConfig, weights: str | None) -> WeightsRecord:
    name = cfg.backbone.name
    try:
        return resolve_weights(name, weights or cfg.backbone.weights)
    except (ValueError, OSError, WeightsNotFoundError) as err:
        raise FinetuneError(
            f"cannot find the pretrained weights of {name}: {err}\npass the backbone weights file with weights=<file>"
        ) from None


def _pretrained_backbone(bundle: ModelBundle) -> dict[str, torch.Tensor]:
    """The pretrained backbone's tensors (``backbone.*``), from the weights the run was trained on."""
    if not bundle.cfg.backbone.pretrained:
        raise FinetuneError(
            "format=head stores only what changed from the pretrained backbone, but this "
            "run started from random weights (backbone.pretrained=false): use format=safetensors"
        )
    record = _resolve_backbone(bundle.cfg, bundle.backbone_weights)
    expected = bundle.weights.get("sha256")
    if record.sha256 != expected:
        raise FinetuneError(
            f"the pretrained weights found for {record.model} ({record.file}, sha256 "
            f"{record.sha256}) are not those the run was trained from (sha256 {expected}); "
            "pass the original file with weights=<file>"
        )
    reference = bundle.task.build_model(bundle.cfg, record, bundle.preprocessing.in_chans, len(bundle.class_names))
    added = {f"backbone.{n}" for n in reference.adapter.added} if reference.adapter else set()
    # an adapter's own tensors (LoRA A and B …) are always stored: they are not in the pretrained weights
    return {k: v for k, v in reference.state_dict().items() if k.startswith("backbone.") and k not in added}


def write_safetensors(bundle: ModelBundle, path: Path, head_only: bool) -> dict:
    """Save the tensors that differ from the pretrained backbone (``head_only``) or all of them."""
    state = bundle.model.state_dict()
    reference = _pretrained_backbone(bundle) if head_only else {}
    delta = {
        k: v.detach().contiguous() for k, v in state.items() if k not in reference or not torch.equal(v, reference[k])
    }
    frozen = {k: v for k, v in state.items() if k not in delta}
    record = metadata(bundle, "head" if head_only else "safetensors") | {
        "config": OmegaConf.to_container(bundle.cfg, resolve=True),
        "fingerprint": fingerprint(frozen),
        "frozen_tensors": len(frozen),
        "tensor_sha256": {name: tensor_sha256(tensor) for name, tensor in delta.items()},
        "delta": {"tensors": len(delta), "stages": sorted({bundle.model.stage_of(k) for k in delta})},
    }
    save_file(delta, str(path), metadata={METADATA_KEY: json.dumps(record, sort_keys=True)})
    return record


def embedded_metadata(path: Path) -> dict:
    """The metadata a ``.safetensors`` export carries in its header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except Exception as err:  # safetensors raises its own error types for a broken header
        raise FinetuneError(f"cannot read {path} as safetensors: {err}") from None
    if raw is None:
        raise FinetuneError(f"{path} has no finetune metadata: not made by finetune export")
    return parse_metadata(raw, path)


def load_head_export(
    path: str | Path, tasks: Mapping[str, Task], weights: str | Path | None = None, allow_unverified: bool = False
) -> FineTuneModel:
    """Rebuild the model of a ``.safetensors`` export (eval mode) by its task (of ``tasks``, by the name
    its metadata records). A head export rebuilds the backbone from its pretrained weights (``weights``:
    that file, else the recorded one, else the usual offline-first resolution) and refuses weights whose
    frozen tensors differ from those it was made on; ``allow_unverified``: see ``verified_tensors``."""
    path = Path(path)
    meta = embedded_metadata(path)
    check_fields(meta, path, {"task": str})
    task = task_of(meta, tasks, path)
    return rebuild(path, meta, task, None if weights is None else str(weights), allow_unverified)


def rebuild(
    path: Path, metadata: dict, task: Task, weights: str | None, allow_unverified: bool = False
) -> FineTuneModel:
    """The model ``task`` builds for a safetensors export whose ``metadata`` was already read (eval mode)."""
    check_fields(metadata, path, REBUILD_FIELDS)
    check_fields(metadata["backbone"], path, {"in_chans": int}, "backbone.")
    cfg = typed_config(metadata["config"], f"{path}'s config")
    if metadata["format"] == "head":
        record = _resolve_backbone(cfg, weights)
    else:
        record = resolve_weights(cfg.backbone.name, pretrained=False)  # every tensor is in the file
    tensors = verified_tensors(path, metadata, allow_unverified)
    classes = len(metadata["class_names"])
    model = task.build_model(cfg, record, metadata["backbone"]["in_chans"], classes)
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise FinetuneError(f"{path} holds tensors that {cfg.backbone.name} does not have, e.g. {unknown[:3]}")
    _check_shapes(path, tensors, state, classes)
    frozen = {k: v for k, v in state.items() if k not in tensors}
    found = fingerprint(frozen)
    if found != metadata["fingerprint"]:
        raise FinetuneError(_mismatch(path, metadata, record, found, len(frozen)))
    model.load_state_dict(tensors, strict=False)
    return model.eval()


def verified_tensors(path: Path, metadata: dict, allow_unverified: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors export, each checked against the sha256 its metadata records;
    one FinetuneError naming the first tensor that differs, is missing or was added. Metadata that
    records no sha256 is refused unless ``allow_unverified`` (then its tensors are used with a warning)."""
    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises its own error types for a broken file
        raise FinetuneError(
            f"cannot read the tensors of {path} ({err}): the file is damaged; re-export "
            "it with finetune export run=<run dir>"
        ) from None
    recorded = metadata.get("tensor_sha256")
    if recorded is None:  # exports made before per-tensor hashes were recorded, or a record removed
        if not allow_unverified:
            raise FinetuneError(unverified(path, "sha256 of its tensors"))
        log.warning(
            "%s records no sha256 of its tensors: they are not verified (allow_unverified); %s to have them checked",
            path,
            REEXPORT,
        )
        return tensors
    check_fields(metadata, path, {"tensor_sha256": dict})
    fix = "the file was changed after export; re-export it with finetune export run=<run dir>"
    extra, missing = sorted(set(tensors) - set(recorded)), sorted(set(recorded) - set(tensors))
    if extra or missing:
        name, state = (extra[0], "is not recorded in") if extra else (missing[0], "is missing from")
        raise FinetuneError(
            f"{path}: tensor {name!r} {state} the export ({len(extra)} added, {len(missing)} missing): {fix}"
        )
    for name in sorted(tensors):
        if tensor_sha256(tensors[name]) != recorded[name]:
            raise FinetuneError(
                f"{path}: tensor {name!r} does not match the sha256 recorded at export "
                f"({tuple(tensors[name].shape)}, {tensors[name].dtype}): {fix}"
            )
    return tensors


def _check_shapes(
    path: Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], classes: int
) -> None:
    """Every stored tensor fits the rebuilt model; a head sized for another number of classes than
    metadata["class_names"] lists is named with both counts."""
    wrong = [(k, tuple(v.shape), tuple(state[k].shape)) for k, v in tensors.items() if v.shape != state[k].shape]
    if not wrong:
        return
    name, stored, expected = next(
        (w for w in wrong if w[2] and w[2][0] == classes and w[1] and w[1][0] != classes), wrong[0]
    )
    if expected and expected[0] == classes and stored and stored[0] != classes:
        raise FinetuneError(
            f"{path}: its metadata lists {classes} class names but its head predicts "
            f"{stored[0]} classes (tensor {name!r} has shape {stored}); the class list was "
            "edited or belongs to another export: re-export the run"
        )
    raise FinetuneError(
        f"{path}: tensor {name!r} has shape {stored} but the model its metadata describes "
        f"needs {expected} ({len(wrong)} tensor(s) differ): re-export the run"
    )


def _mismatch(path: Path, metadata: dict, record: WeightsRecord, found: str, frozen: int) -> str:
    expected = metadata["weights"]
    return (
        f"{path} was made on {expected['model']} backbone weights with sha256 {expected['sha256']} "
        f"(source {expected['source']}), but the weights found now ({record.source}: {record.file}, "
        f"sha256 {record.sha256}) differ in its {frozen} frozen tensors (fingerprint {found[:12]}… "
        f"instead of {metadata['fingerprint'][:12]}…). Pass the original weights file: weights=<file> "
        "(finetune predict … weights=<file>, load_head_export(path, weights=<file>), "
        "or train with backbone.weights=<file>)"
    )
