from __future__ import annotations

from pathlib import Path

import pytest

from crictl.cli import build_parser, load_config
from crictl.config import Config, load_config_file, parse_mirror_flags
from crictl.errors import InvalidArgument


def test_defaults_follow_the_design() -> None:
    c = Config()
    assert c.socket == Path("/run/crictld/crictld.sock")
    assert c.db_path == Path("/var/lib/crictld/crictld.db")
    assert c.containerd_namespace == "crictld"
    assert c.netns_dir == Path("/run/crictld/netns")
    assert c.cni_bin_dirs == [Path("/opt/cni/bin"), Path("/usr/lib/cni")]
    assert c.pause_image == "registry.k8s.io/pause:3.10"
    assert c.managed_containerd_state_dir == Path("/run/crictld/containerd")


def test_the_managed_containerds_state_dir(tmp_path: Path) -> None:
    """Under /run with the default state dir; inside a state dir of the daemon's own, unless
    given."""
    assert Config(state_dir=Path("/srv/c")).managed_containerd_state_dir == Path(
        "/srv/c/containerd/state"
    )
    args = build_parser().parse_args(
        ["serve", "--state-dir", "/srv/c", "--containerd-state-dir", "/run/c"]
    )
    assert load_config(args).managed_containerd_state_dir == Path("/run/c")
    f = tmp_path / "c.toml"
    f.write_text('containerd_state_dir = "/run/d"\n')
    assert load_config_file(f).managed_containerd_state_dir == Path("/run/d")


def test_toml_file_sets_every_kind_of_setting(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'state-dir = "/srv/crictld"\n'
        'cni_bin_dirs = ["/a", "/b"]\n'
        'insecure_registries = ["reg.local:5000"]\n'
        "[registry_mirrors]\n"
        '"docker.io" = ["http://127.0.0.1:5000", "https://mirror.example"]\n'
        '"quay.io" = "http://127.0.0.1:5001"\n'
    )
    c = load_config_file(f)
    assert c.state_dir == Path("/srv/crictld")
    assert c.cni_bin_dirs == [Path("/a"), Path("/b")]
    assert c.insecure_registries == ["reg.local:5000"]
    assert c.registry_mirrors == {
        "docker.io": ["http://127.0.0.1:5000", "https://mirror.example"],
        "quay.io": ["http://127.0.0.1:5001"],
    }


@pytest.mark.parametrize("body", ["bogus = 1\n", "state_dir = 3\n", 'cni_bin_dirs = "x"\n', "[x"])
def test_toml_file_errors_name_the_problem(tmp_path: Path, body: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(body)
    with pytest.raises(InvalidArgument, match=str(f)):
        load_config_file(f)


def test_overrides_skip_none_and_reject_unknown() -> None:
    c = Config().with_overrides({"socket": Path("/x.sock"), "state_dir": None})
    assert c.socket == Path("/x.sock")
    assert c.state_dir == Config().state_dir
    with pytest.raises(InvalidArgument, match="nope"):
        Config().with_overrides({"nope": 1})


def test_mirror_flags_keep_order_per_host() -> None:
    assert parse_mirror_flags(["docker.io=http://a", "docker.io=http://b", "q.io=http://c"]) == {
        "docker.io": ["http://a", "http://b"],
        "q.io": ["http://c"],
    }
    with pytest.raises(InvalidArgument, match="HOST=URL"):
        parse_mirror_flags(["docker.io"])


def test_runtime_handlers(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[runtime_handlers]\ngvisor = "/usr/local/bin/runsc"\n')
    assert load_config_file(f).runtime_handlers == {"gvisor": "/usr/local/bin/runsc"}
    for body, match in (
        ('[runtime_handlers]\nx = "relative/runsc"\n', "absolute path"),
        ('[runtime_handlers]\nBad_Name = "/bin/x"\n', "DNS label"),
        ('[runtime_handlers]\nrunc = "/bin/x"\n', "runc is built in"),
    ):
        f.write_text(body)
        with pytest.raises(InvalidArgument, match=match):
            load_config_file(f)


def test_event_log_rows(tmp_path: Path) -> None:
    assert Config().event_log_rows == 100_000
    f = tmp_path / "c.toml"
    for body, rows in (("event-log-rows = 5000\n", 5000), ("event_log_rows = 0\n", 0)):
        f.write_text(body)
        assert load_config_file(f).event_log_rows == rows
    for body, match in (
        ("event_log_rows = -1\n", "negative"),
        ('event_log_rows = "many"\n', "wrong type"),
        ("event_log_rows = true\n", "wrong type"),
        ("event_log_rows = 1.5\n", "wrong type"),
    ):
        f.write_text(body)
        with pytest.raises(InvalidArgument, match=match):
            load_config_file(f)


def test_event_log_rows_flag(tmp_path: Path) -> None:
    empty = tmp_path / "c.toml"
    empty.write_text("")
    serve = ["serve", "--config", str(empty), "--event-log-rows"]
    assert load_config(build_parser().parse_args([*serve, "20"])).event_log_rows == 20
    with pytest.raises(InvalidArgument, match="--event-log-rows: 'x' is no whole number"):
        load_config(build_parser().parse_args([*serve, "x"]))


def test_orphan_grace(tmp_path: Path) -> None:
    assert Config().orphan_grace == 60.0
    f = tmp_path / "c.toml"
    for body, grace in (("orphan-grace = 5\n", 5.0), ("orphan_grace = 0.5\n", 0.5)):
        f.write_text(body)
        assert load_config_file(f).orphan_grace == grace
    for body, match in (
        ("orphan_grace = -1\n", "no number of seconds"),
        ("orphan_grace = nan\n", "no number of seconds"),
        ("orphan_grace = inf\n", "no number of seconds"),
        ('orphan_grace = "60"\n', "wrong type"),
        ("orphan_grace = true\n", "wrong type"),
    ):
        f.write_text(body)
        with pytest.raises(InvalidArgument, match=match):
            load_config_file(f)
    serve = ["serve", "--config", str(f.with_name("none.toml")), "--orphan-grace"]
    f.with_name("none.toml").write_text("")
    assert load_config(build_parser().parse_args([*serve, "0"])).orphan_grace == 0.0
    for bad in ("x", "-2"):
        with pytest.raises(InvalidArgument, match=f"--orphan-grace: '{bad}' is no number"):
            load_config(build_parser().parse_args([*serve, bad]))


def test_containerd_start_timeout(tmp_path: Path) -> None:
    assert Config().containerd_start_timeout == 30.0
    f = tmp_path / "c.toml"
    for body, seconds in (
        ("containerd-start-timeout = 5\n", 5.0),
        ("containerd_start_timeout = 0.5\n", 0.5),
    ):
        f.write_text(body)
        assert load_config_file(f).containerd_start_timeout == seconds
    for body, match in (
        ("containerd_start_timeout = 0\n", "no number of seconds \\(more than 0\\)"),
        ("containerd_start_timeout = -1\n", "no number of seconds"),
        ("containerd_start_timeout = nan\n", "no number of seconds"),
        ("containerd_start_timeout = inf\n", "no number of seconds"),
        ('containerd_start_timeout = "30"\n', "wrong type"),
        ("containerd_start_timeout = true\n", "wrong type"),
    ):
        f.write_text(body)
        with pytest.raises(InvalidArgument, match=match):
            load_config_file(f)
    f.with_name("none.toml").write_text("")
    serve = ["serve", "--config", str(f.with_name("none.toml")), "--containerd-start-timeout"]
    assert load_config(build_parser().parse_args([*serve, "4"])).containerd_start_timeout == 4.0
    for bad in ("x", "0", "-2"):
        with pytest.raises(
            InvalidArgument, match=f"--containerd-start-timeout: '{bad}' is no number"
        ):
            load_config(build_parser().parse_args([*serve, bad]))
