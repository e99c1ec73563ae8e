"""Process-wide warning filters: installed once by our entry points at start-up, never by importing finetune (a
user's own program that imports us keeps its warnings)."""

from __future__ import annotations

import subprocess
import sys
import warnings

from finetune import cli
from finetune.commands import worker
from finetune.run.warning_filters import quiet_library_chatter

# Every finetune module imported while warnings.filterwarnings / simplefilter record which module of ours calls them.
IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys, warnings

calls = []


def recording(original):
    def record(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.partition(".")[0] == "finetune":
            calls.append(f"{caller}: {args} {kwargs}")
        return original(*args, **kwargs)

    return record


warnings.filterwarnings = recording(warnings.filterwarnings)
warnings.simplefilter = recording(warnings.simplefilter)
import finetune

names = [m.name for m in pkgutil.walk_packages(finetune.__path__, "finetune.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
assert "finetune.training.phases" in names, names
print("\\n".join(calls))
"""

# The library warnings as Lightning and torch word them (each with the category they are raised with).
LIBRARY_CHATTER = [
    (
        "Found 12 module(s) in eval mode at the start of training. This may lead to unexpected behavior during "
        "training. If this is intentional, you can ignore this warning.",
        UserWarning,
    ),
    (
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
        "treespec.is_leaf()` instead.",
        FutureWarning,
    ),
    ("Checkpoint directory /runs/a/checkpoints exists and is not empty.", UserWarning),
    (
        "It is recommended to use `self.log('test/accuracy', ..., sync_dist=True)` when logging on epoch level in "
        "distributed setting to accumulate the metric across devices.",
        UserWarning,
    ),
    (
        "torch.distributed.nn.functional.all_gather is deprecated, use torch.distributed.nn.functional.all_gather "
        "instead.",
        FutureWarning,
    ),
    (
        "The number of training batches (3) is smaller than the logging interval Trainer(log_every_n_steps=50). "
        "Set a lower value for log_every_n_steps if you want to see logs for the training epoch.",
        UserWarning,
    ),
    (
        "Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading (when "
        "num_workers > 1), `__len__` could be inaccurate if each worker is not configured independently to avoid "
        "having duplicate data.",
        UserWarning,
    ),
]


def shown(install: bool) -> list[str]:
    """The warnings shown of the library chatter and of two of a user's own, with or without our start-up filters."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if install:
            quiet_library_chatter()
        for message, category in LIBRARY_CHATTER:
            warnings.warn(message, category, stacklevel=1)
        warnings.warn("my own program's warning", UserWarning, stacklevel=1)
        warnings.warn("Checkpoint loading is deprecated in my library", FutureWarning, stacklevel=1)
    return [str(w.message) for w in seen]


def test_importing_finetune_installs_no_warning_filter():
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", f"finetune modules set process-wide warning filters at import:\n{out.stdout}"


def test_start_up_filters_quiet_only_the_library_chatter():
    own = ["my own program's warning", "Checkpoint loading is deprecated in my library"]
    assert shown(install=False) == [message for message, _ in LIBRARY_CHATTER] + own
    assert shown(install=True) == own


def logged(install: bool) -> list[str]:
    """What LitData's dataset logger emits of its cache-size advice and of a warning that matters, with or
    without our start-up filters (the logger's filters, set by an earlier test's start-up too, restored after)."""
    import logging

    logger, records = logging.getLogger("litdata.streaming.dataset"), []
    handler, filters, level = logging.Handler(), logger.filters, logger.level
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    logger.filters = []
    logger.setLevel(logging.INFO)
    try:
        if install:
            quiet_library_chatter()
        logger.warning(  # as LitData 0.2.76 words it, for every StreamingDataset under 25GB of cache
            "The provided `max_cache_size` is less than 25GB. With many DataLoader workers and ~64MB chunks, peak "
            "cache is roughly `num_workers * max_pre_download * chunk_size` (often 5–12GB). Consider increasing "
            "`max_cache_size` to at least 25GB to avoid eviction thrash."
        )
        logger.info("StreamingDataset POSIX-fast %s: mmap chunks in place (no cache copy, no source delete).", "posix")
        logger.warning("Overriding state drop_last True to False.")
    finally:
        logger.removeHandler(handler)
        logger.filters = filters
        logger.setLevel(level)
    return [message.partition(".")[0] for message in records]


def test_start_up_filters_quiet_litdatas_cache_size_advice_only():
    advice = "The provided `max_cache_size` is less than 25GB"
    in_place = "StreamingDataset POSIX-fast posix: mmap chunks in place (no cache copy, no source delete)"
    assert logged(install=False) == [advice, in_place, "Overriding state drop_last True to False"]
    assert logged(install=True) == ["Overriding state drop_last True to False"]


def test_start_up_filters_installed_twice_are_listed_once():
    with warnings.catch_warnings():
        quiet_library_chatter()
        once = list(warnings.filters)
        quiet_library_chatter()
        assert warnings.filters == once


def chatter_filters() -> list:
    """The filters the start-up function installs."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        quiet_library_chatter()
        return list(warnings.filters)


def installed_by(entry_point) -> bool:
    """Whether calling ``entry_point`` installs the start-up filters (the process's filters are restored after)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        entry_point()
        return all(installed in warnings.filters for installed in chatter_filters())


def test_the_cli_installs_the_filters_at_start_up(capsys):
    assert not installed_by(lambda: None)
    assert installed_by(lambda: cli.main(["--help"]))
    assert "usage: finetune" in capsys.readouterr().out


def test_the_ddp_worker_installs_the_filters_at_start_up(capsys):
    assert installed_by(lambda: worker.main([]))  # no run_dir=: refused with one line, after start-up
    assert "run_dir" in capsys.readouterr().err


# ``python -m finetune --help`` run in this interpreter, then: its exit code, and whether the filters are installed.
PYTHON_DASH_M = """
import runpy, sys, warnings
from finetune.run.warning_filters import quiet_library_chatter

sys.argv = ["finetune", "--help"]
try:
    runpy.run_module("finetune", run_name="__main__")
except SystemExit as stop:
    code = stop.code
installed = list(warnings.filters)
quiet_library_chatter()
print(code, sorted(map(repr, installed)) == sorted(map(repr, warnings.filters)))
"""


def test_python_dash_m_finetune_installs_the_filters():
    out = subprocess.run([sys.executable, "-c", PYTHON_DASH_M], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "0 True"
