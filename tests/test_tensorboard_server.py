"""A real TensorBoard serves a finished run's scalars, images and hparams over its HTTP data API."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, TINY
from convlearn.pipeline import run_experiment

RUN = "tb"  # TensorBoard names runs by their directory under --logdir
OVERRIDES = ["model=linear", "optimizer.lr=3e-3"]
POLL_SECONDS, DEADLINE_SECONDS = 0.2, 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(base: str, route: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + route, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return raw if route.startswith("/data/plugin/images/individualImage") else json.loads(raw)


def wait_for(server: subprocess.Popen, base: str, route: str, ready, log) -> dict:
    """Poll ``route`` until ``ready(answer)``: the server loads event files in the background."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"tensorboard exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            answer = fetch(base, route)
            if ready(answer):
                return answer
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet
        time.sleep(POLL_SECONDS)
    pytest.fail(f"tensorboard did not serve {route} within {DEADLINE_SECONDS} s")


@pytest.mark.slow
def test_tensorboard_serves_the_runs_scalars_images_and_hparams(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, *OVERRIDES])
    summary = run_experiment(cfg, tmp_path, OVERRIDES).metrics

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--host", "127.0.0.1",
        "--port", str(port), "--load_fast", "false", "--reload_interval", "1",
    ]
    log = tmp_path / "tensorboard.log"  # a file, not a pipe: a chatty server can never block on it
    with open(log, "w") as log_file:
        server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        ready = lambda tags: "final/loss" in tags.get(RUN, {})  # noqa: E731
        tags = wait_for(server, base, "/data/plugin/scalars/tags", ready, log)
        assert {"loss", "rel_mse", "psnr_db", "grad_norm", "learning_rate", "steps_per_sec"} <= tags[RUN].keys()
        query = urllib.parse.urlencode({"run": RUN, "tag": "loss"})
        losses = fetch(base, f"/data/plugin/scalars/scalars?{query}")
        assert [step for _, step, _ in losses] == list(range(0, 12, 2))
        assert losses[0][2] == pytest.approx(summary["losses"][0], rel=1e-6)

        images = fetch(base, "/data/plugin/images/tags")[RUN]
        assert {"prediction", "kernels/conv_00", "kernels/effective", "activations/conv_00"} <= images.keys()
        query = urllib.parse.urlencode({"run": RUN, "tag": "prediction"})
        shots = fetch(base, f"/data/plugin/images/images?{query}")
        assert [shot["step"] for shot in shots] == [0, 5, 10, 12]
        picture = fetch(base, f"/data/plugin/images/individualImage?{shots[-1]['query']}")
        assert picture.startswith(b"\x89PNG")

        experiment = fetch(base, "/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {"model", "lr", "steps", "seed", "optimizer.lr"} <= {h["name"] for h in experiment["hparamInfos"]}
        # Like the HPARAMS tab's own request: sessions without an end record have status UNKNOWN.
        request = {"startIndex": 0, "sliceSize": 10, "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS"]}
        groups = fetch(base, "/data/plugin/hparams/session_groups", request)
        (group,) = groups["sessionGroups"]
        assert group["hparams"]["model"] == "linear" and group["hparams"]["lr"] == pytest.approx(3e-3)
        final = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert final["final/loss"] == pytest.approx(summary["final_loss"], rel=1e-6)
        assert final["final/psnr_db"] == pytest.approx(summary["psnr_db"], rel=1e-6)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
