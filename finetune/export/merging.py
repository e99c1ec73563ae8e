"""Adapters merged for deployment: every format but ``head`` stores a plain model, the LoRA / DoRA
updates folded into the weights (``backbone.adapter``; BitFit adds no modules and needs no merge).

The merge is done in float64 and checked there: on the parity images the merged model must give the
unmerged model's logits within ``MERGE_TOLERANCE`` x the largest logit. A correct merge differs by
rounding only (measured, LoRA and DoRA: 1.5 to 16 float64 eps on resnet10t, resnet50, ViT-S/16 and
EfficientNet-Lite0), while a dropped or mis-scaled update shows at its own size (even a barely trained
adapter moves logits by 1e-6, about 4e9 float64 eps). The merged weights are then rounded once to the
run's dtype, and the parity gate compares the export with that merged model in the format's own
tolerance. (In float32, merged and unmerged differ by reordered sums, 1.5 to 13 float32 eps: too close
to a small update for the check to be made there.)
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace

import numpy as np
import torch
from omegaconf import OmegaConf

from finetune.export.bundle import ModelBundle
from finetune.run.errors import FinetuneError

MERGE_TOLERANCE = 1e4 * torch.finfo(torch.float64).eps  # relative to the largest logit: room for deep nets


def needs_merge(bundle: ModelBundle) -> bool:
    """Whether the model carries adapter modules (LoRA / DoRA) that a plain export must merge."""
    adapter = bundle.model.adapter
    return adapter is not None and bool(adapter.added) and not adapter.merged


def merged_bundle(bundle: ModelBundle, batch: np.ndarray) -> ModelBundle:
    """``bundle`` with its adapters merged into plain weights, checked in float64 on ``batch`` (the
    parity images as the run's pipeline feeds them); its config rebuilds a plain backbone."""
    if not needs_merge(bundle):
        return bundle
    dtype = next(bundle.model.parameters()).dtype
    exact = deepcopy(bundle.model).double().eval()
    inputs = torch.from_numpy(batch).double()
    with torch.no_grad():  # not inference_mode: the merged weights are saved afterwards
        expected = exact(inputs)
        merged = exact.merged().eval()
        actual = merged(inputs)
    scale = max(1.0, float(expected.abs().max()))
    diff = float((actual - expected).abs().max())
    if not diff <= MERGE_TOLERANCE * scale:
        raise FinetuneError(
            f"merging the {bundle.model.adapter.kind} adapters into plain weights changed the "
            f"logits by up to {diff:.3g} in float64 (allowed {MERGE_TOLERANCE:.2g} x {scale:.3g}): "
            "a target layer computes more than a plain Linear / convolution; export format=head, "
            "which keeps the adapters, or train with other backbone.adapter_targets"
        )
    cfg = deepcopy(bundle.cfg)
    OmegaConf.update(cfg, "backbone.adapter", "none")  # rebuilds the plain architecture the weights fit
    return replace(bundle, model=merged.to(dtype), cfg=cfg)
