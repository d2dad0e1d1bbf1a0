"""Predict mode end to end (a freshly initialised micro model's checkpoint, a folder of images of
different sizes with a corrupt file) and its input errors (empty folder, missing checkpoint)."""

import io
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from msc_seg import checkpointing, config_lib, evaluate, experiment, modes, predict
from msc_seg import mesh as mesh_lib
from msc_seg.data import conventions, registry

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = registry.get_dataset_spec("demo")


def tiny_config(**protocol_overrides):
    """configs/demo.py with a smaller decoder (fast to compile); eval canvas 128x128."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_cfg", ROOT / "configs" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.dataset.data_dir = "/nonexistent/predict/needs/no/dataset"
    c.model.decoder_channels = 16
    c.model.aux_channels = 8
    c.model.embedding_dim = 16
    c.eval.batch_size = 8
    for k, v in protocol_overrides.items():
        c.eval.protocol[k] = v
    c.lock()
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir holding step 0 of a freshly initialised tiny model: (workdir, config, state)."""
    workdir = tmp_path_factory.mktemp("predict_run")
    config = tiny_config(mode="slide", window=(64, 64), stride=(32, 32), flip=True)
    mesh = mesh_lib.make_mesh(-1)
    state = experiment.build_train_parts(config, DEMO.num_classes, mesh).create_state()
    # The layout checkpointing.Checkpointer (an orbax CheckpointManager) writes: STEP/default.
    # Written with a plain StandardCheckpointer, which is several times faster in a test.
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(workdir / "checkpoints" / "0" / "default", state)
    (workdir / "config.json").write_text(config_lib.to_json(config))
    return workdir, config, state


def write_images(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Two images of different sizes (one in a sub-folder is not read without --recursive) and a
    corrupt file -> {stem: (H, W)} of the readable ones."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = {"wide": (40, 50), "tall": (100, 70)}  # tall: 3 x 2 overlapping 64x64 windows
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (100, 70, 3), np.uint8)).save(folder / "tall.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(folder / "sub" / "deep.png")
    return sizes


def test_predict_writes_mask_overlay_and_ids_at_each_image_size(trained, tmp_path):
    workdir, config, state = trained
    sizes = write_images(tmp_path / "in")
    log = io.StringIO()
    result = modes.predict_images(
        config, images=tmp_path / "in", output=tmp_path / "out", workdir=str(workdir), stream=log
    )
    assert sorted(result["written"]) == ["tall", "wide"]
    assert [pathlib.Path(p).name for p, _ in result["skipped"]] == ["broken.png"]
    text = log.getvalue()
    assert "warning: skipping" in text and "broken.png" in text
    assert "3/3" in text and "img/s" in text and "ETA" in text
    palette = np.asarray(DEMO.palette)
    for stem, (h, w) in sizes.items():
        ids = np.asarray(Image.open(tmp_path / "out" / f"{stem}_ids.png"))
        mask = np.asarray(Image.open(tmp_path / "out" / f"{stem}_mask.png"))
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.png")
        assert ids.shape == (h, w) and ids.dtype == np.uint8 and ids.max() < DEMO.num_classes
        assert mask.shape == (h, w, 3) and overlay.size == (w, h) and overlay.mode == "RGB"
        np.testing.assert_array_equal(mask, palette[ids])
    assert not (tmp_path / "out" / "sub").exists()  # sub-folders only with recursive=True

    # The ids are the eval protocol's argmax on the normalised, padded image (wide.png: one
    # example, checked against the evaluation code path without the predict plumbing).
    rgb = np.asarray(Image.open(tmp_path / "in" / "wide.png"))
    image = np.broadcast_to(conventions.PAD_VALUE, (8, 128, 128, 3)).copy()
    image[:, :40, :50] = conventions.normalize(rgb)
    hw = np.tile(np.array([[40, 50]], np.int32), (8, 1))
    model_def = experiment.build_train_parts(
        config, DEMO.num_classes, mesh_lib.make_mesh(-1)
    ).model_def
    protocol = experiment.build_protocol(config)
    scores = jax.jit(lambda s, x, h: evaluate.predict_scores(model_def, s, x, h, protocol))(
        state, image, hw
    )
    expected = np.asarray(np.argmax(scores[0], axis=-1))[:40, :50]
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "out" / "wide_ids.png")), expected
    )


def test_empty_or_missing_images_folder_is_an_error_naming_it(trained, tmp_path):
    workdir, config, _ = trained
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(predict.PredictError, match=r"--images=.*empty holds no \.jpg"):
        modes.predict_images(
            config, images=tmp_path / "empty", output=tmp_path / "o", workdir=str(workdir)
        )
    with pytest.raises(predict.PredictError, match="nowhere does not exist"):
        predict.list_images(tmp_path / "nowhere")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(predict.PredictError, match=r"none of the 1 files.*x\.png"):
        modes.predict_images(
            config, images=tmp_path / "bad", output=tmp_path / "o", workdir=str(workdir),
            stream=io.StringIO(),
        )  # fmt: skip


def test_missing_checkpoint_errors_name_the_workdir_or_path_and_what_to_do(trained, tmp_path):
    workdir, config, _ = trained
    write_images(tmp_path / "in")
    kwargs = dict(images=tmp_path / "in", output=tmp_path / "out")
    (tmp_path / "fresh").mkdir()
    missing = checkpointing.CheckpointError
    with pytest.raises(missing, match=r"fresh has no checkpoint.*train first"):
        modes.predict_images(config, workdir=str(tmp_path / "fresh"), **kwargs)
    with pytest.raises(missing, match=r"--workdir=.*gone does not exist"):
        modes.predict_images(config, workdir=str(tmp_path / "gone"), **kwargs)
    with pytest.raises(missing, match=r"step 7 .*saved steps: \[0\]"):
        modes.predict_images(config, workdir=str(workdir), checkpoint="7", **kwargs)
    with pytest.raises(missing, match="no best checkpoint"):
        modes.predict_images(config, workdir=str(workdir), checkpoint="best", **kwargs)
    with pytest.raises(missing, match=r"--checkpoint=.*nope does not exist"):
        modes.predict_images(config, checkpoint=str(tmp_path / "nope"), **kwargs)
    # A path to the step folder or to the workdir itself resolves to the same checkpoint.
    step_item = workdir / "checkpoints" / "0" / "default"
    resolve = checkpointing.resolve_checkpoint
    assert resolve(None, str(workdir / "checkpoints" / "0")) == step_item
    assert resolve(None, str(workdir)) == step_item
    assert resolve(str(workdir), "latest") == step_item
    # A structurally different config is refused before any restore is attempted.
    other = tiny_config()
    other.unlock()
    other.model.decoder_channels = 32
    with pytest.raises(checkpointing.WorkdirMismatchError, match="model.decoder_channels"):
        modes.predict_images(other, workdir=str(workdir), **kwargs)


def test_canvas_is_pad_shape_when_the_image_fits_else_a_rounded_up_bucket():
    assert predict.canvas_shape((40, 64), (64, 64)) == (64, 64)
    assert predict.canvas_shape((65, 10), (64, 64)) == (128, 64)
    assert predict.canvas_shape((300, 700), (512, 512)) == (512, 768)
    assert predict.canvas_shape((600, 700), (512, 512)) == (640, 768)


def test_output_names_mirror_sub_folders_and_keep_suffixes_of_shared_stems(tmp_path):
    files = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "s" / "b.PNG"]
    assert predict.output_stems(files, tmp_path) == ["a_jpg", "a_png", "s/b"]


def test_cli_predict_reports_a_missing_checkpoint_and_exits_2(tmp_path, capsys):
    from msc_seg import main as entry

    write_images(tmp_path / "in")
    (tmp_path / "run").mkdir()
    argv = [
        "msc_seg.main", "--mode=predict", f"--config={ROOT / 'configs' / 'demo.py'}",
        f"--workdir={tmp_path / 'run'}", f"--images={tmp_path / 'in'}",
        f"--output={tmp_path / 'out'}",
    ]  # fmt: skip
    entry.FLAGS(argv)  # in-process: the same code path as the command line, without a new Python
    try:
        with pytest.raises(SystemExit) as exit_info:
            entry.main(["msc_seg.main"])
    finally:
        entry.FLAGS.unparse_flags()
    assert exit_info.value.code == 2
    assert f"--workdir={tmp_path / 'run'} has no checkpoint" in capsys.readouterr().err
