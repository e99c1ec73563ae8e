"""``make bench-peers``: finetune against the tools users would pick instead, on the same machine.

    python -m benchmarks.peers                                  # every dataset, its seeds, every peer
    python -m benchmarks.peers --datasets hymenoptera --seeds 0 --peers finetune,fastai
    python -m benchmarks.peers --datasets bloodmnist --compare budget --budget-s 300
    python -m benchmarks.peers --quick                          # 64 px, 1 epoch, seed 0: checks the set-up

Peers (``PEERS``): finetune with its recipe for the data; fastai ``vision_learner`` + ``fine_tune``
with its defaults; the Hugging Face ``Trainer`` with its defaults; a plain timm + PyTorch loop as
the floor; for segmentation (CamVid), ``smp.Unet`` with a plain loop. A peer runs on the datasets
of its ``tasks``. Each peer is a standalone script in ``benchmarks/peer_runners/`` run in a
subprocess with its own python: it takes a JSON spec (data, image size, epochs, seed, threads,
weights file) and prints one JSON result line (val/test accuracy and AUC for two classes, or mIoU,
mean Dice and pixel accuracy; wall time, the validation curve with times, versions). Every peer gets the same splits (read by
``peer_runners/peerdata.py``, which never imports finetune), the same pretrained weights file (the
one finetune's resolver produces, loaded through ``timm.create_model(pretrained_cfg_overlay=...)``),
image size, batch size, number of epochs, torch threads and loader workers. Runs are interleaved:
the order of the tools rotates from seed to seed, and no two runs of one invocation overlap.

Two comparisons per dataset (``--compare``): *epochs*, every tool the same number of epochs (finetune's
recipe total); then *budget*, every tool the same seconds (each dataset's ``budget_s``, or
``--budget-s``): a tool runs its own schedule with as many epochs as fit, sized from its pace in its
epoch-comparison runs (``fit_epochs``), so its lr schedule still ends where it should.

Virtual environments: every peer but finetune gets its own under ``benchmarks/.peers/<peer>/``
(gitignored; created on first use with the pins in ``PEERS``; never the project's ``.venv``). torch
and torchvision (``benchmarks/peers_constraints.txt``: the project's torch) are installed once
into ``benchmarks/.peers/_torch`` and reach each peer venv through a ``.pth`` path entry placed
after the venv's own packages: the same torch runs everywhere and its 5 GB of CUDA libraries are
not copied three times. ``pip freeze`` of every peer venv goes into the results.

Results: ``benchmarks/results/peers.json`` (every run; a rerun replaces the run with the same
dataset, size, schedule, budget, seed and tool, so seeds can be added later; ``settings`` are the latest
invocation's: change threads, workers or batch size only with another ``--out``; invocations may run
side by side, e.g. one per dataset: each run is merged in under a file lock) and a section of
``benchmarks/results/README.md``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .common import CAMVID, HYMENOPTERA, MEDMNIST, RESULTS, environment

HERE = Path(__file__).resolve().parent
RUNNERS = HERE / "peer_runners"
PEERS_DIR = HERE / ".peers"
CONSTRAINTS = HERE / "peers_constraints.txt"
ARCH = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class Peer:
    """A tool in the comparison: its runner script and the pinned packages of its venv (none: the project's)."""
    script: str
    requirements: tuple[str, ...]
    how: str
    venv: str | None = None  # another peer's venv (same packages); None: its own
    options: tuple[tuple[str, object], ...] = ()  # added to the runner's spec
    tasks: tuple[str, ...] = ("classification",)  # the datasets it runs on


FASTAI = Peer("run_fastai.py", ("fastai==2.8.12", "timm==1.0.31"),
              "`vision_learner` (default head) + `fine_tune` (1 frozen epoch, default lr 2e-3), "
              "`Resize` + `aug_transforms()`")
PEERS: dict[str, Peer] = {
    "finetune": Peer("run_finetune.py", (), "its recipe for the data (`+classification=…` / `+medical=…` / "
                     "`+segmentation=…`); with `--epochs N` the recipe's settings in one phase of N epochs at the "
                     "freeze depth of its last phase", tasks=("classification", "segmentation")),
    "fastai": FASTAI,
    "fastai_lr_find": replace(FASTAI, venv="fastai", options=(("lr_find", True),),
                              how="as fastai, with the base lr `lr_find()` suggests (its `valley`; the range "
                                  "test's time is counted)"),
    "hf_trainer": Peer("run_hf.py", ("transformers==5.24.0", "accelerate==1.15.0", "timm==1.0.31"),
                       "`Trainer` defaults (AdamW lr 5e-5, linear decay, no weight decay), the HF example's "
                       "RandomResizedCrop + flip"),
    "plain": Peer("run_plain.py", ("timm==1.0.31",),
                  "timm + PyTorch loop: AdamW (torch defaults), cosine per step, the recipe's augmentation"),
    "smp": Peer("run_smp.py", ("segmentation-models-pytorch==0.6.0", "timm==1.0.31"),
                "`smp.Unet` (`tu-` timm encoder, the same weights file and decoder channels) + a plain loop: smp's "
                "Dice + cross-entropy, AdamW (torch defaults), cosine per step, the recipe's crops and augmentation "
                "(torchvision v2), whole-image evaluation", tasks=("segmentation",)),
}


TEST_NOTE = ("finetune tests the checkpoint of its best val epoch (its default, checkpoints.keep=best); the other "
             "tools test their final weights with argmax")


@dataclass(frozen=True)
class Dataset:
    """Data in the comparison: where it lies, its size in the issue (segmentation: the training crop),
    finetune's recipe for it."""
    name: str
    kind: str  # "folder" (root/train, root/val) | "medmnist" (an official npz) | "seglist" (CamVid's list files)
    path: Path
    image_size: int
    num_classes: int
    has_test: bool
    recipe: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    notes: tuple[str, ...] = ()
    task: str = "classification"
    budget_s: float = 60.0  # the equal-wall-clock comparison's budget (seconds per run)

    @property
    def metric(self) -> str:
        """The validation curve's metric and the table's headline: accuracy, or mIoU for segmentation."""
        return "miou" if self.task == "segmentation" else "acc"


DATASETS: dict[str, Dataset] = {
    "hymenoptera": Dataset("hymenoptera", "folder", HYMENOPTERA, 224, 2, False,
                           ("+classification=hymenoptera",), (0, 1, 2),
                           (("no test split: val/ is what every tool reports; finetune keeps its last "
                             "checkpoint (checkpoints.keep=last) so no tool picks an epoch on the split it reports"),)),
    "bloodmnist": Dataset("bloodmnist", "medmnist", MEDMNIST / "bloodmnist.npz", 64, 8, True, ("+medical=blood",),
                          notes=(TEST_NOTE,), budget_s=300),
    "breastmnist": Dataset("breastmnist", "medmnist", MEDMNIST / "breastmnist.npz", 128, 2, True,
                           ("+medical=breast",), (0, 1, 2),
                           (TEST_NOTE + "; its test acc also uses the decision threshold it tunes on val "
                            "(threshold=tune): compare AUC, which no threshold changes",), budget_s=180),
    "camvid": Dataset("camvid", "seglist", CAMVID, 256, 11, True, ("+segmentation=camvid", "schedule.epochs=6"),
                      (0, 1, 2),
                      notes=("finetune's recipe shortened to 2 decoder-only + 6 full epochs (`schedule.epochs=6`; the "
                             "recipe has 2 + 12) for CPU time; smp trains everything for the same 8 epochs. finetune "
                             "evaluates overlapping 256 px windows and tests its best val epoch (the other tool: "
                             "whole images, final weights). mIoU: mean over the 11 classes, void ignored",),
                      task="segmentation", budget_s=240),
}


@dataclass(frozen=True)
class Settings:
    """What every tool shares in one invocation."""
    threads: int = 1
    workers: int = 0
    batch_size: int | None = None  # None: finetune's recipe for each dataset (32; CamVid 8)
    image_size: int | None = None  # None: each dataset's own
    epochs: int | None = None      # None: finetune's recipe total; N: finetune runs one phase of N epochs
    budget_s: float | None = None  # the equal-wall-clock comparison's budget; None: each dataset's own


# The epoch comparison: every tool the same epochs; the budget comparison: every tool's schedule fitted to
# the same seconds (``budget_spec``), sized from its runs in the first.
COMPARISONS = ("epochs", "budget")


def shared_torch() -> Path:
    """The site-packages holding the pinned torch + torchvision, installed once for all peer venvs."""
    venv = PEERS_DIR / "_torch"
    stamp = venv / ".installed"
    if not (stamp.is_file() and stamp.read_text() == CONSTRAINTS.read_text()):
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _pip(venv, "torch", "torchvision")  # versions from the constraints file
        stamp.write_text(CONSTRAINTS.read_text())
    return _site_packages(venv)


def peer_python(name: str) -> Path:
    """The python of a peer's venv, created with its pinned packages on first use; the project's for finetune."""
    peer = PEERS[name]
    if not peer.requirements:
        return Path(sys.executable)
    venv = PEERS_DIR / (peer.venv or name)
    stamp = venv / ".installed"
    wanted = "\n".join([*peer.requirements, CONSTRAINTS.read_text()])
    if not (stamp.is_file() and stamp.read_text() == wanted):
        print(f"== creating {venv} ({', '.join(peer.requirements)})", flush=True)
        torch_site = shared_torch()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        (_site_packages(venv) / "_peers_shared_torch.pth").write_text(f"{torch_site}\n")
        _pip(venv, *peer.requirements)
        stamp.write_text(wanted)
    return venv / "bin" / "python"


def _site_packages(venv: Path) -> Path:
    return Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])


def _pip(venv: Path, *requirements: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS),
                    *requirements], check=True)


def freeze(name: str) -> list[str]:
    """Every package a peer's python sees (its venv and the shared torch), as ``pip freeze`` writes them."""
    if not PEERS[name].requirements:
        return []
    out = subprocess.run([str(peer_python(name)), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def weights() -> dict:
    """The timm-format EfficientNet-Lite0 ImageNet weights file finetune's own resolver produces (offline)."""
    from finetune.models.weights import resolve_weights

    record = resolve_weights(ARCH, None, True)
    overlay = record.pretrained_cfg_overlay
    return {"file": record.file, "sha256": record.sha256, "source": record.source,
            "preprocessing": {k: overlay[k] for k in ("mean", "std", "interpolation", "crop_pct")}}


def recipe(dataset: Dataset, settings: Settings, seed: int) -> tuple[list[str], dict]:
    """finetune's overrides for one run, and what the other runners take from its config: augmentation, batch
    size, total epochs, image size (segmentation: the crop, its samples, ignore index and decoder); a ValueError
    for augmentation they cannot mirror."""
    from .common import compose

    root = dataset.path.parent if dataset.kind == "medmnist" else dataset.path
    overrides = [*dataset.recipe, f"dataset.root={root}", f"seed={seed}", f"dataset.num_workers={settings.workers}",
                 "trainer.accelerator=cpu", "trainer.progress_bar=false", "logger=csv"]
    if dataset.task == "classification":
        overrides.append(f"dataset.image_size={settings.image_size or dataset.image_size}")
    if settings.batch_size:
        overrides.append(f"schedule.batch_size={settings.batch_size}")
    if not dataset.has_test:
        overrides.append("checkpoints.keep=last")
    if settings.epochs:  # one phase at the freeze depth of the recipe's last (for most: 0, everything)
        freeze = compose(*overrides).schedule.phases[-1].freeze
        overrides.append(f"schedule.phases=[{{name: all, epochs: {settings.epochs}, freeze: {freeze}}}]")
    cfg = compose(*overrides)
    mirrored = MIRRORED_AUGMENT[dataset.task]
    unsupported = [k for k in ("shift", "crop_scale", "color_jitter", "hue", "dropout")
                   if k not in mirrored and cfg.augment[k]]
    if unsupported:
        raise ValueError(f"the other tools' runners cannot mirror augment {unsupported} of {dataset.recipe}")
    from_recipe = {"augment": {k: cfg.augment[k] for k in mirrored}, "batch_size": int(cfg.schedule.batch_size),
                   "epochs": sum(int(phase.epochs) for phase in cfg.schedule.phases),
                   "image_size": settings.image_size or dataset.image_size}
    if dataset.task == "segmentation":  # image_size: the training crop
        from_recipe |= {"image_size": int(cfg.dataset.crop_size),
                        "samples_per_image": int(cfg.dataset.samples_per_image),
                        "ignore_index": int(cfg.dataset.ignore_index),
                        "decoder_channels": [int(c) for c in cfg.head.decoder_channels]}
    return overrides, from_recipe


# The recipe's augmentation the other tools' runners mirror (run_plain.py, run_smp.py); any other op
# a recipe turns on stops the benchmark before it runs.
MIRRORED_AUGMENT = {"classification": ("hflip", "vflip", "rotate", "shift", "zoom"),
                    "segmentation": ("hflip", "vflip", "rotate", "zoom", "color_jitter")}


def spec(dataset: Dataset, settings: Settings, seed: int, weights_info: dict) -> dict:
    """The JSON spec every runner of one (dataset, seed) gets."""
    overrides, from_recipe = recipe(dataset, settings, seed)
    data = {"file": str(dataset.path)} if dataset.kind == "medmnist" else {"root": str(dataset.path)}
    return {"dataset": dataset.name, "task": dataset.task, "kind": dataset.kind, **data,
            "num_classes": dataset.num_classes, "has_test": dataset.has_test, "seed": seed,
            "threads": settings.threads, "workers": settings.workers, "arch": ARCH, "weights": weights_info["file"],
            "preprocessing": weights_info["preprocessing"], **from_recipe, "finetune_overrides": overrides}


def fit_epochs(references: list[dict], budget_s: float, minimum: int = 1) -> int:
    """How many epochs of a tool's reference schedule fit in ``budget_s``, from its own runs of that schedule:
    wall(E) = wall_ref + pace · (E − E_ref), the pace per epoch read off the later half of each curve (the
    main phase), means over the reference runs; never more epochs than the reference, never fewer than
    ``minimum``."""
    epochs = references[0]["epochs"]
    wall = statistics.mean(r["wall_s"] for r in references)
    pace = statistics.mean(_pace(r["curve"]) for r in references)
    fitting = epochs + math.floor((budget_s - wall) / pace) if pace > 0 else epochs
    return max(minimum, min(epochs, fitting))


def _pace(curve: list[dict]) -> float:
    """Seconds per epoch over the later half of a validation curve (the only epoch: its time)."""
    half = len(curve) // 2
    if len(curve) - 1 - half < 1:
        return curve[-1]["t_s"] / len(curve)
    return (curve[-1]["t_s"] - curve[half]["t_s"]) / (len(curve) - 1 - half)


def budget_of(dataset: Dataset, settings: Settings) -> float:
    """The budget comparison's seconds: ``--budget-s``, else the dataset's own."""
    return settings.budget_s or dataset.budget_s


def budget_spec(dataset: Dataset, settings: Settings, seed: int, run_spec: dict, name: str,
                runs: list[dict]) -> dict:
    """``run_spec`` with the tool's epochs fitted to the budget (``fit_epochs``) from its runs of the epoch
    comparison (same data, size and schedule; any seed); finetune keeps its recipe's phases and shortens the
    ones that follow ``schedule.epochs``. A LookupError without reference runs."""
    budget = budget_of(dataset, settings)
    reference_group = (dataset.name, run_spec["image_size"], run_spec["epochs"], 0)
    references = [r for r in runs if "error" not in r and r["tool"] == name and group(r) == reference_group]
    if not references:
        raise LookupError(f"no run of {name} on {dataset.name} ({run_spec['image_size']} px, {run_spec['epochs']} "
                          f"epochs) to size its budget from: run the epoch comparison first (--compare epochs)")
    fitted = {**run_spec, "budget_s": budget, "reference_epochs": run_spec["epochs"]}
    if name != "finetune":
        return {**fitted, "epochs": fit_epochs(references, budget)}
    if settings.epochs:  # one phase of N epochs: N shrinks
        epochs = fit_epochs(references, budget)
        return {**fitted, "epochs": epochs, "finetune_overrides": recipe(dataset, replace(settings, epochs=epochs), seed)[0]}
    fixed, per_step = _recipe_epochs(run_spec["finetune_overrides"])
    steps = max(1, (fit_epochs(references, budget, fixed + per_step) - fixed) // per_step)
    overrides = [o for o in run_spec["finetune_overrides"] if not o.startswith("schedule.epochs=")]
    return {**fitted, "epochs": fixed + per_step * steps, "finetune_overrides": [*overrides, f"schedule.epochs={steps}"]}


def _recipe_epochs(overrides: list[str]) -> tuple[int, int]:
    """(epochs of the phases with a fixed count, phases that run ``schedule.epochs`` each) of a recipe."""
    from .common import compose

    base = [o for o in overrides if not o.startswith("schedule.epochs=")]
    one, two = (sum(int(p.epochs) for p in compose(*base, f"schedule.epochs={k}").schedule.phases) for k in (1, 2))
    if two == one:
        raise ValueError(f"no phase of {overrides} follows schedule.epochs, so the budget cannot shorten it: run "
                         "the budget comparison with --epochs N (one phase of N epochs), or only --compare epochs")
    return one - (two - one), two - one


def run_peer(name: str, run_spec: dict) -> dict:
    """One runner in a fresh subprocess with the shared thread settings; its result or its error."""
    threads = str(run_spec["threads"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cwd:
        peer_spec = {**run_spec, **dict(PEERS[name].options)}
        done = subprocess.run([str(peer_python(name)), str(RUNNERS / PEERS[name].script), json.dumps(peer_spec)],
                              capture_output=True, text=True, cwd=cwd, env=env, check=False)
    process_s = round(time.perf_counter() - started, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines or not lines[-1].startswith("{"):
        return {"tool": name, "error": (done.stderr or done.stdout).strip()[-2000:], "process_s": process_s}
    return {**json.loads(lines[-1]), "tool": name, "process_s": process_s}


def group(run: dict) -> tuple:
    """Runs compared with each other: same data, image size, schedule (its epochs) and budget (0: the epoch
    comparison; a budget run's epochs are its own fit of the schedule)."""
    epochs = run["reference_epochs"] if "reference_epochs" in run else run["epochs"]
    return run["dataset"], run["image_size"], epochs, run.get("budget_s", 0)


def key(run: dict) -> tuple:
    """One run of one tool: a rerun replaces it."""
    return *group(run), run["seed"], run["tool"]


def main(datasets: list[str], seeds: list[int] | None, peers: list[str], settings: Settings,
         out_dir: Path = RESULTS, max_minutes: float | None = None,
         compare: tuple[str, ...] = COMPARISONS) -> dict:
    """Run every (dataset, comparison, seed, peer) of ``plan``; write peers.json after each run and the table
    at the end."""
    path = out_dir / "peers.json"
    header = {"benchmark": "peers", "environment": environment(), "settings": asdict(settings), "weights": weights(),
              "peers": {n: {"requirements": list(PEERS[n].requirements), "how": PEERS[n].how, "freeze": freeze(n)}
                        for n in peers}}
    payload = save(path, header)
    deadline = time.time() + 60 * max_minutes if max_minutes else None
    for dataset, comparison, seed, order, name in plan([DATASETS[n] for n in datasets], seeds, peers, compare):
        if deadline and time.time() > deadline:
            print(f"== time is up: {dataset.name} {comparison} seed {seed} {name} not run", flush=True)
            continue
        run = measure(dataset, comparison, seed, name, settings, payload) | {"order": order}
        print(f"   {run.get('error', '').splitlines()[-1:] or run['val']} in {run.get('process_s')} s", flush=True)
        payload = save(path, header, run)
    from .run_all import table

    (out_dir / "README.md").write_text(table(out_dir) + "\n")
    return payload


def plan(datasets: list[Dataset], seeds: list[int] | None, peers: list[str],
         compare: tuple[str, ...]) -> Iterator[tuple[Dataset, str, int, int, str]]:
    """(dataset, comparison, seed, order, tool) in the order they run: per dataset the epoch comparison, then
    the budget one (which sizes each tool's schedule from its runs in the first); the tools of the dataset's
    task, their order rotating from seed to seed."""
    for dataset in datasets:
        tools = [name for name in peers if dataset.task in PEERS[name].tasks]
        for comparison in compare if tools else ():
            for i, seed in enumerate(seeds if seeds is not None else dataset.seeds):
                for order, name in enumerate(tools[i % len(tools):] + tools[:i % len(tools)]):
                    yield dataset, comparison, seed, order, name


def measure(dataset: Dataset, comparison: str, seed: int, name: str, settings: Settings, payload: dict) -> dict:
    """One run's record: what was asked (data, size, epochs; the budget) and the runner's result or error."""
    run_spec = spec(dataset, settings, seed, payload["weights"])
    run = {"dataset": dataset.name, "image_size": run_spec["image_size"], "seed": seed,
           "batch_size": run_spec["batch_size"], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        tool_spec = run_spec if comparison == "epochs" else \
            budget_spec(dataset, settings, seed, run_spec, name, payload["runs"])
    except LookupError as error:
        return run | {"budget_s": budget_of(dataset, settings), "reference_epochs": run_spec["epochs"], "tool": name,
                      "error": str(error)}
    budget = {k: tool_spec[k] for k in ("budget_s", "reference_epochs") if k in tool_spec}
    print(f"== {dataset.name} {run_spec['image_size']} px, {tool_spec['epochs']} epochs"
          + (f" (≤ {budget['budget_s']:.0f} s)" if budget else "") + f", seed {seed}: {name}", flush=True)
    return run | {"epochs": tool_spec["epochs"], **budget, "load_average_at_start": round(os.getloadavg()[0], 2),
                  **run_peer(name, tool_spec)}


def save(path: Path, header: dict, run: dict | None = None) -> dict:
    """Merge this invocation's header and one run into ``path`` under a file lock, atomically: invocations
    running side by side (other datasets) keep each other's runs; a run replaces one with the same key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        payload = json.loads(path.read_text()) if path.is_file() else {"runs": []}
        payload.update({k: v for k, v in header.items() if k != "peers"})
        payload.setdefault("peers", {}).update(header["peers"])
        if run is not None:
            payload["runs"] = [r for r in payload["runs"] if key(r) != key(run)] + [run]
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(payload, indent=1) + "\n")
        os.replace(partial, path)
    return payload


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _value_at(run: dict, seconds: float, key: str) -> float | None:
    """The validation metric ``key`` of the last epoch a run finished within ``seconds``."""
    done = [p[key] for p in run["curve"] if p["t_s"] <= seconds + 1e-9]
    return done[-1] if done else None


# The columns of each task's table: (headline metric, second test metric) fill the placeholders.
HEADLINES = {"acc": ("acc", "AUC", "auc"), "miou": ("mIoU", "mean Dice", "mdice")}
COLUMNS = ("dataset", "px", "schedule", "tool", "seeds", "epochs", "val {0} (final)", "best val {0} (any epoch)",
           "test {0}", "test {1}", "wall s", "s / epoch", "val {0} at the fastest tool's wall time")


BUDGET_COLUMNS = ("dataset", "px", "schedule", "budget s", "tool", "seeds", "epochs run", "wall s",
                  "val {0} (final)", "test {0}", "test {1}")


def columns(metric: str, budget: bool = False) -> list[str]:
    """The table header of one task, classification (``acc``) or segmentation (``miou``), for the epoch
    comparison or the budget one."""
    title, second, _ = HEADLINES[metric]
    return [c.format(title, second) for c in (BUDGET_COLUMNS if budget else COLUMNS)]


def markdown(payload: dict) -> str:
    """The peers section of benchmarks/results/README.md (and the main README)."""
    s, env, w = payload["settings"], payload["environment"], payload["weights"]
    ok = [r for r in payload["runs"] if "error" not in r]
    batches = {r["dataset"]: r.get("batch_size", 32) for r in ok}  # runs before batch_size was recorded: 32
    loads = [r["load_average_at_start"] for r in ok if "load_average_at_start" in r]
    lines = ["## 8. finetune vs the tools users would pick instead (`make bench-peers`)", "",
             (f"Same machine ({env['cpu_count']} CPU cores, shared with other jobs"
             + (f"; 1-min load average at the start of the runs {min(loads)}–{max(loads)}" if loads else "")
             + "), one tool at a time per invocation, interleaved (the order rotates per seed). Every tool: "
             f"`{ARCH}` with the same ImageNet weights file (sha256 {w['sha256'][:12]}…, from finetune's offline "
             f"resolver: {w['source']}), the same splits, image size, epochs, the batch size of finetune's recipe ("
             + ", ".join(f"{d} {b}" for d, b in sorted(batches.items())) + "), "
             f"{s['threads']} torch thread(s) (OMP_NUM_THREADS={s['threads']}) and {s['workers']} loader workers, "
             "CPU. *Schedule*: *recipe* = finetune's recipe with its phases, the other tools the same number of "
             "epochs; `--epochs N`: finetune runs one phase of N epochs at its recipe's last freeze depth, with the "
             "recipe's other settings. "
             "*Wall s*: from the runner's start (after imports) to its last metric, data loading and model "
             "building included (finetune's also its test pass and the files a run writes). *Val … at the "
             "fastest tool's wall time*: per seed, each tool's validation metric after the last epoch it had "
             "finished when the fastest tool of that seed finished (read off its curve, not a separate run with "
             "a shorter schedule).")]
    groups = sorted(set(map(group, ok)))
    for budget in (False, True):
        if budget and any(g[3] for g in groups):
            lines += ["", "**At an equal wall-clock budget** (`--compare budget`): every tool runs the same schedule "
                      "as above with as many epochs as fit in the budget, sized from its own pace in the runs above "
                      "(wall(E) = its wall s + s per epoch of the curve's later half × (E − the schedule's epochs), "
                      "means over seeds; never more epochs than the schedule, at least one; finetune shortens the "
                      "phases that follow `schedule.epochs`). Each tool's own schedule (one-cycle, cosine, linear "
                      "decay) then runs to its end, as a user who sized their epochs to the minutes would; *wall s* "
                      "is measured, marked *(over)* where a tool's minimum ran past the budget by more than 5 %."]
        for metric in HEADLINES:
            mine = [g for g in groups if _metric(g[0]) == metric and bool(g[3]) == budget]
            if mine:
                header = columns(metric, budget)
                lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += [row for g in mine for row in (_budget_rows(ok, g, metric) if budget else
                                                       _rows([r for r in ok if group(r) == g], metric))]
    lines += ["", ("Mean ± sample standard deviation over the seeds listed. How each tool was run and its versions "
                   "(every package of each peer venv: `pip freeze` in peers.json):"), "",
              "| tool | how | versions |", "|---|---|---|"]
    for tool in payload["peers"]:
        seen = next((r["versions"] for r in ok if r["tool"] == tool), {})
        versions = ", ".join(f"{k} {v}" for k, v in seen.items()) or "not run"
        lines.append(f"| {tool} | {PEERS[tool].how} | {versions} |")
    lines += ["", *[f"- {dataset}: {note}" for dataset, d in DATASETS.items() for note in d.notes
                    if any(r["dataset"] == dataset for r in ok)]]
    failed = [r for r in payload["runs"] if "error" in r]
    lines += [f"- failed: {r['dataset']} seed {r['seed']} {r['tool']}: {r['error'].splitlines()[-1]}" for r in failed]
    lines += [f"- not measured: {note}" for note in missing(payload["runs"])]
    return "\n".join(lines)


def _metric(dataset: str) -> str:
    return DATASETS[dataset].metric if dataset in DATASETS else "acc"


def _rows(runs: list[dict], metric: str) -> list[str]:
    """One table row per tool of one group of runs (same data, size, epochs)."""
    dataset, px, epochs, _ = group(runs[0])
    key = f"val_{metric}"
    fastest = {seed: min(r["wall_s"] for r in runs if r["seed"] == seed) for seed in {r["seed"] for r in runs}}
    rows = []
    for tool, mine in _by_tool(runs):
        at_fastest = [a for r in mine if (a := _value_at(r, fastest[r["seed"]], key)) is not None]
        rows.append(
            f"| {dataset} | {px} | {schedule(runs)} | {tool} | {_seeds(mine)} | {epochs} | "
            f"{_mean_sd([r['val'][metric] for r in mine])} | {_mean_sd([max(p[key] for p in r['curve']) for r in mine])} | "
            f"{_test_cells(mine, metric)} | {statistics.mean(r['wall_s'] for r in mine):.0f} | "
            f"{statistics.mean(r['wall_s'] / r['epochs_run'] for r in mine):.1f} | "
            f"{_mean_sd(at_fastest) if len(at_fastest) == len(mine) else 'no epoch done'} "
            f"({statistics.mean(fastest[r['seed']] for r in mine):.0f} s) |")
    return rows


def _budget_rows(ok: list[dict], budget_group: tuple, metric: str) -> list[str]:
    """One table row per tool of one budget group: its fitted epochs, measured wall time and scores."""
    dataset, px, epochs, budget_s = budget_group
    label = schedule([r for r in ok if group(r) == (dataset, px, epochs, 0)])
    rows = []
    for tool, mine in _by_tool([r for r in ok if group(r) == budget_group]):
        over = " (over)" if max(r["wall_s"] for r in mine) > 1.05 * budget_s else ""
        rows.append(
            f"| {dataset} | {px} | {label} | {budget_s:.0f} | {tool} | {_seeds(mine)} | "
            f"{'/'.join(sorted({str(r['epochs']) for r in mine}))} of {epochs} | "
            f"{statistics.mean(r['wall_s'] for r in mine):.0f}{over} | {_mean_sd([r['val'][metric] for r in mine])} | "
            f"{_test_cells(mine, metric)} |")
    return rows


def _by_tool(runs: list[dict]) -> list[tuple[str, list[dict]]]:
    """(tool, its runs by seed) in ``PEERS`` order, for the tools that ran."""
    return [(tool, sorted(mine, key=lambda r: r["seed"])) for tool in PEERS
            if (mine := [r for r in runs if r["tool"] == tool])]


def _seeds(runs: list[dict]) -> str:
    return ",".join(str(r["seed"]) for r in runs)


def _test_cells(runs: list[dict], metric: str) -> str:
    """The two test columns: the headline metric and the second one (AUC; mean Dice), mean ± sd over seeds."""
    second = HEADLINES[metric][2]
    test = [r["test"] for r in runs if r.get("test")]
    return f"{_mean_sd([t[metric] for t in test])} | {_mean_sd([t[second] for t in test if t.get(second)])}"


def schedule(runs: list[dict]) -> str:
    """"recipe" (with the dataset's own changes to it) or "`--epochs N`", as the group's finetune runs show;
    "?" without one."""
    overrides = next((r["overrides"] for r in runs if r["tool"] == "finetune"), None)
    if overrides is None:
        return "?"
    if any(o.startswith("schedule.phases=") for o in overrides):
        return f"`--epochs {runs[0]['epochs']}`"
    changed = [o for o in overrides if o.startswith("schedule.") and o in DATASETS[runs[0]["dataset"]].recipe]
    return "recipe" + "".join(f", `{o}`" for o in changed)


def missing(runs: list[dict]) -> list[str]:
    """Each dataset's default seeds (its own size, the recipe schedule; its own budget) and every peer of its
    task no successful run covers, in the epoch comparison and the budget one."""
    ok = [r for r in runs if "error" not in r]
    recipe_groups = {g for g in set(map(group, ok))
                     if schedule([r for r in ok if group(r) == g[:3] + (0,)]).startswith("recipe")}
    done = {(r["dataset"], r["tool"], r["seed"], r.get("budget_s", 0)) for r in ok
            if group(r) in recipe_groups and r["image_size"] == DATASETS[r["dataset"]].image_size}
    notes = []
    for name, dataset in DATASETS.items():
        for budget, what in ((0, "finetune's recipe schedule"), (dataset.budget_s, f"a {dataset.budget_s:.0f} s budget")):
            gaps = {tool: [s for s in dataset.seeds if (name, tool, s, budget) not in done]
                    for tool, peer in PEERS.items() if dataset.task in peer.tasks}
            if all(len(seeds) == len(dataset.seeds) for seeds in gaps.values()):
                notes.append(f"{name} ({dataset.image_size} px, {what}): no tool")
            else:
                notes += [f"{name} ({what}): {tool} seed {', '.join(map(str, seeds))}"
                          for tool, seeds in gaps.items() if seeds]
    return notes


def cli(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    parser.add_argument("--seeds", help="comma list (default: each dataset's own: 0,1,2 where the split is small)")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma list of {', '.join(PEERS)}")
    parser.add_argument("--epochs", type=int, help="every tool trains N epochs (finetune: one phase, its recipe's last freeze depth); "
                                                   "default: finetune's recipe total, the others the same count")
    parser.add_argument("--image-size", type=int, help="override each dataset's size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run (OMP_NUM_THREADS)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes of every run")
    parser.add_argument("--compare", default=",".join(COMPARISONS),
                        help="comma list: epochs (every tool the same epochs), budget (the same seconds, each tool's "
                             "epochs sized from its epoch-comparison runs); default both, in that order")
    parser.add_argument("--budget-s", type=float, help="the budget comparison's seconds (default: each dataset's own)")
    parser.add_argument("--max-minutes", type=float, help="start no run after this many minutes")
    parser.add_argument("--out", type=Path, help=f"results folder (default {RESULTS}; --quick: {PEERS_DIR / 'quick'})")
    parser.add_argument("--quick", action="store_true", help="hymenoptera, 64 px, 1 epoch, seed 0: a set-up check")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.seeds, args.image_size, args.epochs, args.compare = "hymenoptera", "0", 64, 1, "epochs"
    settings = Settings(args.threads, args.workers, image_size=args.image_size, epochs=args.epochs,
                        budget_s=args.budget_s)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    out = args.out or (PEERS_DIR / "quick" if args.quick else RESULTS)
    compare = tuple(args.compare.split(","))
    if not set(compare) <= set(COMPARISONS):
        parser.error(f"--compare {args.compare}: choose from {', '.join(COMPARISONS)}")
    return main(args.datasets.split(","), seeds, args.peers.split(","), settings, out, args.max_minutes, compare)


if __name__ == "__main__":
    cli()
