"""``finetune summary``: the counting table of a configured model (frozen stages
marked), of a finished run's model, or of a published architecture."""

from __future__ import annotations

import csv
import json

import pytest
import timm

from finetune.commands.summary import main
from finetune.models.saved_runs import load_run
from finetune.tasks.registry import get_task

from ..helpers import cli_in_process

RESNET18 = ["backbone=resnet18", "input_size=64", "backbone.freeze=2"]
FROZEN, TRAINABLE = ("stem", "stage1", "stage2"), ("stage3", "stage4", "head")


def test_cli_writes_stage_csv_with_frozen_stages_and_full_parameter_count(tmp_path):
    out = tmp_path / "stages.csv"
    done = cli_in_process("summary", *RESNET18, "format=csv", "per=stage", f"out={out}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["name"]: row for row in csv.DictReader(out.open())}
    assert list(rows) == [*FROZEN, *TRAINABLE]
    assert all(rows[s]["trainable"] == "frozen" for s in FROZEN)
    assert all(rows[s]["trainable"] == "trainable" for s in TRAINABLE)
    params = sum(p.numel() for p in timm.create_model("resnet18", num_classes=1000).parameters())
    assert sum(int(r["weights_with_bias"]) for r in rows.values()) == params  # only conv, norm, linear
    assert int(rows["head"]["weights_with_bias"]) == 512 * 1000 + 1000
    assert not list(tmp_path.glob(".*.tmp"))


def test_markdown_shows_layers_then_stages_with_totals(capsys):
    assert main([*RESNET18, "format=markdown", "classes=10"]) == 0
    text = capsys.readouterr().out
    assert text.index("## Layers") < text.index("## Stages")
    assert "| backbone.conv1 | Conv2d | 64x32x32 |" in text and "| stage2 |" in text
    assert "| head | 1 | 10 | 5,120 | 5,130 | 5,120 | 5,130 | trainable |" in text
    assert text.count("**Total**") == 2


def test_layer_csv_to_stdout(capsys):
    assert main([*RESNET18, "format=csv", "per=layer"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert rows[0]["name"] == "backbone.conv1" and rows[0]["trainable"] == "False"
    assert rows[-1]["name"] == "head.0" and rows[-1]["trainable"] == "True"


@pytest.mark.parametrize(
    "args, message",
    [
        (["backbone=resnet18", "backbone.freeze=9"], "has 4 stages"),
        (["backbone=resnet999"], "backbone=resnet999: not an option of backbone; choose one of"),
        (["backbone.name=resnet18x"], "Did you mean: resnet18"),
        (["backbone=resnet18", "format=csv", "per=both"], "choose per=layer or per=stage"),
        (["backbone=resnet18", "input_size=big"], "input_size='big'"),
    ],
)
def test_bad_arguments_give_one_clear_message_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("finetune: error:") and message in err and "Traceback" not in err


def test_segmentation_config_is_counted_at_the_input_size_asked(capsys):
    # seg_folder has no image_size: the input side is the task's key (dataset.crop_size)
    args = ["task=segmentation", "head=unet", "dataset=seg_folder", "backbone=resnet18", "input_size=64"]
    assert main([*args, "format=markdown", "per=layer", "classes=3"]) == 0
    text = capsys.readouterr().out
    assert "resnet18 + unet head (3 classes), input 3x64x64" in text.splitlines()[0]
    assert "| backbone.model.conv1 | Conv2d | 64x32x32 |" in text
    assert "| head.segmentation_head.0 | Conv2d | 3x64x64 |" in text  # the mask at the input's size


def test_without_input_size_the_backbone_is_counted_at_its_pretrained_size(capsys):
    assert main(["backbone=resnet18", "format=markdown", "per=stage"]) == 0  # dataset=digits: image_size=64
    assert "input 3x224x224" in capsys.readouterr().out.splitlines()[0]


# --- model=<source>:<name>: published architectures, named by their source ---


def stage_csv(args: list[str], capsys) -> dict[str, dict[str, str]]:
    assert main([*args, "format=csv", "per=stage"]) == 0
    return {row["name"]: row for row in csv.DictReader(capsys.readouterr().out.splitlines())}


def test_torchvision_and_timm_vgg16_are_different_networks(capsys):
    torchvision_vgg = stage_csv(["model=torchvision:vgg16"], capsys)
    timm_vgg = stage_csv(["model=timm:vgg16"], capsys)
    assert list(torchvision_vgg) == ["features", "avgpool", "classifier"]
    assert list(timm_vgg) == ["features", "pre_logits", "head"]  # timm's fc6/fc7 are convolutions
    for stages in (torchvision_vgg, timm_vgg):
        assert sum(int(s["weights_with_bias"]) for s in stages.values()) == 138_357_544


def test_paper_lenet5_and_torchvision_alexnet(capsys):
    assert main(["model=paper:lenet5", "format=markdown", "per=layer"]) == 0
    text = capsys.readouterr().out
    assert "1x32x32: 60,840 parameters, 60,000 trainable" in text
    assert "| C3 | PartialConv2d | 16x10x10 | 1,600 | 1,500 | 1,516 | 150,000 | 151,600 | yes |" in text
    assert "| **Total** |  |  | 8,094 | 60,592 | 60,840 | 332,824 | 340,908 |  |" in text
    alexnet = stage_csv(["model=torchvision:alexnet", "classes=10"], capsys)
    assert int(alexnet["classifier"]["weights_with_bias"]) == 9216 * 4096 + 4096 + 4096 * 4097 + 4096 * 10 + 10


def test_googlenet_reports_the_auxiliary_classifiers_it_does_not_count(capsys):
    assert main(["model=torchvision:googlenet", "format=markdown", "per=stage"]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    assert "13,004,888 parameters" in title and "6,379,984 parameters in no row" in title


@pytest.mark.parametrize(
    "args, message",
    [
        (["model=vgg16"], "model=torchvision:vgg16 or model=timm:vgg16"),
        (["model=torchvision:alexnett"], "did you mean model=torchvision:alexnet?"),
        (["model=timm:resnet1000"], "see timm.list_models('res*')"),
        (["model=paper:lenet"], "did you mean model=paper:lenet5"),
        (["model=caffe:alexnet"], "model=<torchvision|timm|paper>:<name>"),
        (["backbone=torchvision:alexnet"], "count a whole architecture with model=torchvision:alexnet"),
        (["model=torchvision:alexnet", "backbone.freeze=2"], "drop backbone.freeze=2"),
        (["model=torchvision:alexnet", "in_chans=1"], "takes 3 input channels"),
        (["model=torchvision:vgg16", "input_size=16"], "cannot take a 3x16x16 input"),
    ],
)
def test_bad_model_names_give_one_clear_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("finetune: error:") and message in err and err.count("\n") == 1


# --- run=<run dir>: the model a finished run trained ---


def test_run_summary_shows_the_runs_model(finished_run, capsys):
    data = json.loads((finished_run / "data.json").read_text())
    classes, in_chans = len(data["class_names"]), data["model_in_chans"]
    assert main([f"run={finished_run}", "format=markdown"]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    height, width = data["preprocessing"]["size"]
    assert "tf_efficientnet_lite0 + linear head" in title and f"{classes} classes" in title
    assert f"in_chans={in_chans}" in title and f"input {in_chans}x{height}x{width}" in title
    assert "last phase 'probe' (freeze=all)" in title
    stages = stage_csv([f"run={finished_run}"], capsys)
    assert stages.pop("head")["trainable"] == "trainable"
    assert {s["trainable"] for s in stages.values()} <= {"frozen", "-"}  # linear probe: backbone frozen
    head = load_run(finished_run, get_task("classification")).model.head
    assert sum(p.numel() for p in head.parameters()) == (1280 + 1) * classes


@pytest.mark.parametrize(
    "extra, message",
    [
        (["backbone=resnet18"], "drop backbone=resnet18"),
        (["classes=3"], "drop classes=3"),
        (["model=torchvision:alexnet"], "drop model=torchvision:alexnet"),
        (["input_size=64", "backbone.freeze=1"], "drop input_size=64 backbone.freeze=1"),
    ],
)
def test_run_with_model_changes_is_refused(tmp_path, extra, message, capsys):
    assert main([f"run={tmp_path}", *extra]) == 2  # refused before the run directory is read
    err = capsys.readouterr().err
    assert err.startswith("finetune: error: run= summarises the model the run trained") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("arg", ["+run=runs/x", "++run=runs/x", "+model=timm:vgg16"])
def test_plus_forms_of_summary_options_are_refused(arg, capsys):
    assert main([arg]) == 2  # Hydra would add the key to the config and summarise the default backbone
    err = capsys.readouterr().err
    key = arg.lstrip("+").partition("=")[0]
    assert err == f"finetune: error: {arg}: {key} is an option of summary, not a config key: write {arg.lstrip('+')}\n"


def test_run_that_is_not_a_run_directory(tmp_path, capsys):
    assert main([f"run={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"finetune: error: run={tmp_path}: {tmp_path / 'config.yaml'} is missing")
