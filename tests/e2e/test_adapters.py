"""Parameter-efficient fine-tuning (``backbone.adapter=lora|dora|bitfit``): only the adapter trains in
the stages a phase trains, merging gives the same model, head exports keep the adapters small, and a
real run exports a model that matches. Tiny random archs (resnet10t, timm's test_vit) at 32 px."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from finetune import models
from finetune.commands.train import train
from finetune.export import bundle, loading, tensors, writing
from finetune.export.merging import merged_bundle
from finetune.export.parity import run_pipeline
from finetune.models import adapters
from finetune.models.freezing import FineTuneModel, frozen_stages, stage_status
from finetune.models.weights import resolve_weights
from finetune.run.config import typed_config
from finetune.run.console import console
from finetune.run.errors import ConfigError, FinetuneError
from finetune.tasks.registry import TASKS, get_task
from finetune.training.validate import validate

from ..conftest import compose_config
from ..helpers import CLASSES, cli_in_process, imagenet_32px, real_images, sgd_steps, tensor_hashes, train_steps

CLASSIFICATION = get_task("classification")
PRE = imagenet_32px()
VIT = ("test_vit", ["dataset.image_size=32"])
RESNET = ("resnet10t", [])


def adapted(arch: str, kind: str, *overrides: str) -> FineTuneModel:
    """Random-weight ``arch`` with ``backbone.adapter=kind`` and 4 classes."""
    extra = dict((VIT, RESNET))[arch]
    cfg = compose_config(
        "backbone=resnet18",
        f"backbone.name={arch}",
        "backbone.pretrained=false",
        f"backbone.adapter={kind}",
        *extra,
        *overrides,
    )
    torch.manual_seed(0)
    model = CLASSIFICATION.build_model(cfg, resolve_weights(arch, pretrained=False), 3, len(CLASSES))
    with torch.no_grad():  # timm zero-inits each block's last BatchNorm scale, which would block the
        for module in model.modules():  # gradient of adapters before it; pretrained scales are not zero
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
    return model


def test_adapter_names_match_the_registry():
    assert list(models.ADAPTERS) == ["none", "lora", "dora", "bitfit"]


# --- what trains ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,kind,freeze",
    [("resnet10t", "lora", 2), ("test_vit", "dora", 0), ("resnet10t", "bitfit", 0), ("test_vit", "lora", "all")],
)
def test_only_the_adapter_of_trained_stages_and_the_head_change(arch, kind, freeze):
    """Every other tensor (pretrained weights, BatchNorm buffers, adapters of frozen stages) keeps its
    sha256 through optimizer steps in train mode; every adapter parameter of a trained stage changes."""
    model = adapted(arch, kind)
    frozen = frozen_stages(model.stage_map, freeze)
    model.set_frozen(frozen, "frozen")
    before = tensor_hashes(model)
    train_steps(model, 32)
    after = tensor_hashes(model)
    trained = {n for n, _ in model.named_parameters() if model.stage_of(n) not in frozen and model.trains(n)}
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}
    assert [k for k in before if k not in trained and before[k] != after[k]] == []
    assert [k for k in trained if before[k] == after[k]] == []
    backbone = {n for n in trained if n.startswith("backbone.")}
    assert bool(backbone) == (freeze != "all")
    if kind == "bitfit":  # biases and the affine parameters of normalization layers, nothing else
        owners = {n: type(model.get_submodule(n.rsplit(".", 1)[0])).__name__ for n in backbone}
        assert all(n.endswith(".bias") or "Norm" in owner for n, owner in owners.items())
        assert any("Norm" in owner and n.endswith(".weight") for n, owner in owners.items())
    if arch == "resnet10t":  # BatchNorm statistics of trained stages are among the unchanged tensors
        assert any("running_mean" in k and model.stage_of(k) not in frozen for k in before)


def test_stage_table_counts_adapter_parameters_per_stage():
    model = adapted("resnet10t", "lora", "backbone.adapter_rank=2")
    model.set_frozen(frozen_stages(model.stage_map, -1), "frozen")
    rows = {r.stage: r for r in stage_status(model)}
    lora = {n: p.numel() for n, p in model.named_parameters() if ".lora_" in n}
    assert sum(r.adapter for r in rows.values()) == sum(lora.values()) == model.adapter.parameters
    assert rows["stage4"].status == "lora" and rows["stage4"].trainable == rows["stage4"].adapter > 0
    assert rows["stage3"].status == "frozen" and rows["head"].status == "trainable"
    assert all(r.bn_mode in ("eval", "-") for r in rows.values())  # every BatchNorm keeps its statistics


def test_default_targets_come_from_module_types_and_kernel_sizes():
    vit = adapted("test_vit", "lora").adapter.targets
    assert {t.rsplit(".", 1)[-1] for t in vit} == {"qkv", "proj", "fc1", "fc2"}  # not patch_embed.proj
    resnet = adapted("resnet10t", "lora")  # basic blocks: 3x3 convs dominate, so they are adapted too
    assert "layer1.0.conv1" in resnet.adapter.targets and not any(t.startswith("conv1") for t in resnet.adapter.targets)
    chosen = adapted("resnet10t", "dora", "backbone.adapter_targets=[layer4.*.conv2,downsample.1]").adapter
    assert chosen.targets == (
        "layer4.0.conv2",
        "layer2.0.downsample.1",
        "layer3.0.downsample.1",
        "layer4.0.downsample.1",
    )


# --- merging ---------------------------------------------------------------------------------------


def _randomize_adapters(model: FineTuneModel) -> None:
    """Stand-in for training: B away from zero, so the update changes the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.05)


@pytest.mark.parametrize("arch,kind", [("test_vit", "lora"), ("resnet10t", "dora")])
def test_merged_model_equals_the_unmerged_one(arch, kind):
    """In float64 merged and unmerged agree to rounding (1e3 float64 eps x the largest logit); in
    float32 to reordered sums: 64 float32 eps x the largest logit (measured: 1.5 to 8 eps in both). The update
    itself moves the logits far more, so the check is not vacuous."""
    model = adapted(arch, kind).eval()
    _randomize_adapters(model)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        unmerged, merged = model(x), model.merged().eval()(x)
        exact = deepcopy(model).double()
        exact_unmerged, exact_merged = exact(x.double()), exact.merged()(x.double())
    scale = max(1.0, float(unmerged.abs().max()))
    assert float((exact_merged - exact_unmerged).abs().max()) <= 1e3 * torch.finfo(torch.float64).eps * scale
    assert float((merged - unmerged).abs().max()) <= 64 * torch.finfo(torch.float32).eps * scale
    plain = adapted(arch, "none")
    assert set(model.merged().state_dict()) == set(plain.state_dict())  # plain names: timm loads it
    with torch.no_grad():
        plain.load_state_dict(model.merged().state_dict())
        assert float((plain.eval()(x) - merged).abs().max()) == 0.0
        update = float((unmerged - _without_update(model)(x)).abs().max())
    assert update > 1e3 * 64 * torch.finfo(torch.float32).eps * scale


def _without_update(model: FineTuneModel) -> FineTuneModel:
    copy = model.merged()  # merged weights overwritten by the unadapted ones
    base = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    copy.load_state_dict(base)
    return copy.eval()


# --- exports -------------------------------------------------------------------------------------


def trained(weights_file, kind: str) -> bundle.ModelBundle:
    """resnet10t from the weights file with an adapter, stages 3-4 trained by a few SGD steps."""
    cfg = compose_config(
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights_file}",
        f"backbone.adapter={kind}",
        "backbone.adapter_rank=4",
        "dataset.image_size=32",
    )
    record = resolve_weights("resnet10t", weights_file)
    torch.manual_seed(0)
    model = CLASSIFICATION.build_model(cfg, record, 3, len(CLASSES))
    model.set_frozen(frozen_stages(model.stage_map, 2), "frozen")
    sgd_steps(model, lr=0.5, steps=3)
    return bundle.ModelBundle(model.eval(), cfg, CLASSES, CLASSIFICATION, PRE, 3, record.to_dict(), origin="test")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(loading.preprocess(real_images(), PRE)))


@pytest.mark.parametrize("kind", ["lora", "bitfit"])
def test_head_export_keeps_the_adapter_and_reloads_to_the_same_logits(tmp_path, weights_file, kind):
    run = trained(weights_file, kind)
    result = writing.export(run, "head", tmp_path, real_images())
    stored = load_file(result.path)
    adapter = run.model.adapter
    expected = {f"backbone.{n}" for n in adapter.added} | {n for n in run.model.state_dict() if n.startswith("head.")}
    if kind == "bitfit":  # the biases and norm parameters that changed: those of stages 3 and 4
        expected |= {n for n, p in run.model.named_parameters() if p.requires_grad}
    assert set(stored) == expected
    assert result.bytes < 0.1 * sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    meta = loading.load_export(result.path, tasks=TASKS).metadata
    assert meta["adapter"] == adapter.to_dict() and meta["adapter"]["merged"] is False
    assert meta["adapter"]["parameters"] == sum(
        p.numel() for n, p in run.model.backbone.named_parameters() if adapter.trains(n)
    )
    reloaded = tensors.load_head_export(result.path, TASKS)
    assert reloaded.adapter is not None and torch.equal(_logits(reloaded), _logits(run.model))


def test_plain_exports_merge_the_adapter(tmp_path, weights_file):
    """safetensors / timm hold a plain resnet10t (no adapter tensors) that timm alone loads; their parity
    gate compares them with the merged model, which the float64 check tied to the run's."""
    run = trained(weights_file, "dora")
    for fmt in ("safetensors", "timm"):
        result = writing.export(run, fmt, tmp_path, real_images())
        assert result.parity.passed
        exported = loading.load_export(result.path, tasks=TASKS)
        assert exported.metadata["adapter"] | {"merged": False} == run.model.adapter.to_dict()
        assert exported.metadata["adapter"]["merged"] is True
        module = exported.torch_module
        assert not any(".lora_" in n or "base_layer" in n for n in module.state_dict())
        scale = float(_logits(run.model).abs().max())
        assert float((_logits(module) - _logits(run.model)).abs().max()) <= 64 * torch.finfo(torch.float32).eps * scale


def test_a_merge_that_changes_the_model_is_refused(weights_file, monkeypatch):
    run = trained(weights_file, "lora")
    monkeypatch.setattr("finetune.models.freezing.merge_adapters", _merge_without_update)
    with pytest.raises(FinetuneError, match="changed the logits"):
        merged_bundle(run, run_pipeline(run, real_images()))


def _merge_without_update(backbone: torch.nn.Module) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in list(backbone.named_modules()):
        if isinstance(layer, BaseTunerLayer):  # the update dropped instead of merged
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent), child, layer.get_base_layer())


# --- config errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override,message",
    [
        ("backbone.adapter=lorax", "backbone.adapter='lorax' is not known: choose one of none, lora, dora, bitfit"),
        ("backbone.adapter_rank=0", "backbone.adapter_rank=0: the rank"),
        ("backbone.adapter_alpha=-1", "backbone.adapter_alpha=-1: the update is scaled"),
        ("backbone.adapter_targets=[]", "a list of module-name patterns"),
    ],
)
def test_bad_adapter_settings_are_refused_by_the_config_check(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(compose_config("backbone.adapter=lora", override), CLASSIFICATION)


def test_targets_without_lora_or_matching_nothing_are_refused():
    with pytest.raises(ConfigError, match="backbone.adapter=bitfit"):
        validate(compose_config("backbone.adapter=bitfit", "backbone.adapter_targets=[qkv]"), CLASSIFICATION)
    with pytest.raises(FinetuneError, match="'qkv' matches no Linear or dense Conv2d module of resnet10t"):
        adapted("resnet10t", "lora", "backbone.adapter_targets=[qkv]")


def test_a_config_written_before_adapters_existed_trains_without_one():
    saved = OmegaConf.to_container(compose_config(), resolve=True)
    for key in ("adapter", "adapter_rank", "adapter_alpha", "adapter_targets"):
        del saved["backbone"][key]
    cfg = typed_config(saved)  # as a run directory's config.yaml is read back
    validate(cfg, CLASSIFICATION)
    assert adapters.AdapterSpec.from_config(cfg).kind == "none"


def test_the_cli_refuses_an_unknown_adapter_before_loading_anything(tmp_path):
    out = cli_in_process("backbone.adapter=lorax", cwd=tmp_path)
    assert out.returncode == 2 and "backbone.adapter='lorax' is not known" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory: refused before Hydra, data or weights


# --- a real run ----------------------------------------------------------------------------------


def test_probe_then_lora_run_exports_a_matching_model(tmp_path, weights_file, capsys, monkeypatch):
    """Digits, resnet10t from a weights file: a probe on cached features, then LoRA in every stage.
    The pretrained tensors end as they began; the head export keeps the adapters and the ONNX export
    (merged) passes its parity gate."""
    phases = (
        "schedule.phases=[{name: probe, epochs: 1, freeze: all},"
        "{name: lora, epochs: 1, freeze: 0, backbone_lr_mult: 1.0}]"
    )
    cfg = compose_config(
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights_file}",
        "backbone.adapter=lora",
        "backbone.adapter_rank=4",
        "dataset.image_size=32",
        "schedule.batch_size=16",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.progress_bar=false",
        "logger=csv",
        "checkpoints.keep=both",
        phases,
    )
    monkeypatch.setattr(console, "width", 200)  # the stage table whole on one line per row (a pipe gets 80)
    train(cfg, tmp_path)
    printed = capsys.readouterr().out
    assert "lora params" in printed and "training the head on cached features" in printed
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    pretrained = load_file(weights_file)
    base = {
        k.removeprefix("model.backbone.").replace(".base_layer.", "."): v
        for k, v in state.items()
        if k.startswith("model.backbone.") and ".lora_" not in k
    }
    assert all(torch.equal(v, pretrained[k]) for k, v in base.items())
    assert any(v.abs().max() > 0 for k, v in state.items() if ".lora_B." in k)
    head = loading.load_export(tmp_path / "exports" / "head.safetensors", tasks=TASKS).metadata
    assert head["adapter"]["kind"] == "lora" and head["delta"]["tensors"] < len(state) / 2
    [onnx] = writing.export_run(tmp_path, CLASSIFICATION, ["onnx"])
    assert onnx.parity.passed and onnx.parity.max_abs_diff <= onnx.parity.tolerance
    deployed = loading.load_export(onnx.path, tasks=TASKS)  # against the run's own (unmerged) model, too
    run = bundle.ModelBundle.from_run(tmp_path, CLASSIFICATION)
    images = [image[..., :1] for image in real_images()[:3]]  # digits are grayscale
    expected = run.model(torch.from_numpy(deployed.preprocess(images))).detach().numpy()
    assert np.abs(deployed.logits(images) - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
