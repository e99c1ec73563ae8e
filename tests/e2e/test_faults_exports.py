"""Fault injection on exports and checkpoints that are tampered with or not what they claim (issue 25,
items 9, 14, 16, 17): each ends in one ``finetune: error:`` line (exit code 2, no traceback) naming the
file, changes no file, writes no output and runs nothing a pickle carries (its payload would create a
marker file). Tiny inputs: resnet10t exports of random weights at 32 px; the session's finished run."""

from __future__ import annotations

import io
import json
import logging
import shutil
import zipfile
from pathlib import Path

import pytest
import skimage.data
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import finetune
from finetune.commands import export as export_command
from finetune.commands import predict as predict_command
from finetune.data.transforms import Preprocessing
from finetune.export.init_head import init_head_from
from finetune.export.loading import load_export
from finetune.models.weights import resolve_weights, sha256_file
from finetune.run.errors import FinetuneError
from finetune.tasks.registry import TASKS, get_task

from ..conftest import compose_config
from ..helpers import (
    assert_refused,
    cli_in_process,
    export_tiny_resnet,
    flip_byte,
    rewrite_embedded,
    run_finetune,
    tree_hashes,
)

PRE = Preprocessing((32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 3)
CLASSES = ["ant", "bee", "wasp"]
UNSAFE_ADVICE = ("weights_only=False", "weights_only set to False", "weights_only=false")


class Payload:
    """What a malicious pickle carries: unpickling it creates ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A tiny resnet10t (linear probe on stand-in "pretrained" weights) exported as head, safetensors,
    pt2 and torchscript, each through the parity gate."""
    return export_tiny_resnet(
        tmp_path_factory.mktemp("exports_faults"), CLASSES, ("head", "safetensors", "pt2", "torchscript")
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(skimage.data.chelsea()[::8, ::8]).save(folder / "chelsea.png")
    return folder


def copy_export(exports: Path, name: str, dest: Path) -> Path:
    """``name`` and its sidecar copied into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for file in exports.glob(f"{name}*"):
        shutil.copyfile(file, dest / file.name)
    return dest / name


def embedded(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["finetune"])


def rewrite_sidecar(path: Path, change) -> Path:
    """Apply ``change(metadata)`` to the JSON sidecar of the export file ``path``."""
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text())
    change(meta)
    sidecar.write_text(json.dumps(meta))
    return sidecar


def forge_sidecar(path: Path) -> None:
    """Make the sidecar record the sha256 of whatever ``path`` now holds (what an attacker can do)."""
    rewrite_sidecar(path, lambda meta: meta.update(sha256=sha256_file(path)))


def rewrite_zip(path: Path, replace: dict[str, bytes]) -> None:
    """Rewrite the zip archive ``path`` with the members named in ``replace`` given new bytes."""
    with zipfile.ZipFile(path) as old:
        members = {name: old.read(name) for name in old.namelist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as new:
        for name, data in (members | replace).items():
            new.writestr(name, data)


def one_error(code: int, err: str, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr: ``finetune: error:`` with every fragment, no unsafe advice."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("finetune: error: "), (code, err[-3000:])
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not any(advice in lines[0] for advice in UNSAFE_ADVICE), lines[0]
    return lines[0]


def predict(capsys, export_path: Path, inputs: Path, out: Path, *extra: str) -> tuple[int, str]:
    """``finetune predict`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = predict_command.main([f"export={export_path}", f"inputs={inputs}", f"out={out}", *extra])
    return code, capsys.readouterr().err


# --- 9: a missing integrity record is an error unless allow_unverified ---------------------------


@pytest.mark.parametrize("name", ["head.safetensors", "model.safetensors"])
def test_tampered_tensor_with_its_record_deleted_is_refused(exports, inputs, tmp_path, capsys, name):
    path = copy_export(exports, name, tmp_path / "tampered")
    flip_byte(path, "head.0.weight")
    rewrite_embedded(path, lambda meta: meta.pop("tensor_sha256"))
    before = tree_hashes(tmp_path / "tampered")
    with pytest.raises(FinetuneError, match="records no sha256 of its tensors") as refused:
        load_export(path, tasks=TASKS)
    assert "allow_unverified" in str(refused.value)
    with pytest.raises(FinetuneError, match="records no sha256 of its tensors"):
        finetune.load(path)
    code, err = predict(capsys, path, inputs, tmp_path / "p.csv")
    one_error(code, err, str(path), "records no sha256 of its tensors", "re-export", "allow_unverified=true")
    assert not (tmp_path / "p.csv").exists() and tree_hashes(tmp_path / "tampered") == before


def test_allow_unverified_loads_an_export_without_records_and_says_so(exports, inputs, tmp_path, capsys, caplog):
    path = copy_export(exports, "model.safetensors", tmp_path / "old")
    rewrite_embedded(path, lambda meta: meta.pop("tensor_sha256"))
    with caplog.at_level(logging.WARNING):
        model = finetune.load(path, allow_unverified=True)
    assert model.class_names == CLASSES
    assert any("not verified" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    reference = load_export(exports / "model.safetensors", tasks=TASKS).logits([skimage.data.chelsea()])
    assert (abs(model.exported.logits([skimage.data.chelsea()]) - reference) <= 1e-6).all()
    code, err = predict(capsys, path, inputs, tmp_path / "p.csv", "allow_unverified=true")
    assert code == 0 and (tmp_path / "p.csv").is_file(), err[-3000:]


def test_allow_unverified_never_accepts_a_record_that_differs(exports, tmp_path):
    path = copy_export(exports, "model.safetensors", tmp_path / "t")
    flip_byte(path, "head.0.weight")
    with pytest.raises(FinetuneError, match="tensor 'head.0.weight' does not match the sha256 recorded"):
        load_export(path, allow_unverified=True, tasks=TASKS)
    pt2 = copy_export(exports, "model.pt2", tmp_path / "pt2")
    rewrite_sidecar(pt2, lambda meta: meta.update(sha256="0" * 64))
    with pytest.raises(FinetuneError, match="describes another model file"):
        load_export(pt2, allow_unverified=True, tasks=TASKS)


@pytest.mark.parametrize("name", ["model.pt2", "model.torchscript.pt"])
def test_sidecar_without_the_model_sha256_is_refused_unless_allowed(exports, inputs, tmp_path, capsys, name):
    path = copy_export(exports, name, tmp_path / "e")
    sidecar = rewrite_sidecar(path, lambda meta: meta.pop("sha256"))
    code, err = predict(capsys, path, inputs, tmp_path / "p.csv")
    one_error(code, err, str(sidecar), f"records no sha256 of {path}", "allow_unverified=true")
    assert not (tmp_path / "p.csv").exists()
    assert load_export(path, allow_unverified=True, tasks=TASKS).class_names == CLASSES


# --- 14: a checkpoint holding pickled objects ----------------------------------------------------


@pytest.fixture
def pickled_run(finished_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the finished run whose best.ckpt is a pickle with a payload; (run, marker)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "payload-ran"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, run / "checkpoints" / "best.ckpt")
    return run, marker


def test_export_of_a_run_with_a_pickled_checkpoint_is_one_line(pickled_run, capsys):
    run, marker = pickled_run
    before = tree_hashes(run)
    capsys.readouterr()
    code = export_command.main([f"run={run}", "format=safetensors"])
    one_error(
        code,
        capsys.readouterr().err,
        str(run / "checkpoints" / "best.ckpt"),
        "objects finetune never writes in a checkpoint",
        "not a finetune checkpoint, or was tampered with",
    )
    assert tree_hashes(run) == before and not marker.exists()  # no export written, nothing in the pickle ran


def test_load_and_init_from_refuse_a_pickled_checkpoint(pickled_run):
    run, marker = pickled_run
    for path in (run, run / "checkpoints" / "best.ckpt"):
        with pytest.raises(FinetuneError, match="objects finetune never writes in a checkpoint") as refused:
            finetune.load(path)
        assert str(run / "checkpoints" / "best.ckpt") in str(refused.value)
        assert not any(advice in str(refused.value) for advice in UNSAFE_ADVICE)
    cfg = compose_config("backbone=resnet18", "backbone.name=resnet10t", "backbone.pretrained=false")
    model = get_task("classification").build_model(cfg, resolve_weights("resnet10t", pretrained=False), 3, 2)
    with pytest.raises(FinetuneError, match="objects finetune never writes in a checkpoint"):
        init_head_from(model, ["0", "1"], run)
    assert not marker.exists()


def test_a_re_test_of_a_run_whose_tested_checkpoint_is_a_pickle_is_one_line(finished_run, tmp_path):
    # resume continues from a good last.ckpt, then tests best.ckpt (checkpoints.keep=best): a pickle there
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    best = run / "checkpoints" / "best.ckpt"
    shutil.copy(best, run / "checkpoints" / "last.ckpt")
    marker = tmp_path / "payload-ran"
    torch.save({"state_dict": {}, "payload": Payload(marker)}, best)
    out = cli_in_process("resume=run", "resume_finished=true", cwd=tmp_path)
    line = assert_refused(out, "objects finetune never writes in a checkpoint")
    assert "run/checkpoints/best.ckpt holds" in line and not any(advice in line for advice in UNSAFE_ADVICE)
    assert not marker.exists()


# --- 16: export metadata that is not JSON or lacks a field ---------------------------------------


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("preprocessing.mean", lambda meta: meta["preprocessing"].pop("mean")),
        ("preprocessing.std", lambda meta: meta["preprocessing"].pop("std")),
        ("class_names", lambda meta: meta.pop("class_names")),
        ("preprocessing.mean", lambda meta: meta["preprocessing"].update(mean="0.5")),
    ],
)
def test_sidecar_missing_or_bad_field_is_named(exports, inputs, tmp_path, capsys, field, change):
    path = copy_export(exports, "model.pt2", tmp_path / "e")
    sidecar = rewrite_sidecar(path, change)
    code, err = predict(capsys, path, inputs, tmp_path / "p.csv")
    one_error(code, err, str(sidecar), f"'{field}'", "re-export")


def test_embedded_metadata_without_mean_is_named(exports, tmp_path):
    path = copy_export(exports, "head.safetensors", tmp_path / "e")
    rewrite_embedded(path, lambda meta: meta["preprocessing"].pop("mean"))
    with pytest.raises(FinetuneError, match=r"'preprocessing.mean' is missing"):
        load_export(path, tasks=TASKS)


def test_sidecar_that_is_not_json_is_named(exports, inputs, tmp_path, capsys):
    path = copy_export(exports, "model.pt2", tmp_path / "e")
    sidecar = path.with_name("model.pt2.json")
    sidecar.write_text(sidecar.read_text()[:-40])
    code, err = predict(capsys, path, inputs, tmp_path / "p.csv")
    one_error(code, err, str(sidecar), "is not valid JSON", "line ")


def test_embedded_metadata_that_is_not_json_is_named(exports, tmp_path):
    path = copy_export(exports, "model.safetensors", tmp_path / "e")
    save_file(load_file(path), str(path), metadata={"finetune": "{not json"})
    with pytest.raises(FinetuneError, match=rf"{path}: its finetune metadata is not valid JSON"):
        load_export(path, tasks=TASKS)


# --- 17: pickles posing as pt2 / TorchScript exports with a forged sidecar sha256 -----------------


@pytest.mark.parametrize(
    ("name", "kind", "what"),
    [
        (
            "model.torchscript.pt",
            "torch.save",
            "is not a TorchScript export finetune writes: it has no TorchScript code",
        ),
        ("model.torchscript.pt", "pickle", "is not a TorchScript export finetune writes: not a zip archive"),
        ("model.pt2", "torch.save", "is not a pt2 export finetune writes: it holds"),
        ("model.pt2", "pickle", "is not a pt2 export finetune writes: not a zip archive"),
    ],
)
def test_pickle_posing_as_an_export_is_refused_unread(exports, inputs, tmp_path, capsys, name, kind, what):
    path = copy_export(exports, name, tmp_path / "e")
    marker = tmp_path / "payload-ran"
    if kind == "torch.save":
        torch.save({"model": Payload(marker)}, path)
    else:
        import pickle

        path.write_bytes(pickle.dumps(Payload(marker)))
    forge_sidecar(path)
    before = tree_hashes(tmp_path / "e")
    code, err = predict(capsys, path, inputs, tmp_path / "p.csv")
    one_error(code, err, f"{path} {what}", "re-export")
    assert not marker.exists() and not (tmp_path / "p.csv").exists() and tree_hashes(tmp_path / "e") == before


def test_pickle_posing_as_pt2_is_one_line_from_the_command(exports, inputs, tmp_path):
    """The command in its own process: torch logs nothing either (it never opens the file)."""
    path = copy_export(exports, "model.pt2", tmp_path / "e")
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker)}, path)
    forge_sidecar(path)
    out = run_finetune("predict", f"export={path}", f"inputs={inputs}", f"out={tmp_path / 'p.csv'}", cwd=tmp_path)
    line = assert_refused(out, f"{path} is not a pt2 export finetune writes: it holds")
    assert not any(advice in line for advice in UNSAFE_ADVICE)
    assert not marker.exists() and not (tmp_path / "p.csv").exists()


def pickled_sample_inputs(path: Path, marker: Path) -> None:
    """torch.export.load reads sample inputs with weights_only=True and falls back to False."""
    buffer = io.BytesIO()
    torch.save(((Payload(marker),), {}), buffer)
    rewrite_zip(path, {"archive/data/sample_inputs/model.pt": buffer.getvalue()})


def pickled_weight(path: Path, marker: Path) -> None:
    """A weight the archive's config marks ``use_pickle``: torch.export.load unpickles it unrestricted."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("archive/data/weights/model_weights_config.json"))
    entry = next(iter(config["config"].values()))
    entry["use_pickle"] = True
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    rewrite_zip(
        path,
        {
            "archive/data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"archive/data/weights/{entry['path_name']}": buffer.getvalue(),
        },
    )


@pytest.mark.parametrize(("tamper", "what"), [(pickled_sample_inputs, "sample inputs"), (pickled_weight, "pickled")])
def test_pt2_archive_carrying_a_pickle_is_refused_unread(exports, tmp_path, tamper, what):
    path = copy_export(exports, "model.pt2", tmp_path / "e")
    marker = tmp_path / "payload-ran"
    tamper(path, marker)
    forge_sidecar(path)
    with pytest.raises(FinetuneError, match=f"{path} is not a pt2 export finetune writes") as refused:
        load_export(path, tasks=TASKS)
    assert what in str(refused.value)
    assert not marker.exists()


def test_genuine_pt2_and_torchscript_exports_still_load(exports):
    reference = load_export(exports / "model.safetensors", tasks=TASKS).logits([skimage.data.chelsea()])
    for name in ("model.pt2", "model.torchscript.pt"):
        logits = load_export(exports / name, tasks=TASKS).logits([skimage.data.chelsea()])
        assert (abs(logits - reference) <= 1e-4 * max(1.0, abs(reference).max())).all(), name
