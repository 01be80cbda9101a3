"""scripts/model_zoo.py: every cell's config is the zoo's budget on the default image."""

import pytest

from conftest import load_script

zoo = load_script("model_zoo")


@pytest.mark.slow
def test_the_zoo_defaults_to_its_budget_on_the_default_image():
    args = zoo.parse_args([])
    for variants in zoo.MODELS.values():
        for target in zoo.TARGETS.values():
            overrides = zoo.model_overrides(variants, target, args)
            cfg = zoo.compose_run([*target, *overrides], args)
            assert (cfg.data.height, cfg.data.width) == (300, 400) and cfg.logger.image_every == 0
            if "trainer=lstsq" not in overrides:
                assert cfg.trainer.steps == 200 and cfg.optimizer.decay_steps == 200 and cfg.optimizer.warmup_steps == 20


def test_a_smaller_image_and_budget_come_from_the_command_line():
    args = zoo.parse_args(["--steps", "50", "--height", "60", "--width", "80"])
    cfg = zoo.compose_run(zoo.TARGETS["gaussian"], args)
    assert (cfg.data.height, cfg.data.width, cfg.trainer.steps, cfg.optimizer.warmup_steps) == (60, 80, 50, 5)
