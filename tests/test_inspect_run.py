"""scripts/inspect_run.py: a finished run's metrics and its per-layer activation figure."""


import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from conftest import ROOT, TINY, load_script
from convlearn.config import build
from convlearn.data import shapes
from convlearn.pipeline import run_experiment


@pytest.fixture(scope="module")
def inspect_run():
    return load_script("inspect_run")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished notebook-model run, with its Hydra config saved as ``train.py`` leaves it."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, "trainer.steps=3"])
    run_dir = tmp_path_factory.mktemp("run")
    summary = run_experiment(cfg, run_dir).metrics
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir, summary, cfg


@pytest.mark.slow
def test_report_png_is_written_with_every_run(run):
    run_dir, _, _ = run
    with Image.open(run_dir / "report.png") as picture:
        width, height = picture.size
        colours = len(set(picture.convert("RGB").getdata()))
    assert (width, height) == (16 * 80, 8 * 80)
    assert colours > 500  # curves, colour-mapped images and kernels, not an empty canvas


@pytest.mark.slow
def test_prints_metrics_and_draws_the_training_images_activations(run, inspect_run, capsys):
    run_dir, summary, _ = run
    assert inspect_run.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"final_loss: {summary['final_loss']}" in out
    assert f"rel_mse: {summary['rel_mse']}" in out
    assert "13 layers" in out
    with Image.open(run_dir / "activations.png") as picture:
        training_figure = np.asarray(picture.convert("RGB"))
    assert training_figure.shape[:2] == (4 * 3.5 * 80, 4 * 4 * 80)  # 13 layers: 4 rows of 4 panels


@pytest.mark.slow
def test_another_image_gives_another_figure(run, inspect_run, tmp_path):
    run_dir, _, cfg = run
    image = build(cfg, "data").train[0][..., 0]
    figures = {}
    for name, pixels in {"original": image, "flipped": image[::-1].copy()}.items():
        np.save(tmp_path / f"{name}.npy", pixels)
        out = tmp_path / f"{name}.png"
        assert inspect_run.main([str(run_dir), "--image", str(tmp_path / f"{name}.npy"), "--out", str(out)]) == 0
        with Image.open(out) as picture:
            figures[name] = np.asarray(picture.convert("RGB"))
    assert figures["flipped"].shape == figures["original"].shape
    assert not np.array_equal(figures["flipped"], figures["original"])


@pytest.mark.slow
def test_mistakes_are_one_line_errors(run, inspect_run, tmp_path, capsys):
    run_dir, _, _ = run
    assert inspect_run.main([str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == (
        f"convlearn: error: RUN_DIR: {tmp_path / 'missing' / 'metrics.json'} does not exist; "
        "give the directory of a finished run\n"
    )
    assert inspect_run.main([str(run_dir), "--image", str(tmp_path / "nope.npy")]) == 1
    assert capsys.readouterr().err == f"convlearn: error: data.path: no such file: {tmp_path / 'nope.npy'}\n"


def test_a_run_on_the_users_file_is_inspected_with_every_metric(inspect_run, tmp_path, capsys):
    np.save(tmp_path / "img.npy", shapes(40, 48, n_circles=3, n_squares=3, min_size=4, max_size=10))
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        tiny = [o for o in TINY if not o.startswith("data.")]
        cfg = compose(config_name="train", overrides=[*tiny, "data=file", f"data.path={tmp_path}/img.npy",
                                                      "model=linear", "trainer.steps=2"])
    run_dir = tmp_path / "run"
    summary = run_experiment(cfg, run_dir).metrics
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    assert inspect_run.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    for key in summary:
        assert f"{key:>16}: " in out, key
    assert "1 layers" in out and (run_dir / "activations.png").is_file()


@pytest.mark.slow
def test_a_run_dirs_config_cannot_make_it_call_a_foreign_callable(run, inspect_run, tmp_path, capsys):
    run_dir, _, cfg = run
    sent = tmp_path / "sent"
    sent.mkdir()
    for name in ("metrics.json", "model.keras"):
        (sent / name).write_bytes((run_dir / name).read_bytes())
    (sent / ".hydra").mkdir()
    marker = tmp_path / "ran"
    bad = OmegaConf.to_container(cfg)
    bad["data"] = {"_target_": "os.system", "command": f"touch {marker}"}
    OmegaConf.save(OmegaConf.create(bad), sent / ".hydra" / "config.yaml")
    # Trusting os in the environment does not widen what a run dir may build.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVLEARN_TRUSTED_TARGETS", "os")
        assert inspect_run.main([str(sent)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("convlearn: error: data._target_: 'os.system' is outside convlearn")
    assert error.count("\n") == 1
    assert not marker.exists()


@pytest.mark.slow
def test_a_model_with_a_lambda_layer_is_refused_in_one_line(run, inspect_run, tmp_path, capsys):
    import keras

    run_dir, _, _ = run
    sent = tmp_path / "lambda"
    sent.mkdir()
    (sent / "metrics.json").write_bytes((run_dir / "metrics.json").read_bytes())
    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(sent / "model.keras")
    assert inspect_run.main([str(sent), "--image", str(tmp_path / "x.npy")]) == 1
    error = capsys.readouterr().err
    assert error.startswith(f"convlearn: error: RUN_DIR: cannot load {sent / 'model.keras'} safely")
    assert error.count("\n") == 1
