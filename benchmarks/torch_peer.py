"""UPerNet-Swin train step: msc_seg against HF transformers' PyTorch UperNetForSemanticSegmentation.

    python benchmarks/models.py --models upernet_swin_t --torch-peer   (after the model table)
    python benchmarks/torch_peer.py [--backbone swin_t] [--batch 2] [--size 512] [--repeats 3]

Same network on both sides: Swin (the backbone's config), UPerNet head 512 channels, FCN aux head
256 channels on stage 3 (mmseg / HF placement, no conv bias: our `aux=mmseg`), 150 classes, CE on
the logits upsampled to the labels + 0.4 aux CE, AdamW (lr 6e-5, weight decay 0.01), float32, the
same synthetic batch. Ours: the real jitted train step (experiment.build_train_parts, state
donated) with the MS + CS contrastive loss at --contrastive-weights (0.1 = the paper's step; 0 =
the same losses as the torch step). Torch: forward with labels (HF's loss), backward, AdamW step,
`torch.set_num_threads` = the CPUs this process may use (XLA's CPU client uses as many).

Each side is a server process (built, compiled and warmed up once), so each one's memory is its
own: after warm-up the heap freed by the compile is returned to the OS (malloc_trim) and the
peak RSS is reset (/proc/self/clear_refs), then the parent alternates one
step of ours and one of torch, --repeats times, and reads each server's peak RSS (VmHWM) over the
timed steps and its RSS before them. Printed: median step seconds, peak RSS, and the peak's rise
over the idle process (the step's own memory), the ratios msc_seg / PyTorch, and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024**3
SWIN = {  # embed_dim, depths, num_heads (window 7, drop path 0.3 as configs/ade20k_upernet.py)
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "swin_l": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def _status(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _serve(step, info: dict) -> None:
    """Answers the parent's commands on stdin: step -> seconds, reset -> RSS, mem -> peak."""
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t = time.perf_counter()
            step()
            print(f"DONE {time.perf_counter() - t}", flush=True)
        elif cmd == "reset":  # peak RSS (VmHWM) := current RSS (Linux >= 4.0)
            # Heap freed by the compile (ours: ~9 GiB for Swin-T) stays in glibc's arenas and in
            # the RSS, and would pass for the step's memory: hand it back to the OS first.
            _malloc_trim()
            pathlib.Path("/proc/self/clear_refs").write_text("5")
            print(f"DONE {_status('VmRSS:')}", flush=True)
        elif cmd == "mem":
            print(f"DONE {_status('VmHWM:')}", flush=True)
        elif cmd == "quit":
            return


def serve_ours(args) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import jax
    import models as bench

    from msc_seg import experiment
    from msc_seg import mesh as mesh_lib
    from msc_seg.train import release_setup_programs

    case = bench.ModelCase(f"UPerNet-{args.backbone}", "upernet", args.backbone)
    config = bench.make_benchmark_config(case, args.batch, args.size, "float32", args.weight)
    config.model.aux_in_index, config.model.aux_conv_bias = 2, False  # HF's aux head
    if args.emitters:  # else the config's (configs/ade20k_upernet.py: "elemental" for Swin-T)
        config.xla_cpu_emitters = args.emitters
    mesh = mesh_lib.make_mesh(1)
    batch = mesh_lib.host_batch_to_global(bench.make_synthetic_batch(args.batch, args.size), mesh)
    parts = experiment.build_train_parts(config, bench.NUM_CLASSES, mesh)
    state = jax.block_until_ready(parts.create_state())
    release_setup_programs()  # as msc_seg.train does
    key = jax.random.key(0)
    t = time.perf_counter()
    compiled = parts.train_step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    box = [state]

    def step():
        box[0], metrics = jax.block_until_ready(compiled(box[0], batch, key))

    step()  # warm-up
    _serve(step, {"compile_s": compile_s, "threads": len(os.sched_getaffinity(0))})


def build_torch_model(backbone: str, num_classes: int = 150):
    import transformers

    embed_dim, depths, heads = SWIN[backbone]
    swin = transformers.SwinConfig(
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(heads),
        window_size=7,
        drop_path_rate=0.3,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=swin,
        hidden_size=512,
        auxiliary_channels=256,
        auxiliary_in_channels=embed_dim * 4,  # stage 3
        use_auxiliary_head=True,
        auxiliary_loss_weight=0.4,
        num_labels=num_classes,
    )
    return transformers.UperNetForSemanticSegmentation(config)


def serve_torch(args) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import models as bench
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_torch_model(args.backbone, bench.NUM_CLASSES).train()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    batch = bench.make_synthetic_batch(args.batch, args.size)
    pixels = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(batch["label"].astype("int64"))

    def step():
        loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    params = sum(p.numel() for p in model.parameters())
    _serve(step, {"threads": torch.get_num_threads(), "params": params})


class Server:
    """A step server subprocess (serve_ours / serve_torch) driven line by line."""

    def __init__(self, side: str, args, weight: float = 0.0):
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--serve={side}"]
        cmd += [f"--backbone={args.backbone}", f"--batch={args.batch}", f"--size={args.size}"]
        cmd += [f"--weight={weight}", f"--emitters={args.emitters}"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the {side} server did not start (exit {self.proc.wait()})")
        self.info = json.loads(line[6:])

    def ask(self, cmd: str) -> float:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline().split()[1])

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait()


def compare(args) -> list[dict]:
    """Rows for each contrastive weight: ours vs torch, steps alternated, memory per server."""
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"torch peer: building HF UperNet-{args.backbone} ...")
    theirs = Server("torch", args)
    rows = []
    for weight in args.contrastive_weights:
        log(f"torch peer: compiling ours (contrastive weight {weight}) ...")
        ours = Server("ours", args, weight)
        load_start = os.getloadavg()
        idle = {"ours": ours.ask("reset"), "torch": theirs.ask("reset")}
        times = {"ours": [], "torch": []}
        for i in range(args.repeats):
            times["ours"].append(ours.ask("step"))
            times["torch"].append(theirs.ask("step"))
            log(f"  step {i + 1}: ours {times['ours'][-1]:.2f} s, torch {times['torch'][-1]:.2f} s")
        peak = {"ours": ours.ask("mem"), "torch": theirs.ask("mem")}
        ours.close()
        row = {
            "backbone": args.backbone,
            "contrastive_weight": weight,
            "ours_compile_s": ours.info["compile_s"],
            "threads": {"ours": ours.info["threads"], "torch": theirs.info["threads"]},
            "times_s": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "peak_rss_bytes": peak,
            "idle_rss_bytes": idle,
            "load": {"start": load_start, "end": os.getloadavg()},
        }
        rows.append(row)
    theirs.close()
    return rows


def format_rows(rows: list[dict], batch: int, size: int) -> str:
    out = [
        f"PyTorch peer (HF transformers UperNetForSemanticSegmentation), batch {batch}, "
        f"{size}x{size}, float32, steps alternated; memory per process after a peak reset",
        "| model | contrastive (ours) | ours s/step | torch s/step | step ratio | ours peak GiB "
        "(rise) | torch peak GiB (rise) | peak ratio | rise ratio | threads | load 1/5/15 start"
        " -> end |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, p, i = r["median_s"], r["peak_rss_bytes"], r["idle_rss_bytes"]
        rise = {k: p[k] - i[k] for k in p}
        load = "/".join(f"{v:.1f}" for v in r["load"]["start"])
        load += " -> " + "/".join(f"{v:.1f}" for v in r["load"]["end"])
        out.append(
            f"| UPerNet-{r['backbone']} | {r['contrastive_weight']:g} | {m['ours']:.2f} | "
            f"{m['torch']:.2f} | {m['ours'] / m['torch']:.2f} | {p['ours'] / GIB:.2f} "
            f"({rise['ours'] / GIB:.2f}) | {p['torch'] / GIB:.2f} ({rise['torch'] / GIB:.2f}) | "
            f"{p['ours'] / p['torch']:.2f} | {rise['ours'] / max(rise['torch'], 1):.2f} | "
            f"{r['threads']['ours']}/{r['threads']['torch']} | {load} |"
        )
    return "\n".join(out)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--emitters",
        default="",
        choices=("", "fusion", "elemental"),
        help="override our config's xla_cpu_emitters (XLA:CPU's emitters of the step's fusions)",
    )
    parser.add_argument(
        "--torch-peer-models",
        default="upernet_swin_t",
        help="--torch-peer: the UPerNet-Swins of --models to compare (comma list; all: every one)",
    )
    parser.add_argument(
        "--torch-contrastive-weights",
        default="0.1,0",
        help="--torch-peer: our contrastive weights to compare (0 = the torch step's losses)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="swin_t", choices=sorted(SWIN))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weight", type=float, default=0.1, help=argparse.SUPPRESS)
    parser.add_argument("--serve", default="", help=argparse.SUPPRESS)
    parser.add_argument("--json", default="")
    add_arguments(parser)
    args = parser.parse_args()
    if args.serve:
        (serve_ours if args.serve == "ours" else serve_torch)(args)
        return
    args.contrastive_weights = [float(v) for v in args.torch_contrastive_weights.split(",")]
    rows = compare(args)
    print(format_rows(rows, args.batch, args.size), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
