"""Settings: every knob of a deployment, read from the environment once, at the edge.

The CLI builds one Settings (`Settings.from_env()`) and passes it down; no other module reads
the environment. Each field is the one default of its knob, and names its variable: by default
GPUQUEUE_ and the field's name in capitals (README: Configuration).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The model a worker serves without --model, and a request gets without "model": the small
# random-weight pipeline built offline (gpu_worker/tiny_model.py); for stub, only a name.
BUILTIN_MODEL = "tiny"


def check_host_id(host: str) -> str:
    """A GPU is named host/device, so a host id is 1 to 200 characters without '/'."""
    if "/" in host or not 1 <= len(host) <= 200:
        raise ValueError(f"a host id is 1 to 200 characters without '/', got {host!r}")
    return host


def default_gpu_lock_dir() -> Path:
    """Where the workers of one machine keep their per-GPU lock files."""
    return Path(tempfile.gettempdir()) / "gpuqueue-gpu-locks"


def _env(name: str) -> dict[str, str]:
    """Field metadata for a variable not named GPUQUEUE_<FIELD>."""
    return {"env": name}


@dataclass(frozen=True)
class Settings:
    """Knobs shared by the commands, the web server and the workers (README: Configuration)."""

    # Where the database is: the URL, else a server at pg_probe (host:port; "off": none), else
    # the embedded one under data_dir. Every session's lock_timeout (PostgreSQL syntax).
    database_url: str | None = field(default=None, repr=False, metadata=_env("DATABASE_URL"))
    pg_probe: str = "127.0.0.1:5432"
    data_dir: Path = Path(".data")
    migrations_dir: Path | None = None  # None: the migrations that ship with gpuqueue
    lock_timeout: str = "10s"
    # A job's defaults when its request names none, and how many one user may queue.
    default_timeout_s: int = 300
    default_max_attempts: int = 3
    max_queued_per_user: int = 100
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    poll_interval_s: float = 1.0
    sweep_interval_s: float = 1.0
    lock_warn_s: float = 30.0
    grace_s: float = 30.0
    # How long after an interrupt a pipeline step may still run before the worker exits 75.
    stuck_grace_s: float = 10.0
    # How many compatible queued jobs a worker may start as one pipeline call (contract:
    # Batching). None: its backend's default on its device, measured (README: Batching).
    max_batch: int | None = None
    # The diffusers backend's GPU options (gpu_worker/backends/pipeline_options.py).
    dtype: str = "auto"
    offload: str = "none"
    attention: str = "sdpa"
    vae_tiling: bool = False
    variant: str | None = None
    compile: bool = False
    # A worker's GPU is (host_id, device); its OS-level device lock files live in gpu_lock_dir.
    host_id: str = field(default_factory=socket.gethostname)
    gpu_lock_dir: Path = field(default_factory=default_gpu_lock_dir)
    # `gpuqueue worker` and `gpuqueue run`: what runs where, and who owns run's admin token.
    # The model a worker serves (diffusers: a local path or a model id) and a request's default.
    device: str = "cpu"
    backend: str = "diffusers"
    model: str = BUILTIN_MODEL
    default_model: str = BUILTIN_MODEL
    # The stub's run time: stub_delay_s, plus stub_delay_per_work_s per megapixel-step of the job
    # (a stand-in GPU whose run time grows with size and steps, as a real one's does).
    stub_delay_s: float = field(default=0.05, metadata=_env("GPUQUEUE_STUB_DELAY"))
    stub_delay_per_work_s: float = 0.0
    run_user: str = field(default="local", metadata=_env("USER"))
    log_level: str = "INFO"
    # "text" (readable) or "json" (one object per line, for a log store: gpuqueue/logs.py).
    log_format: str = "text"
    # The web server's defaults: image side when a request names none, and its pool size.
    default_size: int = 512
    web_pool_size: int = 20
    # Signed image links: the shared secret (none: one stored in the database) and their life.
    image_secret: str | None = field(default=None, repr=False)
    image_link_ttl_s: int = 3600
    # The fields the environment set; the others are defaults.
    given: frozenset[str] = field(default=frozenset(), metadata={"env": ""})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings `env` (the process's environment) gives; an empty variable is unset.

        A value that is not of its field's kind is refused with the variable's name.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = variable(f)
            raw = env.get(name, "") if name else ""
            if raw:
                values[f.name] = _PARSERS[str(f.type).removesuffix(" | None")](name, raw)
        return cls(**values, given=frozenset(values))


def variable(f: dataclasses.Field[Any]) -> str:
    """The environment variable of a Settings field ("" for none)."""
    return str(f.metadata.get("env", f"GPUQUEUE_{f.name.upper()}"))


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite, non-negative number, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be one of 1, true, yes, on, 0, false, no, off; got {raw!r}")


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "str": lambda _, raw: raw,
    "int": _int,
    "float": _seconds,
    "Path": lambda _, raw: Path(raw),
    "bool": _flag,
}
