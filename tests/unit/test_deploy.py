"""The deployment files (issue 15 item 4; README: Scaling out): deploy/compose.yaml cannot run
here (no Docker daemon, no GPU), so its structure is checked; the systemd units are checked by
`systemd-analyze verify` and against the exit codes the code gives."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_worker.worker import EXIT_WEDGED
from queueing.config import Settings, check_host_id
from queueing.session_check import EXIT_REFUSED

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
_INNERMOST_DEFAULT = re.compile(r"\$\{[A-Z_]+:-([^${}]*)\}")


def _defaults(value: str) -> str:
    """A compose value as it reads with no variables set (`${VAR:-default}` -> default, the
    innermost first: defaults nest)."""
    while (resolved := _INNERMOST_DEFAULT.sub(r"\1", value)) != value:
        value = resolved
    return value


def _compose() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())[
        "services"
    ]
    return services


def _running(services: dict[str, dict[str, Any]], command: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("command", [None])[0] == command}


def _seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def test_compose_has_postgres_migrate_two_web_processes_a_balancer_and_a_worker_per_gpu() -> None:
    """PostgreSQL, a one-shot migrate that web and workers wait for, two web processes behind
    nginx (WebSocket upgrades passed on, every web process upstream), and one worker per GPU:
    one nvidia device each, distinct GPU names (host id, device), the stop grace above the
    worker's own."""
    services = _compose()
    assert services["postgres"]["image"].startswith("postgres:")
    (migrate,) = _running(services, "migrate").values()
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    webs = _running(services, "web")
    workers = _running(services, "worker")
    assert len(webs) >= 2 and len(workers) >= 2
    for service in [migrate, *webs.values(), *workers.values()]:
        url = _defaults(service["environment"]["DATABASE_URL"])
        assert url == "postgresql://gpuqueue:gpuqueue@postgres:5432/gpuqueue", url
    for service in [*webs.values(), *workers.values()]:
        migrated = {"condition": "service_completed_successfully"}
        assert service["depends_on"] == {"migrate": migrated}
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["lb"]["volumes"]
    for name in webs:
        assert f"server {name}:8080;" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx
    assert "proxy_set_header Connection $connection_upgrade;" in nginx
    gpus, names = [], []
    for service in workers.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
        command = [_defaults(part) for part in service["command"]]
        host = check_host_id(_defaults(service["environment"]["GPUQUEUE_HOST_ID"]))
        names.append(f"{host}/{command[command.index('--device') + 1]}")
        grace = Settings.grace_s + Settings.stuck_grace_s
        assert _seconds(service["stop_grace_period"]) > grace
    assert len(set(gpus)) == len(gpus) == len(workers)
    assert len(set(names)) == len(names), names


def test_the_balancer_never_logs_a_query_string() -> None:
    """The first page link and /ws carry ?token=: nginx's access log names only the path."""
    nginx = (DEPLOY / "nginx.conf").read_text()
    (log_format,) = re.findall(r"log_format gpuqueue (.*?);", nginx, re.DOTALL)
    assert "$uri" in log_format
    for leaking in ("$request ", '$request"', "$request_uri", "$args", "$query_string"):
        assert leaking not in log_format


def _unit(name: str) -> configparser.ConfigParser:
    # Not strict: a unit may repeat a key (EnvironmentFile=); % is systemd's, not ours.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / name).read_text())
    return unit


def test_the_units_restart_by_the_exit_codes_the_commands_give() -> None:
    """Worker: 75 (a wedged step) is always restarted, 2 (a refused configuration) never,
    0 (stopped) is not a failure; the stop timeout covers its grace and stuck grace. Web: the
    same for 2. One worker unit per device, one web unit per port."""
    worker = _unit("gpuqueue-worker@.service")["Service"]
    assert worker["ExecStart"].endswith("gpuqueue worker --device cuda:%i")
    assert worker["Restart"] == "on-failure"
    assert str(EXIT_WEDGED) in worker["RestartForceExitStatus"].split()
    assert str(EXIT_REFUSED) in worker["RestartPreventExitStatus"].split()
    assert _seconds(worker["TimeoutStopSec"]) > Settings.grace_s + Settings.stuck_grace_s
    web = _unit("gpuqueue-web@.service")["Service"]
    assert web["ExecStart"].endswith("gpuqueue web --host 0.0.0.0 --port %i")
    assert web["Restart"] == "on-failure"
    assert str(EXIT_REFUSED) in web["RestartPreventExitStatus"].split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize(
    ("template", "instance"),
    [("gpuqueue-worker@.service", "0"), ("gpuqueue-web@.service", "8080")],
)
def test_systemd_analyze_verify_finds_nothing_in_the_units(
    tmp_path: Path, template: str, instance: str
) -> None:
    """Every key is one systemd knows, with a valid value (the gpuqueue command is replaced by
    an executable that exists here, since verify checks ExecStart's)."""
    text = (DEPLOY / "systemd" / template).read_text()
    (tmp_path / template).write_text(
        text.replace("/srv/gpuqueue/.venv/bin/gpuqueue", sys.executable)
    )
    found = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / template.replace("@", f"@{instance}"))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (found.returncode, found.stdout + found.stderr) == (0, "")
