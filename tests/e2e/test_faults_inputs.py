"""Fault injection on inputs (issue 14): each bad input ends in one ``finetune: error:`` line with
exit code 2 and no traceback, and leaves the input folders unchanged (sha256 of every file); inputs
that were accepted in silence (duplicate rows, paths leaving the root, a cut JPEG closed with its end
marker, a tampered export tensor) are refused. Tiny inputs: PNG/JPEG files written with PIL, resnet10t
exports from random weights."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from safetensors.torch import load_file

from finetune.commands import predict as pr
from finetune.data.configs import CsvConfig
from finetune.data.folders import load_csv
from finetune.data.images import inspect_image
from finetune.data.transforms import Preprocessing
from finetune.export.loading import load_export
from finetune.models.weights import WeightsError, resolve_weights
from finetune.run.errors import DatasetError, FinetuneError
from finetune.tasks.registry import TASKS

from ..helpers import cli_in_process, export_tiny_resnet, flip_byte, jpeg_bytes, rewrite_embedded, write_png

PRE = Preprocessing((32, 32), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear", 3)
CLASSES = ["ant", "bee", "wasp"]


# --- helpers ------------------------------------------------------------------------------------


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (names relative to it)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``finetune <args>`` in ``cwd``, in this process: these tests check the refusal a command prints and its
    exit code, not the process (test_cli.py and the other e2e files run the command as a process)."""
    return cli_in_process(*args, cwd=cwd)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit code 2, no traceback, exactly one ``finetune: error:`` line holding every fragment."""
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("finetune: error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def csv_folder(root: Path, rows: list[str], n: int = 8) -> Path:
    """``root/imgs/img00k.png`` (two classes) and ``root/labels.csv`` with ``rows`` after the header."""
    for i in range(n):
        write_png(root / "imgs" / f"img{i:03d}.png", i)
    (root / "labels.csv").write_text("path,label\n" + "".join(f"{row}\n" for row in rows))
    return root / "labels.csv"


def n_images(source) -> int:
    """Distinct image files over the splits (test may reuse val)."""
    return len({path for split in source.splits.values() for path in split.images})


def good_rows(n: int = 8) -> list[str]:
    return [f"imgs/img{i:03d}.png,{'ab'[i % 2]}" for i in range(n)]


PLAN_CSV = [
    "dataset=csv",
    "backbone=resnet18",
    "backbone.name=resnet10t",
    "backbone.pretrained=false",
    "dataset.image_size=32",
    "dataset.num_workers=0",
    "plan=true",
    "hydra.run.dir=run",
]


# --- CSV: encoding, duplicates, paths outside the root ------------------------------------------


def test_csv_not_utf8_is_one_line_naming_line_and_byte(tmp_path):
    data = tmp_path / "data"
    csv_path = csv_folder(data, good_rows())
    csv_path.write_bytes(csv_path.read_bytes().replace(b"img003.png,b", "img003.png,b\u00e9".encode("latin-1")))
    before = hashes(data)
    with pytest.raises(DatasetError, match=r"is not UTF-8 text: byte 0xe9 at line 5 \(byte \d+ of the file\)"):
        load_csv(CsvConfig(kind="csv", csv=str(csv_path)))
    done = run_cli(tmp_path, *PLAN_CSV, f"dataset.csv={csv_path}")
    assert_one_line_error(done, "is not UTF-8 text", "byte 0xe9 at line 5", "re-save the file as UTF-8")
    assert hashes(data) == before


def test_csv_with_a_utf8_byte_order_mark_still_reads(tmp_path):
    csv_path = csv_folder(tmp_path, good_rows())
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())
    source = load_csv(CsvConfig(kind="csv", csv=str(csv_path), test_fraction=0.0))
    assert source.class_names == ["a", "b"] and n_images(source) == 8


def test_duplicate_rows_are_refused_naming_the_lines(tmp_path):
    data = tmp_path / "data"
    csv_path = csv_folder(data, [*good_rows(), "imgs/img002.png,a", "./imgs/img005.png,a"])
    before = hashes(data)
    with pytest.raises(DatasetError, match=r"2 row\(s\) list an image already listed \(line 10 repeats line 4 "):
        load_csv(CsvConfig(kind="csv", csv=str(csv_path)))
    done = run_cli(tmp_path, *PLAN_CSV, f"dataset.csv={csv_path}")
    assert_one_line_error(
        done,
        "line 10 repeats line 4 ('imgs/img002.png')",
        "line 11 repeats line 7 ('./imgs/img005.png')",
        "dataset.on_duplicate=first",
    )
    assert hashes(data) == before


def test_on_duplicate_first_keeps_the_first_row_and_counts(tmp_path, caplog):
    csv_path = csv_folder(tmp_path, [*good_rows(), "imgs/img002.png,b"])
    with caplog.at_level(logging.WARNING):
        source = load_csv(CsvConfig(kind="csv", csv=str(csv_path), on_duplicate="first", test_fraction=0.0))
    assert n_images(source) == 8
    assert "dropped 1 repeated row(s) (dataset.on_duplicate=first): line 10 repeats line 4" in caplog.text
    with pytest.raises(DatasetError, match=r"dataset.on_duplicate='last'; use one of \['error', 'first'\]"):
        CsvConfig(kind="csv", on_duplicate="last").validate()


def test_paths_leaving_the_root_are_refused_unless_allowed(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    write_png(outside / "x.png", 99)
    csv_path = csv_folder(data, [*good_rows(), "../elsewhere/x.png,a", f"{outside / 'x.png'},b"])
    before = hashes(data) | hashes(outside)
    with pytest.raises(DatasetError, match=r"2 path\(s\) lead outside .*line 10: '../elsewhere/x.png'"):
        load_csv(CsvConfig(kind="csv", csv=str(csv_path)))
    done = run_cli(tmp_path, *PLAN_CSV, f"dataset.csv={csv_path}")
    assert_one_line_error(
        done, "lead outside", "line 10: '../elsewhere/x.png'", "line 11:", "dataset.allow_outside_root=true"
    )
    assert hashes(data) | hashes(outside) == before
    csv_folder(data, [*good_rows(), "../elsewhere/x.png,a"])
    allowed = load_csv(CsvConfig(kind="csv", csv=str(csv_path), allow_outside_root=True, test_fraction=0.0))
    assert n_images(allowed) == 9
    # dataset.root is the folder paths must stay in; a path through .. that comes back stays inside
    csv_folder(data, [*good_rows(), "imgs/../imgs/sub/../img001.png,b"])
    with pytest.raises(DatasetError, match="line 10 repeats line 3"):
        load_csv(CsvConfig(kind="csv", csv=str(csv_path)))
    csv_folder(data, [f"data/{row}" for row in good_rows()] + ["elsewhere/x.png,a"])
    rooted = load_csv(CsvConfig(kind="csv", csv=str(csv_path), root=str(tmp_path), test_fraction=0.0))
    assert n_images(rooted) == 9


# --- images: a JPEG cut short and closed with its end marker --------------------------------------


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_cut_jpeg_closed_with_its_end_marker_is_unreadable(tmp_path, fraction):
    whole = jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: int(len(whole) * fraction)] + b"\xff\xd9")
    with Image.open(path) as im:
        im.load()  # PIL alone accepts it: libjpeg fills the missing part with gray
    with pytest.raises(OSError, match="JPEG data ends early"):
        inspect_image(path)
    (tmp_path / "whole.jpg").write_bytes(whole)
    assert inspect_image(tmp_path / "whole.jpg") == 3


def test_cut_progressive_jpeg_is_unreadable(tmp_path):
    pixels = (np.indices((64, 48)).sum(0) * 2 % 256).astype(np.uint8)[..., None].repeat(3, 2)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90, progressive=True)
    whole = buffer.getvalue()
    silent = 0
    for cut in range(len(whole) // 4, len(whole) - 100, 16):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(whole[:cut] + b"\xff\xd9")
        try:
            with Image.open(path) as im:
                im.load()
        except OSError:
            continue  # PIL refuses this cut by itself
        silent += 1
        with pytest.raises(OSError, match="JPEG data ends early"):
            inspect_image(path)
    assert silent >= 5
    (tmp_path / "whole.jpg").write_bytes(whole)
    assert inspect_image(tmp_path / "whole.jpg") == 3


def test_cut_jpeg_in_a_dataset_fails_the_run_naming_the_file(tmp_path):
    data = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(4):
            (data / cls).mkdir(parents=True, exist_ok=True)
            (data / cls / f"{i}.jpg").write_bytes(jpeg_bytes(seed=i + (10 if cls == "b" else 0)))
    whole = (data / "a" / "0.jpg").read_bytes()
    (data / "a" / "0.jpg").write_bytes(whole[: len(whole) // 2] + b"\xff\xd9")
    before = hashes(data)
    done = run_cli(tmp_path, "dataset=imagefolder", f"dataset.root={data}", *PLAN_CSV[1:])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"{data / 'a' / '0.jpg'}: JPEG data ends early" in done.stderr
    assert hashes(data) == before


# --- backbone.weights that are not a state dict -------------------------------------------------


class NotAllowed:  # a class the weights-only unpickler refuses
    pass


BAD_WEIGHTS = {
    "list.pth": (lambda p: torch.save([torch.zeros(2)], p), "holds no state dict (names → tensors) but a list of 1"),
    "tensor.pth": (lambda p: torch.save(torch.zeros(3, 4), p), "but a single tensor of shape (3, 4)"),
    "module.pth": (
        lambda p: torch.save(torch.nn.Linear(2, 2), p),
        "is a pickle that a safe load refuses (it needs torch.nn.modules.linear.Linear)",
    ),
    "object.pth": (lambda p: p.write_bytes(pickle.dumps(NotAllowed())), "is a pickle that a safe load refuses"),
    "text.pth": (lambda p: p.write_text("hello"), "is not a PyTorch or safetensors file"),
    "cut.pth": (
        lambda p: (torch.save({"a": torch.zeros(64)}, p), p.write_bytes(p.read_bytes()[:200])),
        "is a damaged PyTorch file",
    ),
    "text.safetensors": (lambda p: p.write_text("not safetensors"), "is not a readable safetensors file"),
}


@pytest.mark.parametrize("name", sorted(BAD_WEIGHTS))
def test_weights_file_that_is_no_state_dict_is_one_line(tmp_path, name):
    make, message = BAD_WEIGHTS[name]
    path = tmp_path / "w" / name
    path.parent.mkdir()
    make(path)
    with pytest.raises(WeightsError) as error:
        resolve_weights("resnet10t", path)
    text = str(error.value)
    assert "\n" not in text and message in text and "timm-format state dict" in text, text
    assert ".safetensors file, or a .pth/.pt holding a plain dict of tensor names to tensors" in text


@pytest.mark.parametrize("name", ["tensor.pth", "module.pth"])
def test_bad_weights_stop_the_cli_before_data_loading(tmp_path, name):
    make, message = BAD_WEIGHTS[name]
    weights = tmp_path / "w" / name
    weights.parent.mkdir()
    make(weights)
    data = tmp_path / "data"
    csv_path = csv_folder(data, good_rows())
    csv_path.write_bytes(b"\xff not even utf-8 \n")  # would fail if the data were read first
    before = hashes(tmp_path / "w") | hashes(data)
    done = run_cli(
        tmp_path,
        "dataset=csv",
        f"dataset.csv={csv_path}",
        "backbone=resnet18",
        "backbone.name=resnet10t",
        f"backbone.weights={weights}",
        "dataset.image_size=32",
        "plan=true",
        "hydra.run.dir=run",
    )
    assert_one_line_error(done, f"backbone.weights={weights}", message)
    assert hashes(tmp_path / "w") | hashes(data) == before


# --- exports: class list against head, per-tensor sha256 ----------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A tiny resnet10t (linear probe on stand-in "pretrained" weights) exported as head and safetensors."""
    return export_tiny_resnet(tmp_path_factory.mktemp("fault_exports"), CLASSES, ("head", "safetensors", "onnx"))


def copy_export(exports: Path, name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for file in exports.glob(f"{name}*"):
        (dest / file.name).write_bytes(file.read_bytes())
    return dest / name


def predict_cli(tmp_path: Path, export_path: Path) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    inputs = tmp_path / "inputs"
    if not inputs.is_dir():
        inputs.mkdir()
        Image.fromarray(skimage.data.chelsea()[::8, ::8]).save(inputs / "chelsea.png")
    return run_cli(work, "predict", f"export={export_path}", f"inputs={inputs}", f"out={work / 'p.csv'}")


def test_exports_record_a_sha256_per_tensor(exports):
    for name in ("head.safetensors", "model.safetensors"):
        meta = load_export(exports / name, tasks=TASKS).metadata
        stored = load_file(exports / name)
        assert sorted(meta["tensor_sha256"]) == sorted(stored) and all(
            len(h) == 64 for h in meta["tensor_sha256"].values()
        )


@pytest.mark.parametrize(
    ("name", "tensor"),
    [
        ("head.safetensors", "head.0.weight"),
        ("model.safetensors", "head.0.weight"),
        ("model.safetensors", "backbone.layer4.0.conv1.weight"),
    ],
)
def test_a_flipped_byte_in_a_stored_tensor_is_refused_naming_it(exports, tmp_path, name, tensor):
    path = copy_export(exports, name, tmp_path / "tampered")
    assert tensor in load_file(path)
    flip_byte(path, tensor)
    with pytest.raises(FinetuneError, match=rf"tensor '{tensor}' does not match the sha256 recorded at export"):
        load_export(path, tasks=TASKS)
    before = hashes(tmp_path / "tampered")
    done = predict_cli(tmp_path, path)
    assert_one_line_error(done, f"tensor '{tensor}' does not match the sha256 recorded at export", "re-export")
    assert hashes(tmp_path / "tampered") == before and not (tmp_path / "work" / "p.csv").exists()


def test_an_added_or_removed_tensor_is_refused(exports, tmp_path):
    path = copy_export(exports, "head.safetensors", tmp_path / "t")
    rewrite_embedded(path, lambda meta: meta["tensor_sha256"].update({"head.extra": "0" * 64}))
    with pytest.raises(FinetuneError, match=r"tensor 'head.extra' is missing from the export \(0 added, 1 missing\)"):
        load_export(path, tasks=TASKS)


@pytest.mark.parametrize("name", ["head.safetensors", "model.safetensors"])
def test_class_list_not_matching_the_head_names_both_counts(exports, tmp_path, name):
    path = copy_export(exports, name, tmp_path / "edited")
    rewrite_embedded(path, lambda meta: meta.update(class_names=["ant", "bee"]))
    with pytest.raises(FinetuneError, match="its metadata lists 2 class names but its head predicts 3 classes"):
        load_export(path, tasks=TASKS)
    done = predict_cli(tmp_path, path)
    assert_one_line_error(done, "lists 2 class names but its head predicts 3 classes", "re-export")


def test_onnx_sidecar_with_another_class_list_is_refused(exports, tmp_path):
    path = copy_export(exports, "model.onnx", tmp_path / "onnx")
    sidecar = path.with_name("model.onnx.json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(meta | {"class_names": ["ant", "bee", "wasp", "moth"]}))
    done = predict_cli(tmp_path, path)
    assert_one_line_error(done, "its metadata lists 4 class names but the model predicts 3 classes")
    assert pr.main([f"export={path}", f"inputs={tmp_path / 'inputs'}", f"out={tmp_path / 'q.csv'}"]) == 2
