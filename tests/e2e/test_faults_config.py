"""Fault injection for the config, the output location and resume targets (issue 25, items 11, 12,
13, 15, 19, 20): each case is refused with one ``finetune: error:`` line (exit 2, no traceback)
before any work, and the files involved keep their sha256."""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from finetune.commands.precheck import precheck

from ..conftest import compose_config
from ..helpers import TINY, assert_refused, cli_in_process, finetune_env, tree_hashes

HEAVY = ("torch", "lightning", "timm")
# ``finetune`` commands run one after another in one fresh process, each read from a line of stdin
# (``[cwd, args]``) and answered on a line of stdout: exit code, its output, the heavy modules imported by then
# (by it or a command before it). Its sys.stdout and sys.stderr are set before finetune is imported, so every
# stream and logging handler writes into the command's own output (emptied before each command).
PROBE = f"""
import io, json, os, sys, traceback
answers, sys.stdout, sys.stderr = sys.stdout, io.StringIO(), io.StringIO()
from finetune.cli import main
for request in sys.stdin:
    cwd, args = json.loads(request)
    os.chdir(cwd)
    for stream in (sys.stdout, sys.stderr):
        stream.seek(0)
        stream.truncate()
    try:
        code = main(args)
    except SystemExit as exit_:  # as the interpreter ends: None is 0, a message is printed with 1
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
    print(json.dumps([code, sys.stdout.getvalue(), sys.stderr.getvalue(), heavy]), file=answers, flush=True)
"""


@pytest.fixture(scope="module")
def probe_finetune() -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """``finetune <args>`` in ``cwd`` run by ``PROBE`` (one process for the module's commands, no start-up
    each): stdout ends with the heavy modules imported by then."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=finetune_env()
    )

    def probe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        proc.stdin.write(json.dumps([str(cwd), list(args)]) + "\n")
        proc.stdin.flush()
        if not select.select([proc.stdout], [], [], 120)[0]:
            proc.kill()  # no later command gets its late answer
            pytest.fail(f"finetune {args} did not end in 120 s")
        answer = proc.stdout.readline()
        assert answer, f"the probe process ended with exit code {proc.wait()}"
        code, out, err, heavy = json.loads(answer)
        return subprocess.CompletedProcess(["finetune", *args], code, f"{out}{heavy!r}\n", err)

    yield probe
    proc.stdin.close()
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()  # one that did not end (nothing once it has)


def image_folder(root: Path) -> Path:
    """Two classes of three 8x8 PNGs each."""
    for label, value in (("ants", 40), ("bees", 200)):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (value, i * 60, 0)).save(root / label / f"{i}.png")
    return root


def csv_folder(folder: Path) -> Path:
    """The same images listed in ``labels.csv`` in their folder; returns the CSV."""
    image_folder(folder)
    rows = [f"{p.relative_to(folder)},{p.parent.name}" for p in sorted(folder.rglob("*.png"))]
    (folder / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def paused(tmp_path_factory) -> Path:
    """A tiny run that keeps ``last.ckpt`` (``checkpoints.keep=both``), made once for this module."""
    base = tmp_path_factory.mktemp("paused")
    out = cli_in_process(*TINY, "checkpoints.keep=both", "hydra.run.dir=run", cwd=base)
    assert out.returncode == 0, out.stderr[-3000:]
    return base / "run"


# --- item 11: a run directory inside the data --------------------------------------------------------


@pytest.mark.parametrize("kind", ["imagefolder", "csv"])
def test_a_run_directory_inside_the_data_is_refused_before_it_is_made(tmp_path, kind):
    data = tmp_path / "data"
    if kind == "csv":
        args = ["dataset=csv", f"dataset.csv={csv_folder(data)}", f"dataset.root={data}"]
    else:
        args = ["dataset=imagefolder", f"dataset.root={image_folder(data)}"]
    before = tree_hashes(data)
    out = cli_in_process(*TINY, *args, f"hydra.run.dir={data}/runX", cwd=tmp_path)
    assert_refused(out, f"hydra.run.dir={data}/runX is inside the data folder {data}")
    assert "pick a hydra.run.dir outside it" in out.stderr
    assert tree_hashes(data) == before and not (data / "runX").exists()


def test_a_csv_without_a_root_runs_beside_its_labels_as_the_readme_shows(tmp_path, monkeypatch, capsys):
    """``finetune dataset=csv dataset.csv=labels.csv`` from the folder holding the CSV: ``runs/`` is not data."""
    csv_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert precheck([*TINY, "dataset=csv", "dataset.csv=labels.csv"]) == 0, capsys.readouterr().err


def test_the_default_run_directory_inside_the_data_is_refused(tmp_path):
    """Started from inside the image folder, the default ``runs/…`` would land in the data."""
    data = image_folder(tmp_path / "data")
    before = tree_hashes(data)
    out = cli_in_process(*TINY, "dataset=imagefolder", "dataset.root=.", cwd=data)
    assert_refused(out, f"the run directory runs/ is inside the data folder {data}")
    assert tree_hashes(data) == before and not (data / "runs").exists()


# --- item 12: stored configs on resume; unknown keys and _target_ on the command line ----------------


def test_resume_refuses_an_environment_interpolation_in_the_stored_config(tmp_path):
    """A stored config is resolved once, when its run starts: resume does not read the environment
    again, and never writes the stored config back with the value it read."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = compose_config(*TINY)
    cfg.logger.experiment = "${oc.env:HOME}"  # as a hand-edited config.yaml holds it
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    before = tree_hashes(run)
    out = cli_in_process(f"resume={run}", cwd=tmp_path)
    assert_refused(
        out, f"{run / 'config.yaml'}: logger.experiment holds '${{oc.env:HOME}}', which reads the environment"
    )
    assert tree_hashes(run) == before and sorted(p.name for p in run.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("+foo._target_=os.system", "+foo._target_=os.system: finetune instantiates no object from its config"),
        ("++dataset._target_=os.system", "++dataset._target_=os.system: finetune instantiates no object"),
        (
            "+schedule.lrr=0.1",
            "+schedule.lrr=0.1: not a key of the config; did you mean schedule.lr?",
        ),
        (
            "++backbone.freez=2",
            "++backbone.freez=2: not a key of the config; did you mean backbone.freeze?",
        ),
        ("+foo=1", "+foo=1: not a key of the config; finetune train --cfg job lists every key"),
    ],
)
def test_unknown_keys_and_targets_on_the_command_line_are_refused(tmp_path, arg, message, probe_finetune):
    out = probe_finetune(arg, "plan=true", cwd=tmp_path)
    assert_refused(out, message)
    assert out.stdout.splitlines()[-1] == "[]"  # refused before torch was imported
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        ["+classification=digits"],
        ["+medical=blood"],
        ["+segmentation=camvid", "dataset.root={data}"],
        ["++schedule.phases.0.lr=0.01"],  # what lr-find prints for a phase's own lr: phases check their keys
        ["++schedule.lr=0.01"],
        ["+backbone.weights=null"],
        ["threshold=tune", "backbone.freeze=all"],
    ],
)
def test_group_selections_and_declared_keys_pass_the_precheck(args, tmp_path, capsys):
    from finetune.commands.precheck import precheck

    assert precheck([a.format(data=tmp_path) for a in args]) == 0, capsys.readouterr().err


# --- item 13: a checkpoint whose tensors do not fit the run's model ---------------------------------


def test_resume_from_a_checkpoint_with_a_wrong_shape_is_refused_before_anything_is_written(paused, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(paused, run)
    (run / "metrics.json").unlink()  # as if interrupted after its last checkpoint
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    bias = next(k for k in state["state_dict"] if k.startswith("model.head") and k.endswith("bias"))
    state["state_dict"][bias] = torch.zeros(7)
    torch.save(state, ckpt)
    before = tree_hashes(run)
    out = cli_in_process(f"resume={run}", cwd=tmp_path)
    assert_refused(out, f"{ckpt}: tensor {bias} has shape [7], but this run's model has [10]")
    assert tree_hashes(run) == before  # no line in finetune.log, no logs/<phase>/attempt-2


# --- item 15: an output location that cannot be written -----------------------------------------------


def test_a_run_directory_below_a_file_is_refused_naming_it(tmp_path):
    """Root may write anywhere chmod forbids; a file where a folder must be fails for everyone."""
    (tmp_path / "blocker").write_text("not a folder")
    out = cli_in_process(*TINY, "hydra.run.dir=blocker/run", cwd=tmp_path)
    assert_refused(
        out,
        "cannot write the run directory blocker/run: blocker is a file, not a folder; "
        "pass hydra.run.dir=<a folder you can write>",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into, not even root (``chattr +i``); skipped where chattr is refused."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("chattr +i is not available here")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_output_location_is_refused_naming_the_folder(read_only, tmp_path):
    out = cli_in_process(*TINY, f"hydra.run.dir={read_only}/run", cwd=tmp_path)
    assert_refused(out, f"cannot write the run directory {read_only}/run: {read_only} is not writable")
    assert "pass hydra.run.dir=<a folder you can write>" in out.stderr
    default = cli_in_process(*TINY, cwd=read_only)  # the default runs/… from a read-only working folder
    assert_refused(default, f"cannot write the run directory runs/: {read_only} is not writable")
    assert "or start finetune from a folder you can write" in default.stderr
    assert list(read_only.iterdir()) == []


# --- items 19 and 20: types and paths before any heavy import ----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["schedule.lr=abc"], "schedule.lr=abc: schedule.lr takes a number; e.g. schedule.lr=0.005"),
        (["dataset.num_workers=two"], "dataset.num_workers=two: dataset.num_workers takes a whole number; e.g. "),
        (["dataset.val_fraction=[1]"], "dataset.val_fraction=[1]: dataset.val_fraction takes a number; e.g. "),
        (["seed=true"], "seed=true: seed takes a whole number; e.g. seed=0"),
        (
            ["schedule=finetune", "schedule.phases=[{name: a, epochs: 1, lr: abc}]"],
            "schedule.phases[0].lr=abc: schedule.phases[0].lr takes a number",
        ),
    ],
)
def test_a_value_of_the_wrong_type_names_its_key_before_torch_is_imported(tmp_path, args, message, probe_finetune):
    out = probe_finetune(*args, cwd=tmp_path)
    assert_refused(out, message)
    assert out.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset=imagefolder", "dataset.root=missing"], "dataset.root=missing does not exist (resolved to {cwd}"),
        (["dataset=imagefolder"], "dataset.root is not set: pass dataset.root=/path/to/your/images"),
        (["task=segmentation", "head=unet", "dataset=seg_folder"], "dataset.root is not set"),
        (["dataset=csv", "dataset.csv=labels.csv"], "dataset.csv=labels.csv does not exist (resolved to {cwd}"),
        (["dataset=csv"], "dataset.csv is not set: pass dataset.csv=/path/to/labels.csv"),
    ],
)
def test_a_missing_dataset_path_is_refused_before_torch_is_imported(tmp_path, args, message, probe_finetune):
    out = probe_finetune(*args, cwd=tmp_path)
    assert_refused(out, message.format(cwd=tmp_path))
    assert out.stdout.splitlines()[-1] == "[]"
    assert list(tmp_path.iterdir()) == []


def test_a_run_directory_in_the_data_is_refused_before_torch_is_imported(tmp_path, probe_finetune):
    data = image_folder(tmp_path / "data")
    out = probe_finetune(*TINY, "dataset=imagefolder", f"dataset.root={data}", f"hydra.run.dir={data}/x", cwd=tmp_path)
    assert_refused(out, "is inside the data folder")
    assert out.stdout.splitlines()[-1] == "[]"


def test_hydra_keys_added_on_the_command_line_pass_the_precheck(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for arg in ("+hydra.job.env_set.OMP_NUM_THREADS=1", "++hydra.run.dir=somewhere"):
        assert precheck([*TINY, arg]) == 0, capsys.readouterr().err


# --- a -m sweep over config groups: each combination is checked ---------------------------------------


def test_a_sweep_over_dataset_kinds_is_checked_per_kind(tmp_path, monkeypatch, capsys, probe_finetune):
    """``dataset.root`` is a key of both swept kinds: it is judged against each, not against the default digits."""
    data = image_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    sweep = ["-m", "dataset=imagefolder,medmnist", "plan=true"]
    assert precheck([*sweep, f"++dataset.root={data}"]) == 0, capsys.readouterr().err
    assert precheck([*sweep, "++dataset.root=missing"]) == 2
    assert capsys.readouterr().err.startswith(
        f"finetune: error: dataset.root=missing does not exist (resolved to {tmp_path / 'missing'})"
    )
    # Hydra composes the sweep's config once with dataset=digits, which has no root: ++ sets it in each job
    out = probe_finetune(*sweep, f"dataset.root={data}", cwd=tmp_path)
    message = (
        f"dataset.root={data}: a -m sweep's config is composed once before its jobs, with each swept group at its "
        f"default, which has no dataset.root; write ++dataset.root={data} to set it in each job"
    )
    assert assert_refused(out, message) == f"finetune: error: {message}"
    assert out.stdout.splitlines()[-1] == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- a recipe that sets task as a value instead of selecting the task group ----------------------------

OLD_STYLE_RECIPE = """# @package _global_
defaults:
  - override /dataset: seg_folder
  - override /head: unet
task: segmentation
dataset:
  crop_size: 64
"""
TASK_AS_VALUE = (
    "task=segmentation: set as a value, task does not select the task's config group, so this config holds the "
    "keys of task=classification; in a recipe write `- override /task: segmentation` in its defaults instead of "
    "`task: segmentation`, or pass task=segmentation on the command line"
)


def old_style_recipes(root: Path) -> Path:
    """``<root>/mine/old.yaml`` as HEAD's shipped recipes were written (``task: segmentation`` as a value), and
    ``mine/old_block.yaml``, the same with a ``segmentation:`` block; returns ``root``."""
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "old.yaml").write_text(OLD_STYLE_RECIPE)
    (root / "mine" / "old_block.yaml").write_text(OLD_STYLE_RECIPE + "segmentation:\n  loss: dice\n")
    return root


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("old", TASK_AS_VALUE),
        (
            "old_block",
            "segmentation (in mine/old_block.yaml): segmentation is a key of task=segmentation, and the recipe sets "
            "task: segmentation as a value, which does not select the task's config group (this config holds the "
            "keys of task=classification); write `- override /task: segmentation` in its defaults instead, or pass "
            "task=segmentation on the command line",
        ),
    ],
)
def test_a_recipe_setting_task_as_a_value_is_told_to_select_the_task_group(tmp_path, recipe, message, probe_finetune):
    user = old_style_recipes(tmp_path / "user")
    out = probe_finetune(
        f"+mine={recipe}", f"hydra.searchpath=[file://{user}]", f"dataset.root={tmp_path}", "plan=true", cwd=tmp_path
    )
    assert assert_refused(out, message) == f"finetune: error: {message}"
    assert out.stdout.splitlines()[-1] == "[]"
    fixed = old_style_recipes(tmp_path / "fixed")
    recipe_file = fixed / "mine" / f"{recipe}.yaml"
    text = recipe_file.read_text().replace("\ntask: segmentation\n", "\n")
    recipe_file.write_text(text.replace("defaults:\n", "defaults:\n  - override /task: segmentation\n"))
    assert precheck([f"+mine={recipe}", f"hydra.searchpath=[file://{fixed}]", f"dataset.root={tmp_path}"]) == 0


def test_a_recipe_setting_task_as_a_value_under_hydras_own_command_line_is_one_line(tmp_path):
    """``--config-dir`` skips the precheck: the check before training says it (no ConfigAttributeError)."""
    user = old_style_recipes(tmp_path / "user")
    out = cli_in_process("--config-dir", str(user), "+mine=old", f"dataset.root={tmp_path}", "plan=true", cwd=tmp_path)
    assert assert_refused(out, TASK_AS_VALUE) == f"finetune: error: {TASK_AS_VALUE}"


# --- a worker's config file without a required value ---------------------------------------------------


def test_a_worker_config_without_a_required_value_names_the_key_and_the_file(tmp_path, capsys):
    from finetune.commands import worker

    saved = OmegaConf.to_container(compose_config(*TINY), resolve=True)  # as a launcher writes it
    del saved["schedule"]["lr"]
    config = tmp_path / "config.yaml"
    config.write_text(OmegaConf.to_yaml(saved))
    args = [f"run_dir={tmp_path / 'run'}", f"config={config}"]
    out = subprocess.CompletedProcess(args, worker.main(args), *capsys.readouterr())  # the worker in this process
    message = f"{config}: schedule.lr=???: a required value is not set; set it to a number: schedule.lr=…"
    assert assert_refused(out, message) == f"finetune: error: {message}"
