"""Every ``python train.py ...`` command that README.md and docs/*.md print works as printed, shrunk.

A user copies these commands; a renamed option, a parity mistake or a missing key in one of them is
a broken promise that no other test sees. Each command is taken from the pages' ```bash blocks and
shrunk with the tiny test settings (conftest.TINY, only the keys its composed config has, so that
``data=noise`` or ``experiment=recover_kernel`` get the ones that fit). A sweep (``-m``) is split
into its jobs. Training every command would take minutes, so each job is composed, checked and
built up to the first step (data, target, model and the aligned feed: where a wrong option, a size
or a half-pixel misalignment is refused); the commands that stop before training anyway (``--cfg``,
a command documented as refused) run whole, as ``python train.py``. A command whose comment says
``# refused: <words>`` must stop with one line containing those words.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from scipy.ndimage import uniform_filter

from conftest import ROOT, TINY, run_main

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The pages' stand-in for a finished run's directory, and what the test puts there.
RUN_DIR_PLACEHOLDER = "outputs/<date>/<time>"


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    args: tuple[str, ...]  # after "python train.py"
    refused: str | None  # the words of the expected one-line error, or None

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {' '.join(self.args) or '(no arguments)'}"


def documented_commands(pages: list[Path]) -> list[Command]:
    """The ``python train.py`` lines of every ```bash block of ``pages``, continuation lines joined."""
    commands = []
    for page in pages:
        in_block, pending, start = False, "", 0
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("```"):
                in_block = line.strip() == "```bash"
                continue
            if not in_block:
                continue
            start = start if pending else number
            pending += line.rstrip("\\").strip() + " "
            if line.endswith("\\"):
                continue
            text, pending = pending.strip(), ""
            code, _, comment = text.partition("  #")
            if not code.startswith("python train.py"):
                continue
            refused = re.match(r"\s*refused: (.+)", comment)
            commands.append(Command(page.name, start, tuple(shlex.split(code)[2:]),
                                    refused.group(1).strip() if refused else None))
    return commands


# A command printed on several pages is tested once, at its first place.
COMMANDS = list({(c.args, c.refused): c for c in reversed(documented_commands(PAGES))}.values())[::-1]


def test_commands_are_found_in_bash_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `python train.py inline=1`.\n```bash\npython train.py a=1 b=2    # a comment\n"
        "python scripts/other.py\npython train.py c=3 \\\n    d=4\npython train.py e=5  # refused: too big\n```\n"
        "```yaml\npython train.py f=6\n```\n"
    )
    found = documented_commands([page])
    assert [(c.line, c.args, c.refused) for c in found] == [
        (3, ("a=1", "b=2"), None), (5, ("c=3", "d=4"), None), (7, ("e=5",), "too big"),
    ]
    assert any(c.page == "README.md" and c.args == () for c in COMMANDS)  # the first command of all


@pytest.fixture
def user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files the pages name as a user's own, written small into ``tmp_path``, the working dir."""
    rng = np.random.default_rng(0)
    for name in ("my_image.png", "photo.png"):
        Image.fromarray((rng.random((40, 48)) * 255).astype(np.uint8)).save(tmp_path / name)
    for folder in ("photos", "before", "after"):
        (tmp_path / folder).mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "photos" / f"{name}.png")
        before = rng.random((40, 48))
        np.save(tmp_path / "before" / f"{name}.npy", before)
        np.save(tmp_path / "after" / f"{name}.npy", uniform_filter(before, size=3))  # an "unknown" filter
    monkeypatch.chdir(tmp_path)
    return tmp_path


def jobs(args: list[str]) -> list[list[str]]:
    """The overrides of each job a command runs: one, or a sweep's grid."""
    # Hydra's own flags, and the value that follows --cfg (job, hydra or all).
    overrides = [a for i, a in enumerate(args) if not a.startswith("-") and args[i - 1] != "--cfg"]
    if "-m" not in args:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def tiny_settings(overrides: list[str]) -> list[str]:
    """The tiny test settings that exist in the config ``overrides`` compose.

    A closed-form solve takes no trainer settings; a command that places a template by pixels
    (``target.rows``) keeps the image size it was written for."""
    cfg = compose(config_name="train", overrides=overrides)
    solve = cfg.trainer._target_.endswith("LeastSquares")
    by_pixels = any(o.startswith("target.rows=") for o in overrides)
    return [o for o in TINY if OmegaConf.select(cfg, o.split("=")[0]) is not None
            and not (solve and o.startswith("trainer.")) and not (by_pixels and o.startswith("data."))]


def build_to_first_step(cfg: DictConfig) -> None:
    """What a run builds before its first step: checks, trainer, data, target, model and the aligned feed."""
    from convlearn.config_checks import validate
    from convlearn.pipeline import build_experiment

    validate(cfg)
    if cfg.trainer.get("threads") is not None:
        # Thread pools can only be sized before TensorFlow's first op, long past in this process;
        # validate() has checked the value.
        cfg.trainer.threads = None
    build_experiment(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_documented_command_works_as_printed(command, user_files):
    args = [a.replace(RUN_DIR_PLACEHOLDER, "outputs/earlier") for a in command.args]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        if command.refused is None and "--cfg" not in args:
            for job in jobs(args):
                build_to_first_step(compose(config_name="train", overrides=[*job, *tiny_settings(job)]))
            return
        # These stop before training: run them whole, through train.py's main.
        shrunk = [*args, *tiny_settings(jobs(args)[0]), "hydra.run.dir=run"]
    # In a process of its own, as a user runs it (these stop before TensorFlow loads: no slower).
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *shrunk], capture_output=True, text=True,
                          cwd=user_files, timeout=600)
    if command.refused is None:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "_target_: convlearn." in done.stdout  # --cfg printed the config
        return
    assert done.returncode == 1 and command.refused in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("convlearn: error:") == 1


@pytest.mark.slow
def test_the_readme_closed_form_solve_recovers_the_gaussian(user_files, monkeypatch):
    # README: "python train.py model=linear target=gaussian target.size=5 trainer=lstsq  # kernel_rel_error ~1e-7"
    (solve,) = [c for c in COMMANDS if c.page == "README.md" and "trainer=lstsq" in c.args]
    run_main(monkeypatch, *solve.args, "data.height=40", "data.width=48", "hydra.run.dir=run")
    metrics = json.loads((user_files / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["kernel_rel_error"] < 1e-5


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of ``page``, as written."""
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


@pytest.mark.slow
def test_the_readme_api_example_runs_as_printed(tmp_path, monkeypatch):
    (example,) = python_blocks(ROOT / "README.md")
    monkeypatch.chdir(tmp_path)  # the API writes its run dir under the working directory, like train.py
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.metrics["status"] == "completed" and result.metrics["kernel_rel_error"] < 1e-4
    assert result.kernels["conv_00"].shape == (5, 5, 1, 1)
    run_dir = result.run_dir.resolve()  # outputs/<date>/<time> under the working directory
    assert run_dir.is_relative_to(tmp_path / "outputs") and (run_dir / "metrics.json").is_file()
