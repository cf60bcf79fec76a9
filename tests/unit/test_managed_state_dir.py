"""Where a managed containerd about to start keeps its state: the configured dir (under /run),
unless the dir an earlier crictld gave it holds a task's bundle, whose shim may run still."""

from __future__ import annotations

import tomllib
from pathlib import Path

from crictl.containerd.managed import ManagedContainerd, containerd_config


def test_the_configured_state_dir(tmp_path: Path) -> None:
    m = ManagedContainerd(tmp_path / "containerd", state=tmp_path / "run")
    assert m._state_dir() == tmp_path / "run"
    config = tomllib.loads(containerd_config(m.directory, tmp_path / "run"))
    assert config["state"] == str(tmp_path / "run")
    assert config["root"] == str(tmp_path / "containerd" / "root")


def test_an_earlier_state_dir_holding_a_task_is_kept(tmp_path: Path) -> None:
    legacy = tmp_path / "containerd" / "state"
    tasks = legacy / "io.containerd.runtime.v2.task" / "crictld"
    tasks.mkdir(parents=True)
    m = ManagedContainerd(tmp_path / "containerd", state=tmp_path / "run")
    assert m._state_dir() == tmp_path / "run"  # a namespace dir, no task: nothing to keep
    (tasks / "abc").mkdir()
    assert m._state_dir() == legacy
    (tasks / "abc").rmdir()
    assert m._state_dir() == tmp_path / "run"


def test_without_a_configured_dir_the_state_is_beside_the_rest(tmp_path: Path) -> None:
    m = ManagedContainerd(tmp_path / "containerd")
    assert m._state_dir() == tmp_path / "containerd" / "state"


def test_the_state_dir_the_last_config_named_is_kept_while_it_holds_a_task(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "containerd"
    directory.mkdir()
    before = tmp_path / "before"
    (directory / "config.toml").write_text(containerd_config(directory, before))
    m = ManagedContainerd(directory, state=tmp_path / "run")
    assert m._state_dir() == tmp_path / "run"
    (before / "io.containerd.runtime.v2.task" / "crictld" / "abc").mkdir(parents=True)
    assert m._state_dir() == before
    (directory / "config.toml").write_text("not toml [")
    assert m._state_dir() == tmp_path / "run"  # unreadable: the default's dir, empty
