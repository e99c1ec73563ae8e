"""Which files are images, and finding them in folders: one rule for every route that lists images
(class folders, CSV rows, segmentation pairs, ``predict`` and ``explain`` inputs).

GIF is not an image here, as in torchvision's ``ImageFolder`` and timm's folder readers: a
256-colour palette (often animated, only the first frame would be read), and in practice mostly
placeholders (hymenoptera's ``imageNotFound.gif``). Masks are label maps, not photos: they may be
GIFs (DRIVE's are).

Folder links: a folder link is followed only where it leads outside the tree being walked (and the
caller allows that); a link back into the tree would list images twice, under another class, or
loop forever (``ants/loop -> ..``). Links not followed are named in one warning line, and so are the
files a folder holds that are not images (why, and how to include them); a CSV row naming one is
refused, or left out with ``dataset.on_error=skip`` (``finetune.data.folders``), for the same reason.
A dataset's lines are said by the commands that read the training data (``reading_training_data``), not again by
those that re-read a finished run's (export, report, evaluate); the inputs a command was given, always.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

from PIL import Image, ImageFile

from finetune.run.errors import FinetuneError, one_line

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | DICOM_EXTENSIONS  # what a CSV row or a predict input may name
MASK_EXTENSIONS = IMAGE_EXTENSIONS | {".gif"}  # segmentation masks (label maps)
WIDTH = 80 - len("WARNING: ")  # a warning line of the command's log on an 80-column terminal
_TRAINING_DATA = ContextVar("reading_training_data", default=False)


@contextmanager
def reading_training_data() -> Iterator[None]:
    """Inside: a dataset's listing says what it left out (files that are not images, folder links not followed):
    the commands that read the training data (train, inspect, advise, lr-find) run inside."""
    token = _TRAINING_DATA.set(True)
    try:
        yield
    finally:
        _TRAINING_DATA.reset(token)


def says_left_out() -> bool:
    """Whether a dataset's listing says what it left out here (``reading_training_data``)."""
    return _TRAINING_DATA.get()


def is_image(path: Path, extensions: frozenset[str] = INPUT_EXTENSIONS) -> bool:
    """Whether ``path``'s suffix (any case) names an image finetune reads."""
    return path.suffix.lower() in extensions


def why_not_read(path: Path, extensions: frozenset[str] = INPUT_EXTENSIONS) -> str:
    """Why ``path`` (``is_image`` false) is not read, for the line that names it."""
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return "GIF: a 256-colour palette, often animated, mostly placeholders"
    return f"{suffix or 'no suffix'}: not {suffixes(extensions)}"


def suffixes(extensions: frozenset[str]) -> str:
    """``extensions`` for a message: ``.bmp, .jpeg, …``."""
    return ", ".join(sorted(extensions))


def left_out_line(paths: list[Path], shown: Callable[[Path], str], wanted: frozenset[str]) -> str:
    """``left out 1 GIF: train/ants/x.gif (convert to .png to use)``, ``left out 2 DB/TXT, e.g. ant/Thumbs.db (not an
    image)``: how many files of which kinds, one of them (an image another format, where there is one; as ``shown``,
    only its name where the line would pass ``WIDTH``) and what it takes to read it."""
    kinds = sorted({p.suffix.lower().lstrip(".").upper() or "suffixless" for p in paths})
    kind = "/".join(kinds) if len(kinds) <= 2 else "files"
    count = f"1 {kind}:" if len(paths) == 1 else f"{len(paths)} {kind}, e.g."
    convertible = convertible_suffixes() - wanted
    example = next((p for p in paths if p.suffix.lower() in convertible), paths[0])
    target = ".png" if ".png" in wanted else sorted(wanted)[0]
    hint = f"convert to {target} to use" if example.suffix.lower() in convertible else "not an image"

    def line(named: str) -> str:
        return f"left out {count} {named} ({hint})"

    return line(shown(example)) if len(line(shown(example))) <= WIDTH else line(f".../{example.name}")


@cache
def convertible_suffixes() -> frozenset[str]:
    """The suffixes of the images Pillow reads (GIF, PSD, ICO, …; not its stubs, nor video) and of DICOM files: a
    file left out with one of these is an image finetune reads once converted."""
    registered = Image.registered_extensions()  # loads every plugin
    readable = {
        suffix
        for suffix, kind in registered.items()
        if kind in Image.OPEN and kind != "MPEG" and not _is_stub(Image.OPEN[kind][0])
    }
    return frozenset(readable) | DICOM_EXTENSIONS


def _is_stub(factory: object) -> bool:
    """Whether a Pillow format only identifies its files (a handler must be installed to read them)."""
    return isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile)


def find_images(spec: str) -> list[Path]:
    """Image files (DICOM included) named by comma-separated files, folders (searched recursively;
    folder links followed unless they lead back into the folder) or globs (``**`` follows no link)."""
    found: dict[Path, None] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        path = Path(part).expanduser()
        if path.is_file():
            candidates = [path]
        elif path.is_dir():
            walker = FolderWalker(path, follow_outside=True, inputs=True)
            candidates = sorted(walker.files(path, INPUT_EXTENSIONS))
            walker.warn_skipped()
        else:
            candidates = _glob(path)
        found |= dict.fromkeys(p for p in candidates if p.is_file() and is_image(p))
    if not found:
        raise FinetuneError(
            f"no images found in {spec!r}: give image files, folders or globs "
            f"(extensions {suffixes(INPUT_EXTENSIONS)}), comma-separated"
        )
    return list(found)


def _glob(pattern: Path) -> list[Path]:
    """Visible files matching ``pattern``, sorted; pathlib's ``**`` never descends into folder links
    (``glob.glob``'s does, and loops through ``loop -> ..``)."""
    magic = [i for i, part in enumerate(pattern.parts) if glob.has_magic(part)]
    if not magic:
        return []
    base = Path(*pattern.parts[: magic[0]]) if magic[0] else Path(".")
    matches = base.glob(str(Path(*pattern.parts[magic[0] :])))
    return sorted(p for p in matches if p.is_file() and not p.name.startswith("."))


class FolderWalker:
    """Lists image files and subfolders under ``root``: hidden entries skipped, sorted, and folder
    links followed only when they lead outside ``root`` and ``follow_outside`` is set (``hint``: how
    to allow them, for the warning). Links left out are collected for one warning (``warn_skipped``), said
    always for the ``inputs`` a command was given, else (a dataset) while ``reading_training_data``."""

    def __init__(self, root: Path, follow_outside: bool = False, hint: str = "", inputs: bool = False) -> None:
        self.top = Path(root)  # as given, for messages
        self.root = Path(os.path.realpath(root))
        self.follow_outside = follow_outside
        self.hint = hint
        self.inputs = inputs
        self.skipped: dict[Path, str] = {}  # link → why it was not followed
        self.left_out: dict[Path, frozenset[str]] = {}  # file that is not an image → the extensions asked for
        self._entered: set[str] = set()  # real paths of the outside folders already walked
        self._decided: dict[Path, bool] = {}  # link -> followed? (class folders are listed more than once)

    def subfolders(self, folder: Path) -> list[Path]:
        """Visible subfolders of ``folder`` (hidden ones such as .ipynb_checkpoints are not classes)."""
        return [path for path, is_dir in self._entries(folder) if is_dir and self._may_enter(path)]

    def files(self, folder: Path, extensions: frozenset[str], recursive: bool = True) -> list[Path]:
        """Files under ``folder`` whose suffix is in ``extensions``: its own files (sorted), then each
        subfolder's (recursively unless ``recursive`` is false); the others are left out, for
        ``warn_skipped`` to name."""
        found = list(self._walk(folder, recursive))
        self.left_out |= dict.fromkeys((f for f in found if not is_image(f, extensions)), extensions)
        return [f for f in found if is_image(f, extensions)]

    def warn_skipped(self) -> None:
        """One warning line naming the folder links that were not followed, one (80 columns) counting the files
        left out as not images, naming the first and how to include them; nothing where there are none, or
        where no one reads the training data (a dataset listed again for a finished run)."""
        if not (self.inputs or says_left_out()):
            return
        if self.skipped:
            named = [f"{self._shown(link)} -> {os.readlink(link)} ({why})" for link, why in self.skipped.items()]
            log.warning("did not follow %d folder link(s) under %s: %s", len(named), self.top, one_line(named))
        if self.left_out:
            paths = list(self.left_out)
            log.warning(left_out_line(paths, self._shown, frozenset().union(*self.left_out.values())))

    def _walk(self, folder: Path, recursive: bool) -> Iterator[Path]:
        entries = self._entries(folder)
        yield from (path for path, is_dir in entries if not is_dir)
        if recursive:
            for path, is_dir in entries:
                if is_dir and self._may_enter(path):
                    yield from self._walk(path, recursive)

    @staticmethod
    def _entries(folder: Path) -> list[tuple[Path, bool]]:
        """(path, whether it is a folder, links followed) of ``folder``'s visible entries, sorted by name."""
        with os.scandir(folder) as scan:
            entries = [(Path(e.path), e.is_dir()) for e in scan if not e.name.startswith(".")]
        return sorted(entries, key=lambda entry: entry[0].name)

    def _may_enter(self, folder: Path) -> bool:
        """A real folder, or a link to a folder outside the tree (if allowed) not walked already."""
        if not folder.is_symlink():
            return True
        if folder not in self._decided:
            self._decided[folder] = self._follows(folder)
        return self._decided[folder]

    def _follows(self, folder: Path) -> bool:
        """Whether to follow the folder link ``folder`` (decided once per link)."""
        target = os.path.realpath(folder)
        inside = os.path.commonpath([str(self.root), target]) == str(self.root)
        if inside:
            why = "leads back into it: its images would be listed twice, or forever"
        elif not self.follow_outside:
            why = f"leads outside it{'; ' + self.hint if self.hint else ''}"
        elif target in self._entered or os.path.commonpath([target, os.path.realpath(folder.parent)]) == target:
            why = "leads to a folder already listed"
        else:
            self._entered.add(target)
            return True
        self.skipped[folder] = why
        return False

    def _shown(self, path: Path) -> str:
        """``path`` relative to the folder walked, where it lies inside it."""
        try:
            return str(path.relative_to(self.top))
        except ValueError:
            return str(path)
