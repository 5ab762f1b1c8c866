"""Configuration in one object: Settings reads the environment once, each knob has one default,
and the README's table names every variable it reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gpu_worker.worker import WorkerConfig
from queueing.config import Settings, variable
from queueing.jobs import Backoff, JobRequest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_names_every_variable_settings_reads() -> None:
    section = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    read = {variable(f) for f in dataclasses.fields(Settings)} - {""}
    assert read <= documented, read - documented


def test_from_env_reads_each_variable_and_remembers_which_were_given() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/q",
            "GPUQUEUE_STUB_DELAY": "0",
            "GPUQUEUE_DEFAULT_TIMEOUT_S": "60",
            "GPUQUEUE_DATA_DIR": "/srv/gq",
            "GPUQUEUE_MODEL": "",  # empty: unset
            "USER": "ada",
        }
    )
    assert settings.database_url == "postgresql://db/q"
    assert (settings.stub_delay_s, settings.default_timeout_s) == (0.0, 60)
    assert (settings.data_dir, settings.model, settings.run_user) == (
        Path("/srv/gq"),
        "tiny",
        "ada",
    )
    assert settings.given == {
        "database_url",
        "stub_delay_s",
        "default_timeout_s",
        "data_dir",
        "run_user",
    }
    assert Settings.from_env({}) == Settings(host_id=settings.host_id)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("GPUQUEUE_DEFAULT_SIZE", "big"),
        ("GPUQUEUE_GRACE_S", "-1"),
        ("GPUQUEUE_POLL_INTERVAL_S", "inf"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_by_name(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: raw})


def test_the_secrets_stay_out_of_the_repr() -> None:
    settings = Settings(database_url="postgresql://u:hunter2@db/q", image_secret="s" * 40)
    assert "hunter2" not in repr(settings) and "s" * 40 not in repr(settings)


def test_the_parts_take_their_defaults_from_settings() -> None:
    """One place per default: the worker's knobs, the retry backoff and a job's limits."""
    settings = Settings()
    config, backoff = WorkerConfig(), Backoff()
    assert config == WorkerConfig.from_settings(
        dataclasses.replace(settings, gpu_lock_dir=config.gpu_lock_dir)
    )
    assert (backoff.base_s, backoff.cap_s) == (settings.retry_base_s, settings.retry_cap_s)
    request = JobRequest(prompt="x", params={})
    assert (request.max_attempts, request.timeout_s) == (
        settings.default_max_attempts,
        settings.default_timeout_s,
    )


def test_the_batch_size_is_the_one_given_else_the_measured_default_of_backend_and_device() -> None:
    """Issue 13 item 4: --max-batch / GPUQUEUE_MAX_BATCH when given (1 to 64), else the
    backend's default for the device type, chosen from `python -m bench batch`."""
    from gpu_worker.backends import default_max_batch
    from gpuqueue.cli import build_parser

    assert Settings.from_env({"GPUQUEUE_MAX_BATCH": "3"}).max_batch == 3
    assert Settings.from_env({}).max_batch is None
    assert default_max_batch("diffusers", "cpu") == 4
    assert default_max_batch("diffusers", "cuda:1") == 1
    assert default_max_batch("stub", "cpu") == 1
    parser = build_parser(Settings())
    assert parser.parse_args(["worker", "--max-batch", "8"]).max_batch == 8
    assert parser.parse_args(["worker"]).max_batch is None
    for bad in ("0", "65", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["worker", "--max-batch", bad])
