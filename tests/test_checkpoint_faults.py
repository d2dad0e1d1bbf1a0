"""A damaged newest checkpoint never blocks a run, and a failed save says where and how much space.

Tiny pytrees (no model): each case saves steps 1 and 2 with the Checkpointer the training loop
uses, damages step 2 the way disks and kills do, and restores as a restart would.
"""

from __future__ import annotations

import errno
import logging as py_logging
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from msc_seg import checkpointing
from msc_seg.reporting import OneLineLibraryErrors


def _state(step: int) -> dict:
    return {"w": jnp.arange(512.0) + step, "b": {"c": jnp.full((8, 8), float(step))}}


def _abstract() -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def _two_steps(workdir: pathlib.Path) -> None:
    ck = checkpointing.Checkpointer(workdir, keep=3)
    ck.save(1, _state(1))
    ck.save(2, _state(2))
    ck.wait()
    ck.close()


def _files(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _truncate_data(step_dir: pathlib.Path) -> None:
    for f in (step_dir / "default").rglob("*"):
        if f.is_file() and (f.name == "manifest.ocdbt" or f.parent.name == "d"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete_data(step_dir: pathlib.Path) -> None:
    for f in (step_dir / "default").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.unlink()


def _damage_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "default" / "_METADATA").write_text('{"tree_metadata": {')


def _damage_checkpoint_metadata(step_dir: pathlib.Path) -> None:
    (step_dir / "_CHECKPOINT_METADATA").write_text("\x00\x00garbage")


def _truncate_sharding(step_dir: pathlib.Path) -> None:
    """Seen in a pod probe: the newest step then read as a checkpoint of another config."""
    f = step_dir / "default" / "_sharding"
    f.write_bytes(f.read_bytes()[:100])


DAMAGES = {
    "truncated _sharding file": _truncate_sharding,
    "truncated data file": _truncate_data,
    "deleted data file": _delete_data,
    "damaged _METADATA": _damage_metadata,
    "damaged _CHECKPOINT_METADATA": _damage_checkpoint_metadata,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_restart_resumes_from_previous_step_when_newest_is_damaged(tmp_path, capsys, damage):
    _two_steps(tmp_path)
    step2 = tmp_path / "checkpoints" / "2"
    DAMAGES[damage](step2)
    damaged_files = _files(step2)
    capsys.readouterr()

    ck = checkpointing.Checkpointer(tmp_path, keep=3)
    state, step = ck.restore(_abstract())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]

    assert step == 1
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(512.0) + 1)
    assert len(lines) == 1, lines
    assert lines[0].startswith("checkpoint step 2 cannot be restored (")
    assert "resuming from step 1" in lines[0]
    (moved,) = (tmp_path / "checkpoints").glob("2.corrupt-*")
    assert _files(moved) == damaged_files  # moved aside, nothing deleted
    assert ck.latest_step() == 1

    # The run goes on: step 2 is saved again beside the moved-aside folder, which stays.
    ck.save(2, _state(2))
    ck.save(3, _state(3))
    ck.wait()
    ck.close()
    assert moved.is_dir() and _files(moved) == damaged_files
    state, step = checkpointing.Checkpointer(tmp_path, keep=3).restore(_abstract())
    assert step == 3


def test_predict_latest_falls_back_to_previous_intact_step(tmp_path, capsys):
    _two_steps(tmp_path)
    _truncate_data(tmp_path / "checkpoints" / "2")
    capsys.readouterr()
    state, item = checkpointing.restore_latest_item(tmp_path, _abstract())
    out = capsys.readouterr().out
    assert item == tmp_path / "checkpoints" / "1" / "default"
    assert out.count("checkpoint step 2 cannot be restored") == 1
    np.testing.assert_array_equal(np.asarray(state["b"]["c"]), np.full((8, 8), 1.0))
    assert len(list((tmp_path / "checkpoints").glob("2.corrupt-*"))) == 1


def test_checkpoints_of_another_shape_are_refused_not_moved_aside(tmp_path):
    _two_steps(tmp_path)
    other = {"w": jax.ShapeDtypeStruct((7,), jnp.float32)}
    ck = checkpointing.Checkpointer(tmp_path, keep=3)
    with pytest.raises(checkpointing.CheckpointError, match=r"step 2: .*step 1: "):
        ck.restore(other)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_failed_save_stops_with_one_line_naming_folder_and_free_space(tmp_path, monkeypatch):
    _two_steps(tmp_path)
    ck = checkpointing.Checkpointer(tmp_path, keep=3)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full)
    with pytest.raises(checkpointing.CheckpointSaveError) as info:
        ck.save(3, _state(3))
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "checkpoints") in message
    assert "No space left on device" in message
    assert " free there" in message and "B free" in message
    assert "saved steps [1, 2] are intact" in message
    assert message.endswith("Free space or fix the folder's permissions and rerun to resume")
    monkeypatch.undo()
    ck.close()  # the reported failure does not raise again on the way out
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_failed_save_for_a_non_disk_reason_does_not_blame_the_disk(tmp_path, monkeypatch):
    """A pod barrier error (seen at step 72 of a 2 x 4 probe) is not a full disk: the line says
    to rerun, not to free space."""
    _two_steps(tmp_path)
    ck = checkpointing.Checkpointer(tmp_path, keep=3)

    def barrier_error(*args, **kwargs):
        raise RuntimeError("FAILED_PRECONDITION: Barrier set_value_start is already ongoing")

    monkeypatch.setattr(ocp.CheckpointManager, "save", barrier_error)
    with pytest.raises(checkpointing.CheckpointSaveError) as info:
        ck.save(3, _state(3))
    message = str(info.value)
    assert "already ongoing" in message and message.endswith("Rerun to resume")
    assert "Free space" not in message
    monkeypatch.undo()
    ck.close()


def test_a_wrapped_disk_error_still_says_to_free_space():
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as e:
            raise ValueError("tensorstore write failed") from e
    except ValueError as wrapped:
        assert checkpointing._is_file_system_error(wrapped)
    assert checkpointing._is_file_system_error(ValueError("UNKNOWN: Permission denied [source]"))
    assert not checkpointing._is_file_system_error(RuntimeError("DEADLINE_EXCEEDED: barrier"))


def test_a_damaged_newest_step_is_not_taken_for_a_checkpoint_of_another_config(tmp_path):
    """A truncated `_sharding` file makes the newest step's metadata list only some arrays (a pod
    probe then refused the workdir as "another config"); the workdir check must pass so that
    restore can move the step aside, and must still refuse a truly different state."""
    import importlib.util
    import json

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("demo", root / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json.loads(module.get_config().to_json())
    _two_steps(tmp_path)
    checkpointing.write_workdir_config(tmp_path, json.dumps(config))
    check = checkpointing.check_workdir_config
    _truncate_sharding(tmp_path / "checkpoints" / "2")
    check(tmp_path, config, what="this config", abstract_state=_abstract())
    other = {"w": jax.ShapeDtypeStruct((7,), jnp.float32)}
    with pytest.raises(checkpointing.WorkdirMismatchError, match="checkpoints/2"):
        check(tmp_path, config, what="this config", abstract_state=other)


def test_library_errors_are_one_line_each_under_the_default_verbosity():
    """orbax's background threads and clu's writer log ERRORs with tracebacks when the disk
    fills (~300 lines before the run's own report); the default log keeps one line each."""
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        exc_info = sys.exc_info()
    record = py_logging.LogRecord(
        "absl",
        py_logging.ERROR,
        "checkpoint.py",
        369,
        "Failed to write %s:\n%s",
        ("x", "y"),
        exc_info,
    )
    assert OneLineLibraryErrors().filter(record)
    text = py_logging.Formatter().format(record)
    assert text == "Failed to write x: y"
    info = py_logging.LogRecord("absl", py_logging.INFO, "f.py", 1, "a\nb", (), None)
    OneLineLibraryErrors().filter(info)
    assert info.getMessage() == "a\nb"  # only errors are condensed
