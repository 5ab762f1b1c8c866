"""The stub backend: a real PNG, progress at step boundaries, and scripted failures."""

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from gpu_worker.backends import ImageRequest, make_backend, stub
from gpu_worker.backends.stub import StubBackend, StubFailure
from queueing.config import Settings

REPO = Path(__file__).resolve().parents[2]


def request(
    prompt: str = "a red fox", *, seed: int = 7, width: int = 64, height: int = 64, steps: int = 4
) -> ImageRequest:
    return ImageRequest(
        prompt=prompt,
        negative_prompt=None,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=7.5,
        seed=seed,
        work=steps * width * height / 1e6,
    )


def decode_png(data: bytes) -> tuple[int, int, bytes]:
    """Check every chunk's CRC and the 8-bit RGB layout; return width, height and the pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: list[tuple[bytes, bytes]] = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1][0] == b"IEND"
    width, height, *layout = struct.unpack(">IIBBBBB", chunks[0][1])
    assert layout == [8, 2, 0, 0, 0]  # 8-bit RGB, deflate, no interlace
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == height * stride
    rows: list[bytes] = []
    above = bytes(3 * width)
    for start in range(0, len(raw), stride):
        kind, line = raw[start], raw[start + 1 : start + stride]
        assert kind in (0, 2), f"filter type {kind}: the stub writes none (0) and up (2) only"
        if kind == 2:
            line = bytes((byte + up) & 0xFF for byte, up in zip(line, above, strict=True))
        rows.append(line)
        above = line
    return width, height, b"".join(rows)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the stub's sleeps instead of sleeping, so timing is checked exactly and fast."""
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    return sleeps


@pytest.mark.parametrize(("width", "height"), [(64, 64), (72, 64), (64, 136), (1, 1)])
def test_the_image_is_a_valid_png_of_the_requested_size(width: int, height: int) -> None:
    png = StubBackend(delay=0).generate(request(width=width, height=height), lambda s, n: None)
    assert decode_png(png)[:2] == (width, height)


def test_pillow_reads_the_same_pixels() -> None:
    image_module = pytest.importorskip("PIL.Image")
    png = StubBackend(delay=0).generate(request(width=40, height=24), lambda s, n: None)
    with image_module.open(io.BytesIO(png)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 24))
        assert image.tobytes() == decode_png(png)[2]


def test_the_image_depends_only_on_prompt_and_seed() -> None:
    first = StubBackend(delay=0).generate(request("a red fox", seed=1), lambda s, n: None)
    again = StubBackend(delay=0).generate(request("a red fox", seed=1), lambda s, n: None)
    other_seed = StubBackend(delay=0).generate(request("a red fox", seed=2), lambda s, n: None)
    other_prompt = StubBackend(delay=0).generate(request("a blue fox", seed=1), lambda s, n: None)
    assert first == again
    assert len({first, other_seed, other_prompt}) == 3


@pytest.mark.parametrize("prompt", ["warm", "a blue fox", "run-1", "ceiling-0"])
def test_a_no_op_image_stays_small_whatever_the_prompt(prompt: str) -> None:
    """A 64x64 image fits in its row (PostgreSQL moves a value over about 2 kB out of line, and
    tries to compress it first): written row by row, some prompts' gradients took 11 kB."""
    png = StubBackend(delay=0).generate(request(prompt, seed=0), lambda s, n: None)
    assert len(png) < 1024
    assert decode_png(png)[:2] == (64, 64)


def test_progress_is_reported_after_every_step() -> None:
    calls: list[tuple[int, int]] = []
    StubBackend(delay=0).generate(request(steps=5), lambda s, n: calls.append((s, n)))
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def test_the_delay_is_split_evenly_across_steps(no_sleep: list[float]) -> None:
    StubBackend(delay=0.2).generate(request(steps=4), lambda s, n: None)
    assert no_sleep == pytest.approx([0.05] * 4)


def test_the_delay_comes_from_the_environment() -> None:
    """GPUQUEUE_STUB_DELAY, read into Settings at the edge and given to the backend."""

    def delay(env: dict[str, str]) -> float:
        settings = Settings.from_env(env)
        backend = make_backend(
            "stub",
            device="cpu",
            model="tiny",
            data_dir=Path("."),
            stub_delay_s=settings.stub_delay_s,
        )
        assert isinstance(backend, StubBackend)
        return backend.delay

    assert delay({}) == 0.05
    assert delay({"GPUQUEUE_STUB_DELAY": "0.3"}) == 0.3
    for bad in ("soon", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match="GPUQUEUE_STUB_DELAY"):
            delay({"GPUQUEUE_STUB_DELAY": bad})


def test_a_fail_prompt_raises_after_the_first_step() -> None:
    calls: list[tuple[int, int]] = []
    with pytest.raises(StubFailure, match=r"\[fail\]"):
        StubBackend(delay=0).generate(request("x [fail]"), lambda s, n: calls.append((s, n)))
    assert calls == [(1, 4)]
    assert issubclass(StubFailure, RuntimeError)


def test_a_hang_prompt_runs_until_the_callback_raises(no_sleep: list[float]) -> None:
    """The worker enforces deadlines and cancels in the callback; only that stops a hang."""

    class Deadline(Exception):
        pass

    deadline = Deadline()
    calls: list[tuple[int, int]] = []

    def on_step(step: int, steps: int) -> None:
        calls.append((step, steps))
        if len(calls) == 6:
            raise deadline

    with pytest.raises(Deadline) as raised:
        StubBackend(delay=0).generate(request("[hang]", steps=3), on_step)
    assert raised.value is deadline
    assert calls == [(1, 3), (2, 3), (3, 3), (3, 3), (3, 3), (3, 3)]  # the step is capped
    assert no_sleep == [stub.HANG_STEP_S] * 6


def test_a_stuck_prompt_blocks_without_calling_back() -> None:
    """Only killing the process ends it, which is what the worker's last resort does."""
    code = (
        "from gpu_worker.backends import ImageRequest\n"
        "from gpu_worker.backends.stub import StubBackend\n"
        "print('started', flush=True)\n"
        "StubBackend(delay=0).generate(ImageRequest('[stuck]', None, 8, 8, 2, 1.0, 0, 0.0),"
        " lambda s, n: print('step', flush=True))\n"
        "print('returned', flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "started\n"
        with pytest.raises(subprocess.TimeoutExpired):
            process.wait(timeout=0.5)
    finally:
        process.kill()
    stdout, _ = process.communicate()
    assert stdout == ""


def test_zero_delay_never_sleeps_and_is_fast(no_sleep: list[float]) -> None:
    """The stub with no delay is what throughput benchmarks measure the queue with."""
    backend = StubBackend(delay=0)
    started = time.perf_counter()
    for seed in range(200):
        backend.generate(request(seed=seed, steps=20), lambda s, n: None)
    assert time.perf_counter() - started < 2.0
    assert no_sleep == []


def test_the_stub_needs_neither_torch_nor_pillow() -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gpu_worker.backends import ImageRequest, make_backend\n"
        "backend = make_backend('stub', device='cpu', model='tiny', data_dir=Path('.'))\n"
        "backend.load()\n"
        "backend.generate(ImageRequest('x', None, 8, 8, 2, 1.0, 0, 0.0), lambda s, n: None)\n"
        "print(sorted({'torch', 'diffusers', 'transformers', 'PIL'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "GPUQUEUE_STUB_DELAY": "0"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_make_backend_refuses_an_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("tensorflow", device="cpu", model="tiny", data_dir=tmp_path)
