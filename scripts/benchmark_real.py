"""Measure Noisy Student against its supervised bounds on a real data set, for docs/results.md.

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
    earlier = previous_records(out / "runs.csv")
    records = []
    for seed in args.seeds:  # seeds outermost: a stopped benchmark still has every task of its first seeds
        for task in args.task:
            for kind, extra in (("ns", []), ("upper", upper_bound_flags(flags))):
                run = out / task_folder(task) / f"s{seed}" / kind
                command = kfold_command(data, run, overridden(flags, extra) + task_flags(task) + ["--seed", str(seed)])
                record = {"task": task, "seed": seed, "kind": kind, "run": str(run), **execute(command, run)}
                records.append(earlier.get(str(run), record) if record["status"] == "done before" else record)
                write_csv(out / "runs.csv", pd.DataFrame(records))
    summary = summarise(pd.DataFrame(records))
    write_csv(out / "summary.csv", summary)
    (out / "summary.md").write_text(markdown(summary, pd.DataFrame(records)))
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
            "load_after": load_average(), "status": "ran", "commit": commit()}


def previous_records(path: Path) -> dict[str, dict]:
    """The rows of an earlier runs.csv by run folder, so a finished run keeps its measured seconds."""
    if not path.exists():
        return {}
    table = pd.read_csv(path, keep_default_na=False)
    return {row["run"]: row for row in table.to_dict("records")}


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



PRIMARY = "accuracy"  # the pre-specified metric of every verdict (evaluation/comparison.py)
# (label, run, model kind, round, voting or "" for the fold mean) of each row of a task's table
ROWS = [
    ("teacher = lower bound (labelled part only), fold mean", "ns", 0, ""),
    ("student, fold mean", "ns", 1, ""),
    ("teacher ensemble, majority", "ns", 0, "majority"),
    ("student ensemble, majority", "ns", 1, "majority"),
    ("teacher ensemble, soft", "ns", 0, "soft"),
    ("student ensemble, soft", "ns", 1, "soft"),
    ("upper bound (labelled + masked, true labels), fold mean", "upper", 0, ""),
    ("upper bound ensemble, soft", "upper", 0, "soft"),
]
# comparison.csv rows (by the student side's name) shown as student - teacher
DIFFERENCES = [("student - teacher, fold mean", "student round"), ("student - teacher, ensemble majority", "student ensemble (majority"),
               ("student - teacher, ensemble soft", "student ensemble (soft")]


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """One row per task, seed and quantity: accuracy on the outer test set with its 95% interval."""
    rows = []
    for (task, seed), runs in records.groupby(["task", "seed"], sort=False):
        folders = {kind: Path(run) for kind, run in zip(runs["kind"], runs["run"])}
        for folder in folders.values():
            refresh_results(folder)
        for label, kind, round_, voting in ROWS:
            value, low, high = side_interval(folders[kind], round_, voting)
            rows.append({"task": task, "seed": seed, "quantity": label, "value": value, "low": low, "high": high})
        rows += [{"task": task, "seed": seed, **row} for row in differences(folders["ns"])]
        value, low, high = pseudo_label_accuracy(folders["ns"])
        rows.append({"task": task, "seed": seed, "quantity": "pseudo-label accuracy (masked part, all folds)", "value": value, "low": low, "high": high})
    return pd.DataFrame(rows)


def refresh_results(run: Path) -> None:
    """Recompute results/ from the run's saved predictions with this checkout's code (metrics.csv, comparison.csv)."""
    from noisystudent.run import results

    config, classes = _config_classes(run)
    results.write_results(run, config, classes)


def _config_classes(run: Path):
    from noisystudent.config.run_config import load_config_json
    from noisystudent.config.settings import resume_config

    config = resume_config(load_config_json(run / "config.json"))  # settings added since take their defaults
    folds = pd.read_csv(run / "folds.csv", keep_default_na=False, dtype=str)
    return config, sorted(label for label in folds["label"].unique() if label)


def _classes_positive(run: Path) -> tuple[list[str], str | None]:
    from noisystudent.run.results import evaluation_positive

    config, classes = _config_classes(run)
    return classes, evaluation_positive(config, classes)


def side_interval(run: Path, round_: int, voting: str) -> tuple[float, float, float]:
    """Accuracy of a fold mean (voting "") or an ensemble on the test set, with its bootstrap interval."""
    from noisystudent.evaluation.comparison import score_interval

    classes, positive = _classes_positive(run)
    if voting:
        kind = "teacher" if round_ == 0 else "student"
        tables = [pd.read_csv(run / "results" / f"predictions_{kind}_{voting}.csv", keep_default_na=False, dtype={"patient": str})]
    else:
        tables = [_split(run, fold, round_, "test") for fold in _folds(run)]
    row = score_interval(tables, classes, positive, majority=voting == "majority").set_index("metric").loc[PRIMARY]
    return row["value"], row["low"], row["high"]


def pseudo_label_accuracy(run: Path) -> tuple[float, float, float]:
    """The teachers' pseudo-labels against the masked part's hidden labels, all folds pooled."""
    from noisystudent.evaluation.comparison import score_interval

    classes, _ = _classes_positive(run)
    masked = pd.concat([_split(run, fold, 0, "masked") for fold in _folds(run)], ignore_index=True)
    row = score_interval([masked], classes, None).set_index("metric").loc[PRIMARY]
    return row["value"], row["low"], row["high"]


def differences(run: Path) -> list[dict]:
    table = pd.read_csv(run / "results" / "comparison.csv")
    table = table[table["metric"] == PRIMARY]
    found = []
    for label, student_name in DIFFERENCES:
        hit = table[table["b_name"].str.startswith(student_name)]
        if not hit.empty:
            row = hit.iloc[0]
            found.append({"quantity": label, "value": row["difference"], "low": row["low"], "high": row["high"], "verdict": row["verdict"]})
    return found


def _folds(run: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in run.glob("fold-*"))


def _split(run: Path, fold: int, round_: int, split: str) -> pd.DataFrame:
    table = pd.read_csv(run / f"fold-{fold}" / f"round-{round_}" / "predictions.csv", keep_default_na=False, dtype={"patient": str})
    return table[table["split"] == split]


def markdown(summary: pd.DataFrame, records: pd.DataFrame) -> str:
    seeds = sorted(summary["seed"].unique())
    lines = [f"Command: `python scripts/benchmark_real.py {shlex.join(sys.argv[1:])}`", "",
             f"Tables computed at commit {commit()} (each run's own commit is listed below); machine: {machine()}.", "",
             "Accuracy on the outer test set with its 95% percentile interval (2,000 bootstrap resamples of the test "
             "set's patients, or images where there are no patient ids); differences are paired.", ""]
    for task, part in summary.groupby("task", sort=False):
        lines += [f"Task: {task}", "", "| quantity | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
        for quantity, rows in part.groupby("quantity", sort=False):
            cells = {row.seed: _cell(row, quantity) for row in rows.itertuples()}
            lines.append(f"| {quantity} | " + " | ".join(cells.get(s, "not run") for s in seeds) + " |")
        lines.append("")
    lines += ["Runs (wall seconds, load average before -> after):", ""]
    lines += [f"- {r.task} seed {r.seed} {r.kind}: {r.seconds} s, load {r.load_before} -> {r.load_after}, commit {getattr(r, 'commit', '') or 'not recorded'}"
              for r in records.itertuples()]
    return "\n".join(lines) + "\n"


def _cell(row, quantity: str) -> str:
    if not quantity.startswith("student - teacher"):
        return f"{row.value:.3f} [{row.low:.3f}, {row.high:.3f}]"
    side = "excludes 0" if row.low > 0 or row.high < 0 else "includes 0"
    return f"{row.value:+.3f} [{row.low:+.3f}, {row.high:+.3f}] {side}"


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
