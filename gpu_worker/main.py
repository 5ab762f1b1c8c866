"""`gpuqueue worker`: one process bound to one device, until a signal stops it.

Exit codes: 0 stopped (SIGTERM/SIGINT, after the running job finished or was handed back),
1 the backend could not load or a side task died, 2 the database URL goes through a transaction
pooler (queueing/session_check.py), 75 a pipeline step wedged past its deadline
(the process ends so the GPU is freed; a supervisor restarts it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import threading

from gpu_worker.backends import default_max_batch, make_backend
from gpu_worker.backends.pipeline_options import PipelineOptions
from gpu_worker.worker import EXIT_FAILED, Worker, WorkerConfig
from queueing.config import Settings
from queueing.session_check import refuse_transaction_pooling

log = logging.getLogger(__name__)


def run_worker(
    settings: Settings, url: str, *, host: str, device: str, backend: str, model: str
) -> int:
    """Run a worker on GPU host/device until SIGTERM or SIGINT; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    refuse_transaction_pooling(url, "gpuqueue worker")
    worker = Worker(
        url,
        host=host,
        device=device,
        backend=make_backend(
            backend,
            device=device,
            model=model,
            data_dir=settings.data_dir,
            stub_delay_s=settings.stub_delay_s,
            stub_delay_per_work_s=settings.stub_delay_per_work_s,
            options=PipelineOptions(
                dtype=settings.dtype,
                offload=settings.offload,
                attention=settings.attention,
                vae_tiling=settings.vae_tiling,
                variant=settings.variant,
                compile=settings.compile,
            ),
        ),
        backend_name=backend,
        model=model,
        config=dataclasses.replace(
            WorkerConfig.from_settings(settings),
            max_batch=settings.max_batch or default_max_batch(backend, device),
        ),
    )
    try:
        return asyncio.run(_serve(worker))
    except Exception:
        log.exception("the worker on GPU %s/%s failed", host, device)
        return EXIT_FAILED


async def _serve(worker: Worker) -> int:
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread; elsewhere (a worker run in a
    # thread by an embedding program) the caller stops it with worker.request_stop().
    handled = threading.current_thread() is threading.main_thread()
    if handled:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
    try:
        return await worker.run()
    finally:
        if handled:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
