"""Each peer's own virtual environment under ``benchmarks/.peers/`` with its pinned packages, the one shared torch,
and what ``pip freeze`` sees in it."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from .definitions import PEERS

BENCHMARKS = Path(__file__).resolve().parents[1]
PEERS_DIR = BENCHMARKS / ".peers"
CONSTRAINTS = BENCHMARKS / "peers_constraints.txt"


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
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(CONSTRAINTS), *requirements],
        check=True,
    )


def freeze(name: str) -> list[str]:
    """Every package a peer's python sees (its venv and the shared torch), as ``pip freeze`` writes them."""
    if not PEERS[name].requirements:
        return []
    out = subprocess.run([str(peer_python(name)), "-m", "pip", "freeze"], capture_output=True, text=True, check=True)
    return out.stdout.split()
