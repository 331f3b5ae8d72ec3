"""Where a run ran: threads, CPU, GPUs, operating system, package versions and the package's git commit.

config.json keeps these facts of the session that created the run (its
``machine`` entry), and every session writes them as one line of run.log, so a
resumed run's log says where each of its sessions ran. Gathering them never
fails: what cannot be found out is ``None``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from noisystudent import __version__

# Distributions whose versions change the numbers a run produces (None when not installed).
PACKAGES = ("torch", "torchvision", "efficientnet-pytorch", "numpy", "pandas", "scikit-learn", "scipy", "onnxruntime")
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository root when the package runs from a git checkout


def describe_machine() -> dict[str, Any]:
    """The facts about this process's machine and software that a run records.

    Returns:
        dict: ``torch_threads`` and ``torch_interop_threads`` (torch's intra-op
        and inter-op thread counts), ``cpu`` (the CPU model), ``cpu_count``
        (logical CPUs), ``gpus`` (names of the CUDA devices) and ``cuda`` (its
        version), both ``None`` without CUDA, ``os``, ``python``, ``packages``
        (distribution name -> version or ``None``, ``noisystudent`` included)
        and ``git_commit`` (of the package's checkout, else ``None``).

    Example:
        >>> from noisystudent.environment import describe_machine
        >>> machine = describe_machine()
        >>> machine["python"] == platform.python_version(), sorted(machine["packages"])[:2]
        (True, ['efficientnet-pytorch', 'noisystudent'])
    """
    cuda = torch.cuda.is_available()
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {**{name: _version(name) for name in PACKAGES}, "noisystudent": __version__},
        "git_commit": git_commit(),
    }


def machine_line(machine: dict[str, Any]) -> str:
    """``describe_machine()``'s facts as one line of run.log: ``CPU AMD EPYC ... (2 logical), torch threads 2/2 ...``."""
    gpus = f"GPU {', '.join(machine['gpus'])} (CUDA {machine['cuda']})" if machine.get("gpus") else "no GPU"
    packages = ", ".join(f"{name} {version or 'absent'}" for name, version in machine.get("packages", {}).items())
    return (f"CPU {machine.get('cpu')} ({machine.get('cpu_count')} logical), torch threads {machine.get('torch_threads')}/"
            f"{machine.get('torch_interop_threads')} (intra-op/inter-op), {gpus}, {machine.get('os')}, Python "
            f"{machine.get('python')}, {packages}, git commit {machine.get('git_commit') or 'unknown'}")


def cpu_model() -> str | None:
    """The CPU's model name: /proc/cpuinfo's 'model name' on Linux, else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit(checkout: Path = CHECKOUT) -> str | None:
    """The commit checked out in ``checkout`` when it is a git checkout (None otherwise, or without git)."""
    if not (checkout / ".git").exists():  # a directory, or a file in a git worktree
        return None
    try:
        result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
