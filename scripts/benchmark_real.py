"""Measure Noisy Student against its supervised bounds on a real data set, for the README.

    python scripts/benchmark_real.py DATA [--task classes] [--task 'Benign=negative,rest=positive']
                                      [--protocol cpu|cnmc-study-tiny] [--seeds 0 1 2] [--out DIR]

For each task and seed, two ``noisystudent kfold`` runs share the folds, the validation parts
and the outer test set (all three depend only on the seed, K and --test-fraction):

* ``ns``: the teacher trains on the labelled part only, so it *is* the lower bound (supervised
  on the labelled part); one noised student then learns from labelled + pseudo-labelled masked part.
* ``upper``: ``--rounds 0 --split-ratio (L+U):0:V``: the teacher trains on the labelled and the
  masked part with their true labels, the upper bound that semi-supervision aims at.

Writes OUT/<task>/s<seed>/{ns,upper}/ (ordinary run folders), OUT/runs.csv (command, seconds,
load average per run) and OUT/summary.csv + OUT/summary.md (the tables, labelled with the
command, the commit and the machine). A finished run is not run again, so the script resumes.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's package, installed or not

# CPU-sized protocol: ImageNet Lite0 (offline, from the `lite` extra), 96 px, few labels.
PROTOCOLS = {
    "cpu": [
        "--arch", "efficientnet-lite0", "--weights", "imagenet", "--image-size", "96",
        "--folds", "3", "--rounds", "1", "--epochs", "5", "--batch-size", "32",
        "--optimizer", "adamw", "--lr", "1e-3", "--scheduler", "cosine", "--bn-momentum", "0.3",
        "--split-ratio", "1:5:3", "--test-fraction", "0.2",
        "--student-data", "both", "--pseudo-mode", "soft", "--student-dropout", "0.3", "--eval-batch-size", "128",
    ],
    # The C-NMC study's code path (SGD, step schedule, hard pseudo-labels, students on pseudo-labels
    # only, majority vote) shrunk to seconds: a test that the real layout runs end to end, not a result.
    "cnmc-study-tiny": [
        "--preset", "cnmc-study", "--arch", "efficientnet-lite0", "--weights", "imagenet",
        "--image-size", "64", "--epochs", "1", "--rounds", "1", "--batch-size", "8", "--test-fraction", "0.2",
    ],
}
DEFAULT_SPLIT = "2:2:1"  # RunConfig's own, for protocols that do not set --split-ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = subsample(Path(args.data), args.per_class, out) if args.per_class else Path(args.data)
    flags = PROTOCOLS[args.protocol] + args.kfold_flags
    records = []
    for seed in args.seeds:  # seeds outermost: a stopped benchmark still has every task of its first seeds
        for task in args.task:
            for kind, extra in (("ns", []), ("upper", upper_bound_flags(flags))):
                run = out / task_folder(task) / f"s{seed}" / kind
                command = kfold_command(data, run, overridden(flags, extra) + task_flags(task) + ["--seed", str(seed)])
                records.append({"task": task, "seed": seed, "kind": kind, "run": str(run), **execute(command, run)})
                write_csv(out / "runs.csv", pd.DataFrame(records))
    summary = summarise(pd.DataFrame(records))
    write_csv(out / "summary.csv", summary)
    (out / "summary.md").write_text(markdown(summary, pd.DataFrame(records), args, data))
    print(f"benchmark: {len(records)} runs; tables in {out / 'summary.md'}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Data set folder or CSV (any layout noisystudent reads).")
    parser.add_argument("--task", action="append", help="'classes' (the data set's own classes) or a --binary mapping; repeatable.")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--per-class", type=int, default=0, help="Use a fixed random sample of this many images per class (0: all).")
    parser.add_argument("--out", default="runs/benchmark-real")
    parser.add_argument("kfold_flags", nargs="*", help="After --: more `noisystudent kfold` flags for every run.")
    args = parser.parse_args(argv)
    args.task = args.task or ["classes"]
    return args


def upper_bound_flags(flags: list[str]) -> list[str]:
    """--rounds 0 and the masked part folded into the labelled part: L:U:V -> (L+U):0:V."""
    ratio = flags[flags.index("--split-ratio") + 1] if "--split-ratio" in flags else DEFAULT_SPLIT
    labelled, masked, validation = (float(x) for x in ratio.split(":"))
    return ["--rounds", "0", "--split-ratio", f"{labelled + masked:g}:0:{validation:g}"]


def overridden(flags: list[str], changes: list[str]) -> list[str]:
    """``flags`` with the value of each flag in ``changes`` replaced (or appended), so a command shows each flag once."""
    result = list(flags)
    for flag, value in zip(changes[::2], changes[1::2]):
        if flag in result:
            result[result.index(flag) + 1] = value
        else:
            result += [flag, value]
    return result


def task_flags(task: str) -> list[str]:
    return [] if task == "classes" else ["--binary", task, "--positive", "positive"]  # the mapped class names


def task_folder(task: str) -> str:
    return "classes" if task == "classes" else "binary"


def kfold_command(data: Path, run: Path, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "noisystudent.cli", "kfold", str(data), "--out", str(run), "--quiet", *flags]


def execute(command: list[str], run: Path) -> dict:
    """Run ``command`` (or skip a finished run); its seconds and the load average around it."""
    shown = shlex.join(["noisystudent", *command[3:]])
    if (run / "results" / "metrics.csv").exists():
        return {"command": shown, "seconds": float("nan"), "load_before": "", "load_after": "", "status": "done before"}
    if (run / "config.json").exists():
        command = command + ["--resume"]
    load_before, start = load_average(), time.perf_counter()
    print(f"benchmark: {shown}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = run.parent / f"{run.name}.log"  # the run's own tables and warnings, off the terminal
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as sink:
        completed = subprocess.run(command, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise SystemExit(f"benchmark: the run {run} failed (exit {completed.returncode}; see {log}); rerun to resume it.")
    return {"command": shown, "seconds": round(time.perf_counter() - start, 1), "load_before": load_before,
            "load_after": load_average(), "status": "ran"}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def subsample(data: Path, per_class: int, out: Path) -> Path:
    """A CSV manifest of ``per_class`` images per class, drawn once with seed 0 (the same for every seed)."""
    from noisystudent.data.readers import read_dataset

    manifest, _ = read_dataset(data, "auto", None, False)
    chosen = [rows.sample(min(per_class, len(rows)), random_state=0) for _, rows in manifest.groupby("label", sort=True)]
    sample = pd.concat(chosen)
    target = out / "sample.csv"
    write_csv(target, sample[["path", "label", "patient", "subset"]].sort_values("path"))
    return target


def write_csv(path: Path, table: pd.DataFrame) -> None:
    partial = path.with_suffix(".partial")
    table.to_csv(partial, index=False)
    os.replace(partial, path)


# --- the tables -------------------------------------------------------------

# (label in the tables, run, model kind, fold, split, voting) read from each run's metrics.csv
ROWS = [
    ("lower bound: teacher, fold mean", "ns", "teacher", "mean", "test", ""),
    ("student, fold mean", "ns", "student", "mean", "test", ""),
    ("lower bound: teacher ensemble, majority", "ns", "teacher", "ensemble", "test", "majority"),
    ("lower bound: teacher ensemble, soft", "ns", "teacher", "ensemble", "test", "soft"),
    ("student ensemble, majority", "ns", "student", "ensemble", "test", "majority"),
    ("student ensemble, soft", "ns", "student", "ensemble", "test", "soft"),
    ("upper bound: supervised on labelled + masked, fold mean", "upper", "teacher", "mean", "test", ""),
    ("upper bound: ensemble, soft", "upper", "teacher", "ensemble", "test", "soft"),
]
METRICS = ["accuracy", "balanced_accuracy", "f1", "auc"]


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per task, seed and table row: the metrics of that row from the run's metrics.csv."""
    rows = []
    for (task, seed), runs in records.groupby(["task", "seed"], sort=False):
        tables = {kind: pd.read_csv(Path(run) / "results" / "metrics.csv", keep_default_na=False, na_values=[""])
                  for kind, run in zip(runs["kind"], runs["run"])}
        for label, kind, model, fold, split, voting in ROWS:
            table = tables[kind]
            hit = table[(table["model"] == model) & (table["fold"].astype(str) == fold) & (table["split"] == split)
                        & (table["voting"].fillna("").astype(str) == voting)]
            if not hit.empty:
                rows.append({"task": task, "seed": seed, "row": label, **{m: hit.iloc[0].get(m) for m in METRICS}})
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame, records: pd.DataFrame, args: argparse.Namespace, data: Path) -> str:
    lines = [f"Command: `python scripts/benchmark_real.py {shlex.join(sys.argv[1:])}`", "",
             f"Commit {commit()}; machine: {machine()}.", ""]
    for task, part in summary.groupby("task", sort=False):
        lines += [f"### Task: {task}", "", "| row | seed | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for _, row in part.iterrows():
            lines.append(f"| {row['row']} | {row['seed']} | " + " | ".join(f"{row[m]:.3f}" for m in METRICS) + " |")
        lines.append("")
    lines += ["Runs (seconds of wall time, load average before -> after):", ""]
    lines += [f"- {r.task} seed {r.seed} {r.kind}: {r.seconds} s, load {r.load_before} -> {r.load_after}" for r in records.itertuples()]
    return "\n".join(lines) + "\n"


def commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()}, Python {platform.python_version()}, torch {torch.__version__}"


if __name__ == "__main__":
    sys.exit(main())
