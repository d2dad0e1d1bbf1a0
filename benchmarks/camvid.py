"""CamVid accuracy: CE only vs CE + MS + CS on the demo-sized UPerNet, same steps and seeds.

    python benchmarks/camvid.py [--steps 300] [--seeds 0,1] [--workdir_root runs/bench_camvid]
                                [--data_dir DIR] [--camvid_root ../shared/data/camvid] [--json OUT]

For each setting (CE only: contrastive weight 0; CE + MS + CS: weight 0.1, cross-scale on) and each
seed, trains configs/camvid.py through the real entry point (`python -m msc_seg.main` in a
subprocess: checkpoints, TensorBoard files, metrics.jsonl and a train.log in its workdir) with
`eval.data.split=test` and evaluation only at the end of training, so the one evaluation of a
run is the LAST checkpoint (step == --steps) on the CamVid TEST split (233 images, full 360x480
resolution); no checkpoint is ever selected on test. Prints one markdown table to stdout (mIoU
mean, min-max and std over seeds, aAcc, mAcc, s/step, wall time per run; per-class IoU as the mean
over seeds) with the command, steps, batch, crop and machine; progress goes to stderr.

CamVid is built into --data_dir from --camvid_root when it is not there yet. A workdir that holds
a finished run of the same command and the same configs/camvid.py is reused (its recorded wall time
is reported); one holding anything else is an error, so results of different budgets never mix.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid.py"
CAMVID_CLASSES = (
    "sky",
    "building",
    "pole",
    "road",
    "pavement",
    "tree",
    "sign_symbol",
    "fence",
    "car",
    "pedestrian",
    "bicyclist",
)
RECORD = "bench_run.json"  # written into a run's workdir when the run has finished


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str  # workdir-safe name
    label: str  # table name
    contrastive_weight: float


SETTINGS = (
    Setting("ce", "CE", 0.0),
    Setting("ce_ms_cs", "CE + MS + CS", 0.1),
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps of every run")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (config.seed)")
    p.add_argument("--workdir_root", default=str(ROOT / "runs" / "bench_camvid"))
    p.add_argument(
        "--data_dir",
        default=os.environ.get("TFDS_DATA_DIR", str(ROOT / ".data" / "tensorflow_datasets")),
        help="tfds data_dir holding (or to receive) the prepared camvid dataset",
    )
    p.add_argument(
        "--camvid_root",
        default=str(ROOT.parent / "shared" / "data" / "camvid"),
        help="raw CamVid folder (images/, labels/) to build from when --data_dir lacks it",
    )
    p.add_argument("--json", default="", help="also write all numbers to this JSON file")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra --config.a.b=v for every run, e.g. --override=dataset.train.crop_size=(96,96)",
    )
    args = p.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds={args.seeds!r} must be comma-separated integers, e.g. 0,1")
    if not args.seed_list:
        p.error("--seeds is empty")
    if args.steps <= 0:
        p.error(f"--steps={args.steps} must be positive")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prepare_camvid(data_dir: str, camvid_root: str) -> None:
    """Builds camvid into data_dir unless it is there (the prepare module returns early then)."""
    cmd = [sys.executable, "-m", "msc_seg.data.prepare", "--dataset=camvid"]
    cmd += [f"--data_dir={data_dir}", f"--root={camvid_root}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(
            f"preparing CamVid into --data_dir={data_dir} from --camvid_root={camvid_root} "
            f"failed:\n{done.stderr.strip()[-2000:]}"
        )
    log(done.stdout.strip().replace("\n", "; "))


def train_command(setting: Setting, seed: int, steps: int, workdir, args) -> list[str]:
    """The `msc_seg.main` command of one run: trains `steps` steps, evaluates the last on test."""
    cmd = [
        sys.executable,
        "-m",
        "msc_seg.main",
        f"--config={CONFIG}:steps={steps},contrastive={setting.contrastive_weight}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
        f"--config.total_steps={steps}",
        f"--config.eval_every_steps={steps}",  # one evaluation: the last step's
        "--config.eval.data.split=test",
        f"--config.dataset.data_dir={args.data_dir}",
    ]
    if setting.contrastive_weight > 0:
        cmd.append("--config.loss.contrastive.cross_scale=True")
    cmd += [f"--config.{o}" for o in args.override]
    return cmd


def median_seconds_per_step(metrics_jsonl: pathlib.Path) -> float:
    """Median s/step over the logged windows, leaving out the first (it holds the compile)."""
    rates = []
    for line in metrics_jsonl.read_text().splitlines():
        row = json.loads(line)
        if "steps_per_sec" in row:
            rates.append(row["steps_per_sec"])
    rates = rates[1:] or rates
    return 1.0 / statistics.median(rates) if rates else float("nan")


def read_final_test_eval(workdir: pathlib.Path, steps: int) -> dict:
    """eval_<steps>.json of a finished run, after checking that it evaluated the test split."""
    config = json.loads((workdir / "config.json").read_text())
    if config["eval"]["data"]["split"] != "test" or config["total_steps"] != steps:
        raise SystemExit(
            f"{workdir}/config.json has eval.data.split={config['eval']['data']['split']!r}, "
            f"total_steps={config['total_steps']}; expected 'test' and {steps}"
        )
    path = workdir / f"eval_{steps}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: the run did not evaluate its last step; see its log")
    return json.loads(path.read_text())


def run_one(setting: Setting, seed: int, args) -> dict:
    """Trains and test-evaluates one (setting, seed), or reuses its finished workdir."""
    workdir = pathlib.Path(args.workdir_root) / f"{setting.key}_seed{seed}"
    cmd = train_command(setting, seed, args.steps, workdir, args)
    config_sha1 = hashlib.sha1(CONFIG.read_bytes()).hexdigest()
    record_path = workdir / RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        if record["command"] == cmd and record.get("config_sha1") == config_sha1:
            log(f"{setting.label} seed {seed}: reusing the finished run in {workdir}")
            return record
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(
            f"workdir {workdir} holds an unfinished run, or one of another command or "
            "configs/camvid.py; delete it or choose another --workdir_root"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"{setting.label} seed {seed}: training {args.steps} steps in {workdir}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    with open(workdir / "train.log", "w") as out:
        done = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        tail = (workdir / "train.log").read_text()[-3000:]
        raise SystemExit(f"run failed (exit {done.returncode}): {shlex.join(cmd)}\n{tail}")
    results = read_final_test_eval(workdir, args.steps)
    record = {
        "setting": setting.label,
        "seed": seed,
        "steps": args.steps,
        "command": cmd,
        "config_sha1": config_sha1,
        "wall_s": wall,
        "s_per_step": median_seconds_per_step(workdir / "metrics.jsonl"),
        "checkpoint": f"last (step {args.steps})",
        "split": "test",
        "test": results,
    }
    record_path.write_text(json.dumps(record, indent=2))
    log(f"{setting.label} seed {seed}: test mIoU {100 * results['mIoU']:.2f} in {wall:.0f} s")
    return record


def summarize(records: list[dict]) -> dict:
    """Per setting: mIoU mean/min/max/std, aAcc, mAcc, per-class IoU mean over seeds, times."""
    out = {}
    for setting in SETTINGS:
        rows = [r for r in records if r["setting"] == setting.label]
        mious = [r["test"]["mIoU"] for r in rows]
        per_class = {}
        for i, name in enumerate(CAMVID_CLASSES):
            values = [r["test"]["per_class"][i]["IoU"] for r in rows]
            values = [v for v in values if v is not None]  # None = class absent from test
            per_class[name] = statistics.fmean(values) if values else None
        out[setting.label] = {
            "seeds": [r["seed"] for r in rows],
            "mIoU": mious,
            "mIoU_mean": statistics.fmean(mious),
            "mIoU_min": min(mious),
            "mIoU_max": max(mious),
            "mIoU_std": statistics.stdev(mious) if len(mious) > 1 else 0.0,
            "aAcc_mean": statistics.fmean(r["test"]["aAcc"] for r in rows),
            "mAcc_mean": statistics.fmean(r["test"]["mAcc"] for r in rows),
            "per_class_IoU_mean": per_class,
            "wall_s": [r["wall_s"] for r in rows],
            "s_per_step": [r["s_per_step"] for r in rows],
        }
    return out


def pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPU cores, {platform.system()} (JAX on CPU, 1 device)"


def format_tables(summary: dict, args, info: dict) -> str:
    ce, ms = (summary[s.label] for s in SETTINGS)
    lines = [
        f"## CamVid test (233 images, 360x480): CE vs CE + MS + CS, {args.steps} steps, "
        f"seeds {args.seeds}",
        "",
        "| setting | runs | mIoU mean | min-max | std | aAcc | mAcc | s/step | wall per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, s in summary.items():
        walls = ", ".join(f"{w / 60:.1f}" for w in s["wall_s"])
        sps = statistics.fmean(s["s_per_step"])
        lines.append(
            f"| {label} | {len(s['seeds'])} | {pct(s['mIoU_mean'])} | "
            f"{pct(s['mIoU_min'])}-{pct(s['mIoU_max'])} | {pct(s['mIoU_std'])} | "
            f"{pct(s['aAcc_mean'])} | {pct(s['mAcc_mean'])} | {sps:.2f} | {walls} min |"
        )
    lines += [
        "",
        "Per-class test IoU (%), mean over seeds:",
        "",
        "| class | CE | CE + MS + CS | difference |",
        "|---|---|---|---|",
    ]
    for name in CAMVID_CLASSES:
        a, b = ce["per_class_IoU_mean"][name], ms["per_class_IoU_mean"][name]
        diff = "n/a" if a is None or b is None else f"{100 * (b - a):+.2f}"
        lines.append(f"| {name} | {pct(a)} | {pct(b)} | {diff} |")
    lines += [
        "",
        f"- Model: configs/camvid.py (UPerNet on {info['backbone']} from scratch, CE + "
        f"{info['aux_weight']} aux CE; CE + MS + CS adds {info['weight']} x (MS + CS), cross-scale "
        f"on, {info['group']} images per group, <= {info['anchors']} anchors per group).",
        f"- Steps {args.steps}, batch {info['batch_size']}, crop {info['crop_size']}, "
        f"scale range {info['scale_range']}, AdamW lr {info['lr']} (warmup "
        f"{info['warmup']}, poly 1.0).",
        "- Numbers: the LAST checkpoint of every run (step == steps), evaluated once, on TEST "
        f"(whole 360x480 images padded to {info['pad_shape']}); no selection on test. "
        "s/step: median of the logged windows after the first; wall: the whole training "
        "process (start-up, compile, training, test evaluation).",
        f"- Machine: {info['machine']}; load average {info['load_start']} at the start, "
        f"{info['load_end']} at the end (shared with other jobs).",
        f"- Total wall time: {info['total_wall_s'] / 60:.1f} min (the runs' own: "
        f"{info['runs_wall_s'] / 60:.1f} min).",
        f"- Command: `{info['command']}`",
        f"- One run: `{info['example_run']}`",
    ]
    return "\n".join(lines)


def config_facts(args) -> dict:
    """What the table states about the runs, read from the CE + MS + CS run's config.json."""
    workdir = pathlib.Path(args.workdir_root) / f"{SETTINGS[-1].key}_seed{args.seed_list[0]}"
    c = json.loads((workdir / "config.json").read_text())
    cc = c["loss"]["contrastive"]
    return {
        "backbone": c["model"]["backbone"],
        "aux_weight": c["loss"]["aux_weight"],
        "weight": cc["weight"],
        "group": cc["images_per_group"],
        "anchors": cc["max_features_total"],
        "pad_shape": "x".join(str(v) for v in c["eval"]["pad_shape"]),
        "batch_size": c["batch_size"],
        "crop_size": "x".join(str(v) for v in c["dataset"]["train"]["crop_size"]),
        "scale_range": tuple(c["dataset"]["scale_range"]),
        "lr": c["optimizer"]["learning_rate"],
        "warmup": c["schedule"]["warmup_steps"],
    }


def load_average() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    load_start = load_average()
    prepare_camvid(args.data_dir, args.camvid_root)
    records = [run_one(s, seed, args) for s in SETTINGS for seed in args.seed_list]
    info = config_facts(args) | {
        "machine": machine_description(),
        "load_start": load_start,
        "load_end": load_average(),
        "total_wall_s": time.perf_counter() - start,
        "runs_wall_s": sum(r["wall_s"] for r in records),
        "command": shlex.join([pathlib.Path(sys.executable).name, *sys.argv]),
        "example_run": shlex.join(records[-1]["command"]),
    }
    summary = summarize(records)
    print(format_tables(summary, args, info), flush=True)
    if args.json:
        payload = {"summary": summary, "runs": records, "info": info}
        pathlib.Path(args.json).write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
