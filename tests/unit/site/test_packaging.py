"""The systemd unit in packaging/: restart policy, the exit statuses of `site run`, limits."""

from __future__ import annotations

import configparser
from pathlib import Path

UNIT = Path(__file__).parents[3] / "packaging" / "multiactive-site@.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_restarts_failures_but_not_configuration_errors() -> None:
    """`site run` exits 1 on a failure while running (restart it) and 2 on what restarting
    cannot cure (a locked data dir, a bad topology): the unit says both."""
    service = unit()["Service"]
    assert "multiactive site run" in service["ExecStart"]
    assert "--site %i" in service["ExecStart"]
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert service["KillMode"] == "mixed"
    assert int(service["LimitNOFILE"]) >= 4096
    assert unit()["Unit"]["StartLimitBurst"]
