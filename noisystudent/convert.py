"""Re-save a PyTorch file you trust as tensors and plain types, so noisystudent can read it.

    python -m noisystudent.convert OLD.pt NEW.pt

noisystudent itself never unpickles arbitrary Python objects (see
``torch_files``). This is the one place that does, on a file you name
yourself: it fully unpickles OLD.pt (which runs any code the file carries,
so only do it for files you trust), keeps tensors, numbers, strings and
containers of them, turns numpy arrays into tensors and a whole ``nn.Module``
into its ``state_dict``, drops everything else (listed on stderr), and writes
NEW.pt atomically.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from noisystudent.models import checkpoint

DROPPED = object()


def convert(source: Path, target: Path) -> list[str]:
    """Convert ``source`` into ``target``; return the paths of the entries that were dropped."""
    content = torch.load(source, map_location="cpu", weights_only=False)  # the user vouches for this file
    dropped: list[str] = []
    kept = _keep(content, "", dropped)
    if kept is DROPPED:
        raise SystemExit(f"{source} holds no tensors or plain values to keep.")
    checkpoint.save_plain(target, kept)
    return dropped


def _keep(value: Any, where: str, dropped: list[str]) -> Any:
    if isinstance(value, torch.nn.Module):
        return value.state_dict()
    if isinstance(value, dict):
        items = ((k, _keep(v, f"{where}/{k}", dropped)) for k, v in value.items() if isinstance(k, (str, int)))
        return {k: v for k, v in items if v is not DROPPED}
    if isinstance(value, (list, tuple)):
        items = [_keep(v, f"{where}/{i}", dropped) for i, v in enumerate(value)]
        return type(value)(v for v in items if v is not DROPPED)
    plain = checkpoint.plain(value)
    if plain is None or isinstance(plain, (torch.Tensor, bool, int, float, str, bytes)):
        return plain
    dropped.append(f"{where or '/'} ({type(value).__name__})")
    return DROPPED


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    dropped = convert(Path(args[0]), Path(args[1]))
    for entry in dropped:
        print(f"dropped {entry}", file=sys.stderr)
    print(f"Written {args[1]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
