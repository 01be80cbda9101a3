"""The remembered picks of trainer.jit_compile=auto: one workload, one pick per machine, whatever
the layers are called or seeded; a damaged or unwritable file never stops a run."""

from __future__ import annotations

import json
import logging

import keras
import pytest
import tensorflow as tf

from convlearn import step_cache
from convlearn.models import sequential

LAYERS = [{"filters": 3, "kernel_size": 3, "activation": "elu"}, {"filters": 1, "kernel_size": 3}]
RATES = {True: 5.6, False: 4.3}


def described(layers=LAYERS, shape=(1, 12, 12, 1), optimizer=keras.optimizers.Adam) -> dict:
    model = sequential(layers)  # Keras numbers the layers' names anew for every model
    inputs = tf.zeros(shape)
    targets = tf.zeros((shape[0], shape[1] - 4, shape[2] - 4, 1))
    return step_cache.workload(model, optimizer(), inputs, targets)


def test_a_workload_is_named_by_what_decides_the_race_and_nothing_else(monkeypatch):
    key = step_cache.workload_key(described())
    assert step_cache.workload_key(described()) == key  # other layer names and initial kernels: the same race
    keras.utils.set_random_seed(7)
    assert step_cache.workload_key(described()) == key
    assert step_cache.workload_key(described(shape=(1, 20, 12, 1))) != key
    assert step_cache.workload_key(described(shape=(2, 12, 12, 1))) != key
    assert step_cache.workload_key(described(layers=[{**LAYERS[0], "filters": 4}, LAYERS[1]])) != key
    assert step_cache.workload_key(described(optimizer=keras.optimizers.SGD)) != key
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # other kernels: another race
    assert step_cache.workload_key(described()) != key


def test_the_first_pick_is_remembered_and_kept(tmp_path):
    work = described()
    assert step_cache.recall(work, tmp_path) is None
    assert step_cache.remember(work, True, RATES, tmp_path) is True
    assert step_cache.recall(work, tmp_path) is True
    # A run that measured the other way at the same time gets the pick already recorded.
    assert step_cache.remember(work, False, {True: 4.0, False: 4.1}, tmp_path) is True
    assert step_cache.recall(work, tmp_path) is True
    other = described(shape=(1, 16, 16, 1))
    assert step_cache.recall(other, tmp_path) is None
    step_cache.remember(other, False, RATES, tmp_path)
    entries = json.loads((tmp_path / step_cache.FILE_NAME).read_text())
    assert {entry["jit_compile"] for entry in entries.values()} == {True, False}
    first = entries[step_cache.workload_key(work)]
    assert first["steps_per_sec"] == {"xla": 5.6, "graph": 4.3} and first["batch"] == [1, 12, 12, 1]
    # Written whole each time: no temporary file is left beside it (only the lock).
    assert sorted(path.name for path in tmp_path.iterdir()) == [f".{step_cache.FILE_NAME}.lock", step_cache.FILE_NAME]


def test_a_damaged_file_is_ignored_with_a_warning_and_then_replaced(tmp_path, caplog):
    (tmp_path / step_cache.FILE_NAME).write_text('{"half": ')
    work = described()
    with caplog.at_level(logging.WARNING, logger="convlearn"):
        assert step_cache.recall(work, tmp_path) is None
    assert "cannot be read" in caplog.text
    assert step_cache.remember(work, False, RATES, tmp_path) is False
    assert step_cache.recall(work, tmp_path) is False
    (tmp_path / step_cache.FILE_NAME).write_text(json.dumps({step_cache.workload_key(work): {"jit_compile": "yes"}}))
    assert step_cache.recall(work, tmp_path) is None  # a malformed entry is no pick


def test_an_unwritable_folder_leaves_the_pick_to_this_run_with_a_warning(tmp_path, caplog):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    with caplog.at_level(logging.WARNING, logger="convlearn"):
        assert step_cache.remember(described(), True, RATES, blocked / "cache") is True
    assert "cannot record the pick" in caplog.text and "times the steps again" in caplog.text


def test_the_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVLEARN_CACHE_DIR", str(tmp_path / "mine"))
    assert step_cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("CONVLEARN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert step_cache.cache_dir() == tmp_path / "xdg" / "convlearn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert step_cache.cache_dir() == tmp_path / "home" / ".cache" / "convlearn"


@pytest.mark.parametrize("fill", ["", "[]"])
def test_an_empty_or_foreign_file_holds_no_picks(tmp_path, fill):
    (tmp_path / step_cache.FILE_NAME).write_text(fill)
    assert step_cache.recall(described(), tmp_path) is None
