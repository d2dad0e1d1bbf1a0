"""PNG curves of a run for people without TensorBoard.

    python -m msc_seg.tools.plot WORKDIR [--out DIR]

Reads WORKDIR/metrics.jsonl (one row per logged step: loss, loss_ce, loss_aux, loss_contrastive,
loss_ms/s*, loss_cs/*, learning_rate, eval/*, eval_embedding/*) and WORKDIR/eval_*.json (the
per-class tables) and writes into DIR (default WORKDIR/plots):

    losses.png          total, CE, aux and contrastive losses; each contrastive term below
    learning_rate.png   the schedule
    miou.png            mIoU over steps, one line per evaluation protocol
    per_class_iou.png   the per-class IoU of the latest evaluation, best first
    embedding.png       intra- minus inter-class cosine per scale (contrastive runs)

A step logged twice (retrained after a resume) is drawn with its last value.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from collections.abc import Sequence

from msc_seg import visualize

EVAL_FILE = re.compile(r"eval_(\d+)(?:_(.+))?\.json")


class PlotError(Exception):
    """A problem with the workdir, said in one line."""


def read_series(path: pathlib.Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl -> {key: {step: value}}; later rows win (a step retrained after a resume),
    rows marked superseded and non-numeric values are skipped."""
    series: dict[str, dict[int, float]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise PlotError(
                f"{path}:{number} is not a JSON line; fix or delete that line"
            ) from None
        if not isinstance(row, dict) or "step" not in row or row.get("superseded"):
            continue
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(key, {})[step] = float(value)
    return series


def read_evaluations(workdir: pathlib.Path) -> list[dict]:
    """The eval_<step>[_<protocol>].json files, each as its JSON plus 'step', 'protocol' ('' for
    the evaluations during training) and 'path', sorted by (step, modification time)."""
    out = []
    for path in workdir.glob("eval_*.json"):
        match = EVAL_FILE.fullmatch(path.name)
        if not match:
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        data.update(step=int(match[1]), protocol=match[2] or "", path=path)
        out.append(data)
    return sorted(out, key=lambda d: (d["step"], d["path"].stat().st_mtime))


def _sorted(points: dict[int, float]) -> tuple[list[int], list[float]]:
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def _line_figure(title: str, ylabel: str, lines: dict[str, dict[int, float]], *, log=False):
    fig = visualize.new_figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    _draw_lines(ax, lines, log=log)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def _draw_lines(ax, lines: dict[str, dict[int, float]], *, log=False) -> None:
    for name, points in lines.items():
        steps, values = _sorted(points)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, lw=1.2, label=name)
    if log and all(v > 0 for points in lines.values() for v in points.values()):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=8)


def losses_figure(series: dict[str, dict[int, float]]):
    """The main losses; a second panel with each contrastive term when the run has them."""
    main = {
        k: series[k] for k in ("loss", "loss_ce", "loss_aux", "loss_contrastive") if k in series
    }
    terms = {k: v for k, v in sorted(series.items()) if k.startswith(("loss_ms/", "loss_cs/"))}
    panels = 2 if terms else 1
    fig = visualize.new_figure(8.0, 4.0 * panels)
    ax = fig.add_subplot(panels, 1, 1)
    _draw_lines(ax, main)
    ax.set_title("training losses (means over each logging interval)")
    ax.set_xlabel("step")
    if terms:
        ax = fig.add_subplot(panels, 1, 2)
        _draw_lines(ax, terms)
        ax.set_title("contrastive terms (ms: within a scale, cs: across scales)")
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def miou_lines(series, evaluations) -> dict[str, dict[int, float]]:
    """mIoU x 100 per protocol from the eval files; metrics.jsonl's eval/mIoU when there are
    none."""
    lines: dict[str, dict[int, float]] = {}
    for e in evaluations:
        if e.get("mIoU") is not None:
            lines.setdefault(e["protocol"] or "eval", {})[e["step"]] = 100 * float(e["mIoU"])
    if not lines and "eval/mIoU" in series:
        lines["eval"] = {s: 100 * v for s, v in series["eval/mIoU"].items()}
    return lines


def per_class_figure(evaluation: dict):
    """Horizontal bars of one evaluation's per-class IoU, best first; classes absent from the
    split (IoU null) listed last as 'n/a'; a line at the mIoU."""
    rows = evaluation.get("per_class") or []
    present = sorted((r for r in rows if r.get("IoU") is not None), key=lambda r: -r["IoU"])
    absent = [r for r in rows if r.get("IoU") is None]
    ordered = present + absent
    fig = visualize.new_figure(8.0, max(3.0, 0.9 + 0.2 * len(ordered)))
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(ordered)))
    ax.barh(y, [100 * (r["IoU"] or 0.0) for r in ordered], color="tab:blue", height=0.75)
    ax.set_yticks(y, labels=[r["class"] for r in ordered], fontsize=7 if len(ordered) > 40 else 9)
    ax.invert_yaxis()
    for i, r in enumerate(ordered):
        text = "n/a" if r.get("IoU") is None else f"{100 * r['IoU']:.1f}"
        ax.text(100 * (r["IoU"] or 0.0) + 0.8, i, text, va="center", fontsize=7)
    miou = evaluation.get("mIoU")
    if miou is not None:
        ax.axvline(100 * miou, color="tab:red", lw=1, ls="--", label=f"mIoU {100 * miou:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    where = f", protocol {evaluation['protocol']}" if evaluation["protocol"] else ""
    ax.set_title(f"per-class IoU at step {evaluation['step']}{where} ({evaluation['path'].name})")
    fig.tight_layout()
    return fig


def plot_workdir(workdir: str | pathlib.Path, out: str | pathlib.Path | None = None) -> list:
    """Writes the PNGs of `workdir` into `out` (default workdir/plots) -> the paths written.

    Raises PlotError when the workdir is missing or holds neither metrics nor evaluations.
    """
    workdir = pathlib.Path(workdir)
    if not workdir.is_dir():
        what = "is not a directory" if workdir.exists() else "does not exist"
        raise PlotError(f"workdir {workdir} {what}; pass the --workdir of a training run")
    metrics_path = workdir / "metrics.jsonl"
    series = read_series(metrics_path) if metrics_path.is_file() else {}
    evaluations = read_evaluations(workdir)
    if not series and not evaluations:
        raise PlotError(
            f"{workdir} has no metrics: {metrics_path.name} is missing or empty and there is no "
            "eval_<step>.json (train first, or wait for the first log line)"
        )
    out = pathlib.Path(out) if out else workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if any(k in series for k in ("loss", "loss_ce")):
        figures["losses.png"] = losses_figure(series)
    if "learning_rate" in series:
        figures["learning_rate.png"] = _line_figure(
            "learning rate (mean over each logging interval)",
            "learning rate",
            {"learning_rate": series["learning_rate"]},
        )
    lines = miou_lines(series, evaluations)
    if lines:
        figures["miou.png"] = _line_figure("validation mIoU", "mIoU (%)", lines)
    if evaluations:
        figures["per_class_iou.png"] = per_class_figure(evaluations[-1])
    gaps = {
        k.split("/")[-2]: v
        for k, v in sorted(series.items())
        if re.fullmatch(r"eval_embedding/s\d+/gap", k)
    }
    if gaps:
        figures["embedding.png"] = _line_figure(
            "embedding separability: mean intra- minus inter-class cosine", "gap", gaps
        )
    written = []
    for name, fig in figures.items():
        fig.savefig(out / name)
        written.append(out / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msc_seg.tools.plot",
        description="PNG curves of a training run (metrics.jsonl, eval_*.json) with matplotlib.",
    )
    parser.add_argument("workdir", help="the run's --workdir")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/plots)")
    args = parser.parse_args(argv)
    try:
        written = plot_workdir(args.workdir, args.out)
    except (PlotError, ImportError) as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
