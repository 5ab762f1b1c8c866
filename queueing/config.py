"""Settings read once from the environment, so every process agrees on the same defaults."""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def check_host_id(host: str) -> str:
    """A GPU is named host/device, so a host id is 1 to 200 characters without '/'."""
    if "/" in host or not 1 <= len(host) <= 200:
        raise ValueError(f"a host id is 1 to 200 characters without '/', got {host!r}")
    return host


def default_gpu_lock_dir() -> Path:
    """Where the workers of one machine keep their per-GPU lock files."""
    return Path(tempfile.gettempdir()) / "gpuqueue-gpu-locks"


@dataclass(frozen=True)
class Settings:
    """Knobs shared by the web server and the workers (README: Configuration)."""

    database_url: str | None = None
    data_dir: Path = Path(".data")
    default_timeout_s: int = 300
    default_max_attempts: int = 3
    max_queued_per_user: int = 100
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0
    poll_interval_s: float = 1.0
    sweep_interval_s: float = 1.0
    lock_warn_s: float = 30.0
    grace_s: float = 30.0
    # A worker's GPU is (host_id, device); its OS-level device lock files live in gpu_lock_dir.
    host_id: str = field(default_factory=socket.gethostname)
    gpu_lock_dir: Path = field(default_factory=default_gpu_lock_dir)
    # The web server's defaults: image side when a request names none, and its pool size.
    default_size: int = 512
    web_pool_size: int = 20
    # Signed image links: the shared secret (none: one stored in the database) and their life.
    image_secret: str | None = None
    image_link_ttl_s: int = 3600

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get("DATABASE_URL") or None,
            data_dir=Path(os.environ.get("GPUQUEUE_DATA_DIR", ".data")),
            default_timeout_s=_int("GPUQUEUE_DEFAULT_TIMEOUT_S", 300),
            default_max_attempts=_int("GPUQUEUE_DEFAULT_MAX_ATTEMPTS", 3),
            max_queued_per_user=_int("GPUQUEUE_MAX_QUEUED_PER_USER", 100),
            retry_base_s=_float("GPUQUEUE_RETRY_BASE_S", 1.0),
            retry_cap_s=_float("GPUQUEUE_RETRY_CAP_S", 60.0),
            poll_interval_s=_float("GPUQUEUE_POLL_INTERVAL_S", 1.0),
            sweep_interval_s=_float("GPUQUEUE_SWEEP_INTERVAL_S", 1.0),
            lock_warn_s=_float("GPUQUEUE_LOCK_WARN_S", 30.0),
            grace_s=_float("GPUQUEUE_GRACE_S", 30.0),
            host_id=os.environ.get("GPUQUEUE_HOST_ID") or socket.gethostname(),
            gpu_lock_dir=Path(os.environ.get("GPUQUEUE_GPU_LOCK_DIR") or default_gpu_lock_dir()),
            default_size=_int("GPUQUEUE_DEFAULT_SIZE", 512),
            web_pool_size=_int("GPUQUEUE_WEB_POOL_SIZE", 20),
            image_secret=os.environ.get("GPUQUEUE_IMAGE_SECRET") or None,
            image_link_ttl_s=_int("GPUQUEUE_IMAGE_LINK_TTL_S", 3600),
        )
