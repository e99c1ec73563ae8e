"""A run directory read back: its checkpoint, its saved config (for resume) and its model."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.data.transforms import Preprocessing
from finetune.errors import FinetuneError
from finetune.models.freezing import FineTuneModel
from finetune.models.factory import build_model
from finetune.models.weights import resolve_weights


# Overrides a resume may change: they decide where and how fast the run goes, never what it computes.
# Keys a resume may change: how it runs and logs, and what is fitted / applied at the test only
RESUME_SAFE_KEYS = ("resume", "resume_finished", "trainer.devices", "dataset.num_workers", "trainer.progress_bar",
                    "logger", "calibration", "tta")
_ABSENT = object()
RESOLVER_CALL = re.compile(r"\$\{\s*[\w.]+\s*:")  # a resolver, ${oc.env:HOME}; not a reference, ${a.b}


def saved_config_path(run_dir: Path) -> Path | None:
    """The run's resolved ``config.yaml``; Hydra's ``.hydra/config.yaml`` for a run killed before it
    wrote its own; None for a directory no finetune run started."""
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            return path
    return None


def resume_config(run_dir: Path, current: DictConfig, overrides: list[str] = ()) -> DictConfig:
    """The run's saved config, plus today's defaults for top-level keys added since it was
    written (e.g. ``monitor``), so an older run directory can still be resumed; the resume-safe
    ``overrides`` (``trainer.devices=…``) are applied."""
    path = saved_config_path(run_dir) or run_dir / "config.yaml"
    saved = OmegaConf.load(path)
    refuse_resolvers(saved, path)
    for key in current.keys() - saved.keys():
        saved[key] = current[key]
    for key in (_override_key(o) for o in overrides):
        if key in RESUME_SAFE_KEYS and not key.startswith("resume"):  # the record keeps resume: null
            OmegaConf.update(saved, key, OmegaConf.select(current, key), force_add=True)
    return saved


def refuse_resolvers(saved: DictConfig, path: Path) -> None:
    """A stored config is resolved once, when its run starts: a value that calls a resolver
    (``${oc.env:HOME}``, ``${now:…}``) would read the environment again on resume, so it is refused
    (references to other keys, ``${schedule.epochs}``, are the config's own and stay)."""
    for key, value in _raw_leaves(OmegaConf.to_container(saved, resolve=False)):
        if isinstance(value, str) and RESOLVER_CALL.search(value):
            raise FinetuneError(f"{path}: {key} holds {value!r}, which reads the environment when resolved; a run's "
                                "config is resolved once, when the run starts, and resume does not resolve it again: "
                                "write the value itself there, or start a new run")



def _raw_leaves(node: dict | list, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of a plain container."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            yield from _raw_leaves(value, f"{name}.")
        else:
            yield name, value


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _plain(value):
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def experiment_changes(saved: DictConfig, current: DictConfig, overrides: list[str]) -> list[str]:
    """Overrides of a resume command line that would change the experiment (its data, model,
    schedule, seed, task …): every one whose value differs from the run's saved config, or that
    names a key the saved config cannot answer for (a recipe group)."""
    changed = []
    for override in overrides:
        key = _override_key(override)
        if key in RESUME_SAFE_KEYS or key == "hydra" or key.startswith("hydra."):
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
        raise FinetuneError(f"{ckpt} holds Python objects that are not loaded for safety (weights_only): objects "
                            "finetune never writes in a checkpoint, so it is not a finetune checkpoint, or was "
                            f"tampered with; {advice}") from None
    except Exception as err:  # truncated zip, not a torch file at all, …
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
        reason = reason if "weights_only" not in reason else type(err).__name__
        raise FinetuneError(f"{ckpt} cannot be read ({reason}): it is truncated or not a checkpoint; "
                            f"{advice}") from None
    if not isinstance(state, dict):
        raise FinetuneError(f"{ckpt} is not a finetune checkpoint (it holds a {type(state).__name__}); {advice}")
    return state


def _other_checkpoints(ckpt: Path) -> list[Path]:
    """The run's other checkpoints beside ``ckpt``."""
    return [p for p in sorted(ckpt.parent.glob("*.ckpt")) if p.name != ckpt.name]


def check_checkpoint(ckpt: Path, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a checkpoint that is truncated, foreign or holds pickled objects (``weights_only``
    blocks them), or whose tensors do not fit the run's model (``shapes``, from ``model_shapes``),
    before anything in its run directory is rewritten."""
    from finetune.engine.schedule import PHASE_KEY

    others = _other_checkpoints(ckpt)
    advice = (f"resume from another checkpoint (resume={others[0]}) or start a new run" if others
              else "start a new run")
    state = read_checkpoint(ckpt, advice)
    if PHASE_KEY not in state or "state_dict" not in state:
        raise FinetuneError(f"{ckpt} was not written by finetune (no phase record); {advice}")
    for key, tensor in state["state_dict"].items():
        shape = tuple(getattr(tensor, "shape", ()))
        if shapes and key in shapes and shape != shapes[key]:
            raise FinetuneError(f"{ckpt}: tensor {key} has shape {list(shape)}, but this run's model has "
                                f"{list(shapes[key])}: the checkpoint does not belong to this run; {advice}")


def model_shapes(cfg: DictConfig, run_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """The shape of every tensor of the run's model, named as its checkpoints name them (``model.…``),
    from a model built on the meta device (nothing allocated); None before the run wrote ``data.json``."""
    if not (run_dir / "data.json").is_file():
        return None
    data = json.loads((run_dir / "data.json").read_text())
    skeleton = resolve_weights(cfg.backbone.name, pretrained=False)
    try:
        with torch.device("meta"):
            model = build_model(cfg, skeleton, data["model_in_chans"], len(data["class_names"]))
    except Exception:  # an architecture that computes on its tensors while built (.item() on meta): no pre-check
        return None
    return {f"model.{key}": tuple(tensor.shape) for key, tensor in model.state_dict().items()}


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
        raise FinetuneError(f"resume={path}: not a finetune run directory (no config.yaml, no .hydra/config.yaml); "
                            "resume= takes the directory a training run wrote")
    return path, None


def check_resume(current: DictConfig, overrides: list[str],
                 prefer: tuple[str, ...] = ("last.ckpt", "best.ckpt")) -> tuple[Path, Path | None, DictConfig]:
    """Check a ``resume=`` command line completely, writing nothing: the run exists, is not finished
    (unless ``resume_finished=true``), its stored config calls no resolver, the overrides do not change
    its experiment, and its checkpoint loads into the run's model. Returns (run directory, checkpoint
    or None to start phase 1 from scratch, the config to continue with)."""
    run_dir, ckpt = locate_resume(current.resume, prefer)
    if (run_dir / "metrics.json").exists() and not current.get("resume_finished", False):
        raise FinetuneError(f"{run_dir} has finished (metrics.json exists); resuming would re-test it and rewrite "
                            f"its metrics.json, exports and report: add resume_finished=true if that is what you "
                            f"want, or start a new run")
    cfg = resume_config(run_dir, current, overrides)
    changed = experiment_changes(cfg, current, overrides)
    if changed:
        raise FinetuneError(f"resume={current.resume} continues the run with its saved config; these overrides "
                            f"would change the experiment: {' '.join(changed)} (allowed when resuming: "
                            f"{', '.join(k for k in RESUME_SAFE_KEYS if k != 'resume')}, hydra.*); start a new run "
                            "to change them")
    if ckpt is not None:
        check_checkpoint(ckpt, model_shapes(cfg, run_dir))
    return run_dir, ckpt, cfg


def prepare_resume(current: DictConfig, overrides: list[str],
                   prefer: tuple[str, ...] = ("last.ckpt", "best.ckpt")) -> tuple[Path, Path | None, DictConfig]:
    """``check_resume``, then say where the run continues. (Temporaries of interrupted writes went when
    its lock was taken.) Returns what ``check_resume`` returns."""
    run_dir, ckpt, cfg = check_resume(current, overrides, prefer)
    if ckpt is None:
        print(f"resuming {run_dir}: it stopped before its first checkpoint, so phase 1 starts from the beginning "
              "with the run's saved config")
    else:
        print(f"resuming {run_dir} from {ckpt.name} with the run's saved config")
    return run_dir, ckpt, cfg


@dataclass
class LoadedRun:
    """A finished run: its config, model (best checkpoint, eval mode), classes and preprocessing."""

    run_dir: Path
    cfg: DictConfig
    model: FineTuneModel
    class_names: list[str]
    multilabel: bool
    preprocessing: Preprocessing
    weights: dict
    checkpoint: Path
    window: tuple[float, float] | None = None  # DICOM [center, width] the run read its files with


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
    raise FinetuneError(f"{path} is not a finetune run directory or checkpoint: expected "
                        f"{path}/checkpoints/best.ckpt (pass run=<run dir> or run=<file>.ckpt)")


def run_config(path: str | Path) -> DictConfig:
    """The saved config of a finished run directory (or of the run a checkpoint belongs to)."""
    run_dir, _ = find_checkpoint(path)
    for name in ("config.yaml", "data.json", "weights.json"):
        if not (run_dir / name).is_file():
            raise FinetuneError(f"{run_dir / name} is missing: {run_dir} is not a complete run directory")
    return OmegaConf.load(run_dir / "config.yaml")


def model_state(ckpt: Path) -> dict:
    """The ``state_dict`` of a finished run's checkpoint, read as ``read_checkpoint`` reads it."""
    others = _other_checkpoints(ckpt)
    advice = (f"use another checkpoint of the run ({others[0]}) or train the run again" if others
              else "train the run again")
    state = read_checkpoint(ckpt, advice)
    if not isinstance(state.get("state_dict"), dict):
        raise FinetuneError(f"{ckpt} is not a finetune checkpoint (it has no state_dict); {advice}")
    return state["state_dict"]


def load_run(path: str | Path) -> LoadedRun:
    """Rebuild the model of a run and load its checkpoint (``weights_only``: no pickle is executed)."""
    cfg = run_config(path)
    run_dir, ckpt = find_checkpoint(path)
    data = json.loads((run_dir / "data.json").read_text())
    state = model_state(ckpt)
    skeleton = resolve_weights(cfg.backbone.name, pretrained=False)  # the checkpoint holds every tensor
    model = build_model(cfg, skeleton, data["model_in_chans"], len(data["class_names"]))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    preprocessing = Preprocessing.from_dict(data["preprocessing"])
    return LoadedRun(run_dir, cfg, model.eval(), data["class_names"], data.get("multilabel", False), preprocessing,
                     json.loads((run_dir / "weights.json").read_text()), ckpt,
                     tuple(data["window"]) if data.get("window") else None)
