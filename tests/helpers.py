"""Everything the tests share: tiny generated data, the tiny `kfold` flags, CLI runners.

Import from a test module with ``from helpers import ...`` (pytest puts the
tests folder on ``sys.path``); conftest.py only wraps these in fixtures.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PATIENT_REGEX = r"^(p\d+)_"  # file names look like p03_1.png
REPO = Path(__file__).resolve().parents[1]

# The real C-NMC sample: $NOISYSTUDENT_CNMC_SAMPLE, else ../shared/data/ beside the checkout.
CNMC_SAMPLE_VARIABLE = "NOISYSTUDENT_CNMC_SAMPLE"
CNMC_SAMPLE_BESIDE_CHECKOUT = REPO.parent / "shared" / "data" / "cnmc-sample.tar.gz"


def cnmc_sample_archive() -> Path:
    """Where the real C-NMC sample archive should be (it may be absent: check ``is_file()``)."""
    given = os.environ.get(CNMC_SAMPLE_VARIABLE, "")
    return Path(given) if given else CNMC_SAMPLE_BESIDE_CHECKOUT


# --- the tiny `noisystudent kfold` run (one run takes seconds on a CPU) -------------------------

TINY_SETTINGS = {
    "patient_regex": PATIENT_REGEX, "positive": "malignant",
    "folds": 2, "rounds": 1, "epochs": 2, "image_size": 32, "batch_size": 8, "weights": "none",
    "arch": "resnet18", "optimizer": "adamw", "lr": 0.003, "scheduler": "cosine",
    "device": "cpu", "workers": 1, "eval_batch_size": 64,
    "test_fraction": 0,  # 2-4 patients per class cannot spare the default fifth for an outer test set
}


def tiny_flags(quiet: bool = True, **changes) -> list[str]:
    """The flags of a tiny ``noisystudent kfold`` run: ``TINY_SETTINGS`` updated by ``changes``.

    ``tiny_flags(epochs=1, lr="1e30")`` -> [..., "--epochs", "1", ..., "--lr", "1e30", "--quiet"];
    a change to None drops that flag (the library's default applies).
    """
    unknown = set(changes) - set(TINY_SETTINGS)
    settings = {**TINY_SETTINGS, **changes}
    flags = []
    for name in [*TINY_SETTINGS, *sorted(unknown)]:
        if settings[name] is not None:
            flags += ["--" + name.replace("_", "-"), str(settings[name])]
    return flags + (["--quiet"] if quiet else [])


TINY_FLAGS = tiny_flags()


# --- tiny images and data sets -------------------------------------------------------------------


def save_image(path: Path, colour=(200, 40, 120), size=(8, 6), mode: str = "RGB") -> Path:
    """Write a small single-colour image; the format follows the extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def save_noise(path: Path, size: int = 32, seed: int = 0) -> Path:
    """Write a random RGB image (incompressible, so truncating it cuts pixel data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to the fraction ``keep`` of its bytes."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_class_folders(
    root: Path,
    classes: tuple[str, ...] = ("benign", "malignant"),
    patients_per_class: int = 4,
    images_per_patient: int = 4,
    size: tuple[int, int] = (24, 24),
    seed: int = 0,
    extension: str = ".png",
) -> Path:
    """``root/<class>/p<NN>_<i><ext>``: random-texture images, a class-dependent tint.

    Patient numbers are unique across classes, so ``PATIENT_REGEX`` gives each
    patient one class. The output is byte-identical for the same arguments.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    patient = 0
    for c, name in enumerate(classes):
        for _ in range(patients_per_class):
            patient += 1
            for i in range(images_per_patient):
                save_cell(root / name / f"p{patient:02d}_{i}{extension}", c, rng, size)
    return root


def save_cell(path: Path, class_index: int, seed: int | np.random.Generator = 0, size: tuple[int, int] = (24, 24)) -> Path:
    """A random-texture cell whose class shows as one brighter channel (class 0 red, 1 green, 2 blue, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)  # a Generator passes through unchanged
    pixels = rng.integers(0, 160, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., class_index % 3] += np.uint8(90)  # the class signal
    Image.fromarray(pixels).save(path)
    return path


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A small CSV manifest (header from ``columns`` or the first row's keys)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def cli_command(data: Path, out: Path, *extra: str) -> list[str]:
    """argv of a real ``noisystudent kfold`` subprocess with the tiny settings."""
    return [sys.executable, "-m", "noisystudent.cli.commands", "kfold", str(data), "--out", str(out), *TINY_FLAGS, *extra]


def subprocess_env() -> dict[str, str]:
    """Environment for a CLI subprocess: the repository importable, one thread (exactly reproducible)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return env


def run_cli(data: Path, out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``noisystudent kfold`` to completion in a subprocess."""
    return subprocess.run(
        cli_command(data, out, *extra), env=subprocess_env(), capture_output=True, text=True, timeout=timeout,
    )


def run_files(run: Path, names: tuple[str, ...] = ("predictions.csv", "pseudo_labels.csv")) -> dict[str, bytes]:
    """{relative path: bytes} of the named files in the fold folders, and of every results/*.csv."""
    run = Path(run)
    found = {str(p.relative_to(run)): p.read_bytes() for name in names for p in sorted(run.glob(f"fold-*/round-*/{name}"))}
    found.update({str(p.relative_to(run)): p.read_bytes() for p in sorted(run.glob("results/*.csv"))})
    return found


class ForkingCli:
    """Start many ``noisystudent kfold`` processes cheaply, and SIGKILL them.

    Importing torch, torchvision and scikit-learn takes 5-15 s on a busy CPU,
    so a server process imports noisystudent once (running no torch op, so
    that no thread exists yet) and ``os.fork()``s one child per run. Each child
    is a real, separate process running the real CLI entry point; the test
    kills it with ``os.kill(pid, SIGKILL)`` and collects its exit code.
    """

    def __init__(self) -> None:
        env = subprocess_env()
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env["PYTHONPATH"]])
        self.server = subprocess.Popen(
            [sys.executable, "-c", "import helpers; helpers.serve_forks()"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def _ask(self, message: dict) -> str:
        import json

        self.server.stdin.write(json.dumps(message) + "\n")
        self.server.stdin.flush()
        answer = self.server.stdout.readline()
        if not answer:
            raise RuntimeError("The forking server died.")
        return answer.strip()

    def start(self, argv: list[str], log: Path) -> int:
        """Fork a child running ``noisystudent <argv>`` with output to ``log``; return its pid."""
        return int(self._ask({"argv": argv, "log": str(log)}))

    def wait(self, pid: int) -> int:
        """Exit code of the child (negative: killed by that signal)."""
        return int(self._ask({"wait": pid}))

    def poll(self, pid: int) -> int | None:
        answer = self._ask({"poll": pid})
        return None if answer == "running" else int(answer)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


def serve_forks() -> None:
    """The server loop of ForkingCli (runs in its own process)."""
    import json

    import noisystudent.cli  # noqa: F401  (the slow imports, done once)
    import noisystudent.run.pipeline  # noqa: F401

    for line in sys.stdin:
        message = json.loads(line)
        if "wait" in message or "poll" in message:
            pid = message.get("wait", message.get("poll"))
            done, status = os.waitpid(pid, 0 if "wait" in message else os.WNOHANG)
            print("running" if done == 0 else os.waitstatus_to_exitcode(status), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            _run_child(message["argv"], message["log"])
        print(pid, flush=True)


def _run_child(argv: list[str], log: str) -> None:
    import traceback

    # the package's Typer app
    from noisystudent.cli import app

    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        app(argv, prog_name="noisystudent")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# --- the `slow` marker: every test that trains a model carries it ----------------------------------

_OPTIMIZER_STEPS = []  # one entry per optimizer step in this process, once counting has begun


def optimizer_steps() -> int:
    """Optimizer steps taken in this process so far (counting begins at the first call)."""
    if not hasattr(optimizer_steps, "hook"):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        optimizer_steps.hook = register_optimizer_step_post_hook(lambda *args: _OPTIMIZER_STEPS.append(1))
    return len(_OPTIMIZER_STEPS)


def check_slow_marker(item, steps_before: int) -> None:
    """Fail ``item`` if it (or a fixture it set up) took an optimizer step but is not marked slow.

    Training in a subprocess is not seen; tests that run the CLI in one are marked by hand.
    """
    steps = optimizer_steps() - steps_before
    if steps and item.get_closest_marker("slow") is None:
        import pytest

        pytest.fail(f"{item.nodeid} trains a model ({steps} optimizer steps) but is not marked @pytest.mark.slow",
                    pytrace=False)


def torch_threads(count: int = 1):
    """Run torch on ``count`` threads: on a busy CPU, two threads can be ten times slower than one."""
    from noisystudent.run.concurrent import cpu_threads

    return cpu_threads(count)


def invoke_cli(*args) -> tuple[int, str]:
    """Run the CLI in-process on one torch thread: (exit code, output on one line); never a traceback."""
    from typer.testing import CliRunner

    from noisystudent.cli import app

    with torch_threads(1):
        result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, " ".join(result.output.split())


# --- the scripts ---------------------------------------------------------------------------------

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """scripts/<name>.py imported as a module (the scripts are files to run, not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_one_sentence(code: int, line: str, *fragments: str) -> None:
    """A refusal: exit status 2, one "Error:" sentence (a quoted RuntimeError is no second one), holding ``fragments``."""
    assert code == 2, line
    starts = [m.start() for m in re.finditer(r"(?<!\w)Error:", line)]
    assert len(starts) == 1, line
    error = line[starts[0]:]
    for fragment in fragments:
        assert fragment in error, f"{fragment!r} not in {error!r}"
