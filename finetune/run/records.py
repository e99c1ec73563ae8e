"""A run directory read back: its checkpoints and its saved config (for resume). The model it holds is
rebuilt one layer up, in ``finetune.models.saved_runs``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from finetune.run.config import load_config, typed_config
from finetune.run.errors import FinetuneError
from finetune.run.keys import override_key

# Overrides a resume may change: they decide where and how fast the run goes, never what it computes.
# Keys a resume may change: how it runs and logs, and what is fitted / applied at the test only
RESUME_SAFE_KEYS = (
    "resume",
    "resume_finished",
    "trainer.devices",
    "dataset.num_workers",
    "trainer.progress_bar",
    "logger",
    "calibration",
    "tta",
    "threshold_tune_min",
)
# Keys a re-test of a finished run (resume_finished=true) may change too: applied at the test only; the checkpoint
# it tests stays the one its monitor picked in training (the re-test keeps that monitor)
RETEST_SAFE_KEYS = ("threshold",)
_ABSENT = object()
RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")  # a resolver, ${oc.env:HOME}; not a reference, ${a.b}


def saved_config_path(run_dir: Path) -> Path | None:
    """The run's resolved ``config.yaml``; Hydra's ``.hydra/config.yaml`` for a run killed before it
    wrote its own; None for a directory no finetune run started."""
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return path
    return None


def resume_config(run_dir: Path, current: DictConfig, overrides: list[str] = (), retest: bool = False) -> DictConfig:
    """The run's saved config on the schema (keys added since it was written take their defaults, so an
    older run directory can still be resumed), with the resume-safe ``overrides`` (``trainer.devices=…``;
    ``threshold=`` too for a ``retest`` of a finished run) of the ``current`` config applied."""
    safe = safe_keys(retest)
    path = saved_config_path(run_dir) or run_dir / "config.yaml"
    raw = OmegaConf.load(path)
    refuse_resolvers(raw, path)
    saved = typed_config(raw, str(path))
    for override in overrides:
        key = override_key(override)
        if key in safe and not key.startswith("resume"):  # the record keeps resume: null
            try:
                OmegaConf.update(saved, key, OmegaConf.select(current, key))
            except OmegaConfBaseException:  # a key of another task than the run's
                raise FinetuneError(
                    f"{override}: the resumed run {run_dir} is task={saved.task}, which has no key {key}; "
                    "drop it from the resume command line"
                ) from None
    return saved


def refuse_resolvers(saved: DictConfig, path: Path) -> None:
    """A stored config is resolved once, when its run starts: a value that calls a resolver
    (``${oc.env:HOME}``, ``${now:…}``) would read the environment again on resume, so it is refused
    (references to other keys, ``${schedule.epochs}``, are the config's own and stay)."""
    for key, value in _raw_leaves(OmegaConf.to_container(saved, resolve=False)):
        if isinstance(value, str) and RESOLVER_CALL.search(value):
            raise FinetuneError(
                f"{path}: {key} holds {value!r}, which reads the environment when resolved; a run's "
                "config is resolved once, when the run starts, and resume does not resolve it again: "
                "write the value itself there, or start a new run"
            )


def _raw_leaves(node: dict | list, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a plain container."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            yield from _raw_leaves(value, f"{name}.")
        else:
            yield name, value


def _plain(value):
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def safe_keys(retest: bool) -> tuple[str, ...]:
    """The keys a resume may change: ``RESUME_SAFE_KEYS``, and for a re-test of a finished run the test's own."""
    return RESUME_SAFE_KEYS + (RETEST_SAFE_KEYS if retest else ())


def experiment_changes(saved: DictConfig, current: DictConfig, overrides: list[str], retest: bool = False) -> list[str]:
    """Overrides of a resume command line that would change the experiment (its data, model,
    schedule, seed, task …): every one whose value differs from the run's saved config, or that
    names a key the saved config cannot answer for (a recipe group). A ``retest`` of a finished run
    may also change the decision threshold."""
    changed = []
    for override in overrides:
        key = override_key(override)
        if key in safe_keys(retest) or key == "hydra" or key.startswith("hydra."):
            continue
        try:
            now = _plain(OmegaConf.select(current, key, default=_ABSENT))
        except Exception:  # an interpolation that cannot be resolved: it cannot be checked either
            now = _ABSENT
        before = _plain(OmegaConf.select(saved, key, default=_ABSENT))
        if now is _ABSENT or before is _ABSENT or now != before:
            changed.append(override)
    return changed


def read_checkpoint(ckpt: Path, advice: str) -> dict:
    """A checkpoint's contents, read with ``weights_only`` (nothing pickled in it runs); one FinetuneError
    naming ``ckpt`` when it holds objects finetune never writes, cannot be read or is no dict (``advice``:
    what to do instead). The message never suggests loading it without ``weights_only``."""
    import pickle

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's text suggests weights_only=False: never repeated to the user
        raise FinetuneError(
            f"{ckpt} holds Python objects that are not loaded for safety (weights_only): objects "
            "finetune never writes in a checkpoint, so it is not a finetune checkpoint, or was "
            f"tampered with; {advice}"
        ) from None
    except Exception as err:  # truncated zip, not a torch file at all, …
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
        reason = reason if "weights_only" not in reason else type(err).__name__
        raise FinetuneError(
            f"{ckpt} cannot be read ({reason}): it is truncated or not a checkpoint; {advice}"
        ) from None
    if not isinstance(state, dict):
        raise FinetuneError(f"{ckpt} is not a finetune checkpoint (it holds a {type(state).__name__}); {advice}")
    return state


def _other_checkpoints(ckpt: Path) -> list[Path]:
    """The run's other checkpoints beside ``ckpt``."""
    return [p for p in sorted(ckpt.parent.glob("*.ckpt")) if p.name != ckpt.name]


def check_checkpoint(ckpt: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a checkpoint that is truncated, foreign or holds pickled objects (``weights_only``
    blocks them), whose tensors do not fit the run's model (``shapes``, from ``model_shapes``), or that holds
    weights only where training would continue from it (an unfinished run: no metrics.json), before anything
    in its run directory is rewritten."""
    from finetune.run.schedule import PHASE_KEY

    others = _other_checkpoints(ckpt)
    advice = f"resume from another checkpoint (resume={others[0]}) or start a new run" if others else "start a new run"
    state = read_checkpoint(ckpt, advice)
    if PHASE_KEY not in state or "state_dict" not in state:
        raise FinetuneError(f"{ckpt} was not written by finetune (no phase record); {advice}")
    run_dir = run_dir_of(ckpt)
    if "optimizer_states" not in state and not (run_dir / "metrics.json").is_file():  # training would continue
        raise FinetuneError(
            f"{ckpt} holds weights only (a checkpoints.keep=none run saves them when it fails after its test), so "
            f"training cannot continue from it: `finetune export run={run_dir}` exports them; to train the run "
            "again from its first phase, move the file away"
        )
    for key, tensor in state["state_dict"].items():
        shape = tuple(getattr(tensor, "shape", ()))
        if shapes and key in shapes and shape != shapes[key]:
            raise FinetuneError(
                f"{ckpt}: tensor {key} has shape {list(shape)}, but this run's model has "
                f"{list(shapes[key])}: the checkpoint does not belong to this run; {advice}"
            )


def locate_resume(path: str | Path, prefer: tuple[str, ...]) -> tuple[Path, Path | None]:
    """(run directory, checkpoint or None when the run stopped before its first one) of ``resume=``."""
    path = Path(path).expanduser()
    if path.is_file():
        return find_checkpoint(path, prefer)
    if not path.is_dir():
        raise FinetuneError(f"resume={path}: no such run directory or checkpoint")
    for name in prefer:
        if (path / "checkpoints" / name).is_file():
            return path, path / "checkpoints" / name
    if saved_config_path(path) is None:
        raise FinetuneError(
            f"resume={path}: not a finetune run directory (no config.yaml, no .hydra/config.yaml); "
            "resume= takes the directory a training run wrote"
        )
    return path, None


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to (it usually sits in ``checkpoints/``)."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def find_checkpoint(path: str | Path, prefer: tuple[str, ...] = ("best.ckpt", "last.ckpt")) -> tuple[Path, Path]:
    """(run directory, checkpoint) for a run directory or a checkpoint file inside one."""
    path = Path(path).expanduser()
    if path.is_file():
        run_dir = run_dir_of(path)
        return run_dir, path
    for name in prefer:
        if (path / "checkpoints" / name).is_file():
            return path, path / "checkpoints" / name
    if _kept_no_checkpoints(path):
        exports = path / "exports"
        where = (
            f"its exports are in {exports} (use finetune predict export={exports} inputs=…)"
            if exports.is_dir()
            else f"it has no {exports} either"
        )
        raise FinetuneError(
            f"{path} was trained with checkpoints.keep=none: it wrote no checkpoint (it tested and exported the "
            f"best epoch's weights held in memory); {where}; to export other formats, train it again with "
            "checkpoints.keep=best"
        )
    raise FinetuneError(
        f"{path} is not a finetune run directory or checkpoint: expected "
        f"{path}/checkpoints/best.ckpt (pass run=<run dir> or run=<file>.ckpt)"
    )


def _kept_no_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a finished run (it wrote metrics.json) whose saved config says ``checkpoints.keep=none``:
    it kept no checkpoint."""
    path = saved_config_path(run_dir) if (run_dir / "metrics.json").is_file() else None
    if path is None:
        return False
    try:
        return OmegaConf.select(OmegaConf.load(path), "checkpoints.keep", default=None) == "none"
    except (OmegaConfBaseException, OSError, ValueError, yaml.YAMLError):  # not a config we wrote: the generic line
        return False


def run_config(path: str | Path) -> DictConfig:
    """The saved config of a finished run directory (or of the run a checkpoint belongs to), typed by the
    schema (keys added since it was written take their defaults)."""
    run_dir, _ = find_checkpoint(path)
    for name in ("config.yaml", "data.json", "weights.json"):
        if not (run_dir / name).is_file():
            raise FinetuneError(f"{run_dir / name} is missing: {run_dir} is not a complete run directory")
    return load_config(run_dir / "config.yaml")


def model_state(ckpt: Path) -> dict:
    """The ``state_dict`` of a finished run's checkpoint, read as ``read_checkpoint`` reads it."""
    others = _other_checkpoints(ckpt)
    advice = (
        f"use another checkpoint of the run ({others[0]}) or train the run again" if others else "train the run again"
    )
    state = read_checkpoint(ckpt, advice)
    if not isinstance(state.get("state_dict"), dict):
        raise FinetuneError(f"{ckpt} is not a finetune checkpoint (it has no state_dict); {advice}")
    return state["state_dict"]
