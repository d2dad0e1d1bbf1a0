"""`python -m msc_seg.tools.plot WORKDIR`: PNGs from metrics.jsonl and eval_*.json, one-line
errors for a missing workdir or a workdir without metrics."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from msc_seg.tools import plot

CLASSES = ["sky", "road", "car", "bird"]


def write_run(workdir, *, contrastive=True):
    rows = []
    for step in range(10, 110, 10):
        row = {"step": step, "loss": 2.0 / step**0.3, "loss_ce": 1.5 / step**0.3}
        row |= {"loss_aux": 0.4 / step**0.2, "learning_rate": 1e-3 * (1 - step / 120)}
        if contrastive:
            row |= {"loss_contrastive": 5.0, "loss_ms/s0": 4.0, "loss_ms/s1": 3.0}
            row |= {"loss_cs/high_low": 2.0, "num_anchors/s0": 100.0}
        rows.append(row)
    rows.append({"step": 50, "eval/mIoU": 0.4, "eval_embedding/s0/gap": 0.1})
    rows.append({"step": 100, "eval/mIoU": 0.6, "eval_embedding/s0/gap": 0.3})
    rows.append({"step": 30, "loss": 123.0, "loss_ce": 1.0})  # retrained after a resume
    (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for step, ious in ((50, [0.5, 0.3, None, 0.4]), (100, [0.9, 0.7, None, 0.2])):
        finite = [v for v in ious if v is not None]
        per_class = [{"class": c, "IoU": v, "Acc": v} for c, v in zip(CLASSES, ious, strict=True)]
        data = {"aAcc": 0.9, "mIoU": sum(finite) / len(finite), "mAcc": 0.5, "per_class": per_class}
        (workdir / f"eval_{step}.json").write_text(json.dumps(data))
    (workdir / "eval_100_whole_ms_flip.json").write_text(
        json.dumps({"aAcc": 0.9, "mIoU": 0.65, "mAcc": 0.6, "per_class": per_class})
    )


def test_plot_writes_every_figure_of_a_contrastive_run_and_prints_their_paths(tmp_path, capsys):
    write_run(tmp_path)
    assert plot.main([str(tmp_path)]) == 0
    written = [pathlib.Path(p) for p in capsys.readouterr().out.split()]
    assert sorted(p.name for p in written) == [
        "embedding.png",
        "learning_rate.png",
        "losses.png",
        "miou.png",
        "per_class_iou.png",
    ]
    for path in written:
        image = np.asarray(Image.open(path))
        assert path.parent == tmp_path / "plots" and image.shape[0] > 200 and image.std() > 5


def test_later_rows_of_a_step_win_and_protocols_are_separate_lines(tmp_path):
    write_run(tmp_path)
    series = plot.read_series(tmp_path / "metrics.jsonl")
    assert series["loss"][30] == 123.0 and series["loss_ce"][30] == 1.0
    evaluations = plot.read_evaluations(tmp_path)
    lines = plot.miou_lines(series, evaluations)
    assert set(lines) == {"eval", "whole_ms_flip"}
    assert lines["eval"] == {50: pytest.approx(40.0), 100: pytest.approx(60.0)}
    assert evaluations[-1]["step"] == 100


def test_plot_of_a_ce_only_run_skips_the_contrastive_figures(tmp_path):
    write_run(tmp_path, contrastive=False)
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(
            line
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if "eval_embedding" not in line
        )
    )
    names = {p.name for p in plot.plot_workdir(tmp_path, tmp_path / "out")}
    assert "embedding.png" not in names and "losses.png" in names
    assert (tmp_path / "out" / "losses.png").exists()


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "msc_seg.tools.plot", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    missing = run_cli(tmp_path / "nope")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"plot: error: workdir {tmp_path / 'nope'} does not exist; pass the --workdir of a "
        "training run"
    ]
    empty = run_cli(tmp_path)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1 and "has no metrics" in empty.stderr
