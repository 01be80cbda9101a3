"""scripts/operator_zoo.py: the linear optimum it compares with, and a small table end to end."""

import numpy as np
import pytest

from conftest import load_script
from convlearn.config import build
from convlearn.photos import samples

zoo = load_script("operator_zoo")
SMALL = dict(train=["camera"], val=["coins", "moon"], scale=0.25)


def test_the_linear_optimum_of_a_linear_target_is_exact(make_cfg):
    target = build(make_cfg("target=gaussian", "target.size=5"), "target")
    optimum = zoo.linear_optimum(samples(**SMALL), target, size=7)
    assert optimum["rel_mse"] < 1e-10 and optimum["psnr_db"] > 80


def test_no_linear_filter_computes_a_median(make_cfg):
    target = build(make_cfg("target=median"), "target")
    for size in (3, 9):
        # Close on smooth photos, but never exact.
        assert 1e-4 < zoo.linear_optimum(samples(**SMALL), target, size)["rel_mse"] < 0.1


def test_the_gain_is_measured_against_the_optimum():
    args = zoo.parse_args(["--steps", "10"])
    results = {"lstsq": {"median": {"rel_mse": 1e-2, "psnr_db": 30.0}},
               "can_small": {"median": {"rel_mse": 1e-3, "psnr_db": 40.0}}}
    text = zoo.report(results, args)
    assert "| can_small | +10.0 |" in text and "| lstsq | 30.0 |" in text and "10 steps" in text


@pytest.mark.slow
def test_one_cell_end_to_end(tmp_path):
    results = zoo.main(["--steps", "2", "--scale", "0.25", "--operators", "gamma", "--models", "linear",
                        "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "zoo.md")])
    cell = results["linear"]["gamma"]
    assert np.isfinite(cell["psnr_db"]) and cell["rel_mse"] > 0
    assert "| linear |" in (tmp_path / "zoo.md").read_text()
