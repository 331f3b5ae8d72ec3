"""Measure Noisy Student on a real data set with `noisystudent experiment`, and write the tables of docs/results.md.

    python scripts/benchmark_real.py DATA [--task classes] [--task 'Benign=negative,rest=positive']
                                      [--protocol cpu|cpu-small|cnmc-study-tiny] [--seeds 0 1 2]
                                      [--per-class N] [--out DIR] [-- more kfold flags]

A thin caller: for each task it runs one `noisystudent experiment` (arms ns, control and
upper for every seed, each an ordinary run folder that resumes) with the protocol's flags,
then renders OUT/summary.md from each study's results/study.csv and results/arms.csv: the
primary comparison per seed and for the method (two-level bootstrap over seeds and test
patients), and every arm's ensemble per seed. Running it again continues the studies.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the checkout's package, installed or not

# CPU-sized protocols: ImageNet Lite0 (offline, from the `lite` extra), few labels (1:5:3), one student.
CPU = ["--arch", "efficientnet-lite0", "--weights", "imagenet", "--folds", "3", "--rounds", "1", "--batch-size", "32",
       "--optimizer", "adamw", "--lr", "1e-3", "--scheduler", "cosine", "--bn-momentum", "0.3", "--split-ratio", "1:5:3",
       "--test-fraction", "0.2", "--student-data", "both", "--pseudo-mode", "soft", "--student-dropout", "0.3",
       "--eval-batch-size", "128"]
PROTOCOLS = {
    "cpu": CPU + ["--image-size", "96", "--epochs", "5"],
    "cpu-small": CPU + ["--image-size", "32", "--epochs", "4"],  # the whole Aria set, 3 seeds x 3 arms x 2 tasks, on 2 cores
    # The C-NMC study's code path (SGD, step schedule, hard pseudo-labels, students on pseudo-labels
    # only, majority vote) shrunk to seconds: a test that the real layout runs end to end, not a result.
    "cnmc-study-tiny": ["--preset", "cnmc-study", "--arch", "efficientnet-lite0", "--weights", "imagenet",
                        "--image-size", "64", "--epochs", "1", "--rounds", "1", "--batch-size", "8", "--test-fraction", "0.2"],
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = subsample(Path(args.data), args.per_class, out) if args.per_class else Path(args.data)
    data = with_pool(data, args.pool_fraction, out) if args.pool_fraction else data
    records = []
    for task in args.task:
        study = out / task_folder(task)
        flags = PROTOCOLS[args.protocol] + task_flags(task) + args.kfold_flags
        command = experiment_command(data, study, args.seeds, args.arms, flags)
        records.append({"task": task, "study": str(study), **execute(command, out / f"{task_folder(task)}.log")})
    (out / "summary.md").write_text(markdown(records, argv if argv is not None else sys.argv[1:]))
    print(f"benchmark: {len(records)} studies; tables in {out / 'summary.md'}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="Data set folder or CSV (any layout noisystudent reads).")
    parser.add_argument("--task", action="append", help="'classes' (the data set's own classes) or a --binary mapping; repeatable.")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", default="ns,control,upper")
    parser.add_argument("--per-class", type=int, default=0, help="Use a fixed random sample of this many images per class (0: all).")
    parser.add_argument("--pool-fraction", type=float, default=0.0,
                        help="Turn this fraction of each class's training images into an unlabelled pool (labels dropped; 0: none).")
    parser.add_argument("--out", default="runs/benchmark-real")
    parser.epilog = "After --: more `noisystudent kfold` flags for every run (e.g. -- --method fixmatch)."
    argv = list(sys.argv[1:] if argv is None else argv)
    # split at "--" first: argparse gives a positional DATA followed by options no room for flags after "--"
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.kfold_flags = extra
    args.task = args.task or ["classes"]
    return args


def task_flags(task: str) -> list[str]:
    return [] if task == "classes" else ["--binary", task, "--positive", "positive"]  # the mapped class names


def task_folder(task: str) -> str:
    return "classes" if task == "classes" else "binary"


def experiment_command(data: Path, study: Path, seeds: list[int], arms: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "noisystudent.cli", "experiment", str(data), "--out", str(study),
            "--seeds", ",".join(map(str, seeds)), "--arms", arms, "--quiet", *flags]


def execute(command: list[str], log: Path) -> dict:
    """Run (or continue) one study; its wall seconds and the load average around it."""
    shown = shlex.join(["noisystudent", *command[3:]])
    load_before, start = load_average(), time.perf_counter()
    print(f"benchmark: {shown}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "a") as sink:
        completed = subprocess.run(command, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
    if completed.returncode != 0:
        raise SystemExit(f"benchmark: the study failed (exit {completed.returncode}; see {log}); rerun to continue it.")
    return {"command": shown, "seconds": round(time.perf_counter() - start, 1), "load_before": load_before, "load_after": load_average()}


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
    target = out / "sample.csv"
    pd.concat(chosen)[["path", "label", "patient", "subset"]].sort_values("path").to_csv(target, index=False)
    return target


def with_pool(data: Path, fraction: float, out: Path) -> Path:
    """A CSV manifest whose ``fraction`` of each class's training images (drawn with seed 0) is a pool without labels."""
    from noisystudent.data.readers import read_dataset

    manifest, _ = read_dataset(data, "auto", None, False)
    manifest = manifest[["path", "label", "patient", "subset"]].copy()
    training = manifest[manifest["subset"] == "train"]
    pooled = [rows.sample(frac=fraction, random_state=0).index for _, rows in training.groupby("label", sort=True)]
    chosen = manifest.index.isin([i for index in pooled for i in index])
    manifest.loc[chosen, ["label", "subset"]] = ["", "pool"]
    target = out / "with-pool.csv"
    manifest.sort_values("path").to_csv(target, index=False)
    return target


def markdown(records: list[dict], argv: list[str]) -> str:
    """The tables of every study, with the command, the commit and machine its runs recorded, and the wall time."""
    lines = [f"Command: `python scripts/benchmark_real.py {shlex.join(argv)}`", ""]
    for record in records:
        study = Path(record["study"])
        table, arms = (pd.read_csv(study / "results" / name) for name in ("study.csv", "arms.csv"))
        lines += [f"### Task: {record['task']}", "", study_lines(table), "", arms_lines(arms), "",
                  f"Wall time of this call: {record['seconds']} s (load {record['load_before']} -> {record['load_after']}); "
                  f"{provenance(study)}.", ""]
    return "\n".join(lines) + "\n"


def study_lines(table: pd.DataFrame) -> str:
    primary = table[table["role"] == "primary"]
    metric = primary["metric"].iloc[0].replace("_", " ") if len(primary) else "primary metric"
    rows = [f"| comparison ({metric}) | level | difference | 95% interval | verdict |", "|---|---|---|---|---|"]
    for row in primary.itertuples():
        level = "method" if row.level == "method" else f"seed {int(row.seed)}"
        verdict = row.verdict if row.level == "method" else ("excludes 0" if row.excludes_zero else "includes 0")
        rows.append(f"| {row.comparison} | {level} | {row.estimate:+.3f} | [{row.low:+.3f}, {row.high:+.3f}] | {verdict} |")
    return "\n".join(rows)


def arms_lines(arms: pd.DataFrame) -> str:
    wide = arms.pivot_table(index="ensemble", columns="seed", values="value", sort=False)
    seeds = list(wide.columns)
    rows = [f"| ensemble ({arms['metric'].iloc[0].replace('_', ' ')}, outer test set) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---|" * len(seeds)]
    rows += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for name, values in wide.iterrows()]
    return "\n".join(rows)


def provenance(study: Path) -> str:
    """The commit and machine the first run of the study recorded in its config.json."""
    import json

    config = next(iter(sorted(study.glob("seed-*/ns/config.json"))), None)
    machine = json.loads(config.read_text()).get("machine") or {} if config else {}
    return (f"runs at commit {machine.get('git_commit') or 'not recorded'} on {machine.get('cpu', 'an unrecorded CPU')} "
            f"({machine.get('cpu_count', '?')} logical CPUs, {machine.get('torch_threads', '?')} torch threads)")


if __name__ == "__main__":
    sys.exit(main())
