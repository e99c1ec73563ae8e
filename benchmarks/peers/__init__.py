"""finetune against the tools users would pick instead, on the same machine (``make bench-peers``; the command
line, ``python -m benchmarks.peers``, is ``__main__.py``).

Peers (``PEERS``): finetune with its recipe for the data; fastai ``vision_learner`` + ``fine_tune``
with its defaults; the Hugging Face ``Trainer`` with its defaults; a plain timm + PyTorch loop as
the floor; for segmentation (CamVid), ``smp.Unet`` with a plain loop. A peer runs on the datasets
of its ``tasks``. Each peer is a standalone script in ``benchmarks/peer_runners/`` run in a
subprocess with its own python: it takes a JSON spec (data, image size, epochs, seed, threads,
weights file) and prints one JSON result line (val/test accuracy and AUC for two classes, or mIoU,
mean Dice and pixel accuracy; wall time, the validation curve with times, versions). Every peer gets the same
splits (read by
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

By job: ``definitions`` (the tools, the data, what one invocation shares), ``venvs`` (each tool's python),
``specs`` (what every runner is told), ``budget`` (the equal-wall-clock fit), ``running`` (each run, in turn),
``results`` (peers.json, merged under a file lock) and ``tables`` (the section this package hands the results
README, ``benchmarks/readme.py``: ``SECTIONS``). None of them imports ``run_all``.
"""

from __future__ import annotations

from .budget import budget_of, budget_spec, fit_epochs
from .definitions import ARCH, COMPARISONS, DATASETS, PEERS, Dataset, Peer, Settings
from .results import group, key, save
from .running import main, measure, plan, run_peer
from .specs import recipe, spec, weights
from .tables import SECTIONS, columns, markdown, missing, schedule
from .venvs import PEERS_DIR, freeze, peer_python

__all__ = [
    "ARCH",
    "COMPARISONS",
    "DATASETS",
    "PEERS",
    "PEERS_DIR",
    "SECTIONS",
    "Dataset",
    "Peer",
    "Settings",
    "budget_of",
    "budget_spec",
    "columns",
    "fit_epochs",
    "freeze",
    "group",
    "key",
    "main",
    "markdown",
    "measure",
    "missing",
    "peer_python",
    "plan",
    "recipe",
    "run_peer",
    "save",
    "schedule",
    "spec",
    "weights",
]
