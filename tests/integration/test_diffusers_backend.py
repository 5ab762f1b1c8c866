"""The diffusers backend on the tiny local model: the real loading and generation code, on CPU."""

import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from gpu_worker import tiny_model
from gpu_worker.backends import Backend, ImageRequest, make_backend
from gpu_worker.backends.diffusers_backend import DiffusersBackend, pick_dtype

REPO = Path(__file__).resolve().parents[2]


FOX = ImageRequest(
    prompt="a red fox",
    negative_prompt=None,
    width=64,
    height=64,
    steps=3,
    guidance_scale=7.5,
    seed=1,
    work=3 * 64 * 64 / 1e6,
)


def ignore(step: int, steps: int) -> None:
    """A callback for tests that do not look at progress."""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def backend(data_dir: Path) -> Backend:
    """Built and loaded once: with no model named, the backend builds the tiny one."""
    loaded = make_backend("diffusers", device="cpu", model="tiny", data_dir=data_dir)
    loaded.load()
    return loaded


def test_the_tiny_model_is_built_once_then_reused(backend: Backend, data_dir: Path) -> None:
    path = data_dir / "models" / "tiny-sd"
    built_at = (path / "model_index.json").stat().st_mtime_ns
    assert tiny_model.ensure_tiny_model(data_dir) == path
    assert (path / "model_index.json").stat().st_mtime_ns == built_at
    assert os.listdir(data_dir / "models") == ["tiny-sd"]  # no scratch folder left behind


def test_a_build_that_loses_the_race_uses_the_winners_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes may build at once; the second rename fails and the first copy stands."""
    target = tmp_path / "models" / "tiny-sd"

    class BuiltWhileAnotherProcessWon:
        def save_pretrained(self, folder: Path) -> None:
            (Path(folder) / "model_index.json").write_text("loser")
            target.mkdir()
            (target / "model_index.json").write_text("winner")

    monkeypatch.setattr(tiny_model, "_build_pipeline", BuiltWhileAnotherProcessWon)
    assert tiny_model.ensure_tiny_model(tmp_path) == target
    assert (target / "model_index.json").read_text() == "winner"
    assert os.listdir(tmp_path / "models") == ["tiny-sd"]


def test_the_weights_are_the_same_on_every_build(backend: Backend, data_dir: Path) -> None:
    first = data_dir / "models" / "tiny-sd"
    second = tiny_model.ensure_tiny_model(data_dir / "again")
    for part in ("unet", "vae", "text_encoder"):
        (weights,) = (first / part).glob("*.safetensors")
        assert weights.read_bytes() == (second / part / weights.name).read_bytes(), part


def test_a_64x64_three_step_image_is_a_png_of_that_size(backend: Backend) -> None:
    with Image.open(io.BytesIO(backend.generate(FOX, ignore))) as image:
        assert (image.format, image.size) == ("PNG", (64, 64))


@pytest.mark.parametrize(("width", "height"), [(72, 64), (64, 136)])
def test_any_multiple_of_8_is_a_valid_size(backend: Backend, width: int, height: int) -> None:
    png = backend.generate(replace(FOX, width=width, height=height, steps=1), ignore)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (width, height)


def test_the_same_seed_gives_the_same_bytes(backend: Backend) -> None:
    assert backend.generate(replace(FOX, seed=5), ignore) == backend.generate(
        replace(FOX, seed=5), ignore
    )


def test_another_seed_gives_another_image(backend: Backend) -> None:
    assert backend.generate(replace(FOX, seed=5), ignore) != backend.generate(
        replace(FOX, seed=6), ignore
    )


def test_the_negative_prompt_is_honoured(backend: Backend) -> None:
    plain = backend.generate(FOX, ignore)
    assert backend.generate(replace(FOX, negative_prompt="blurry"), ignore) != plain


def test_progress_is_reported_once_per_step(backend: Backend) -> None:
    calls: list[tuple[int, int]] = []
    backend.generate(replace(FOX, steps=4), lambda step, steps: calls.append((step, steps)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_an_exception_from_the_callback_propagates_unchanged(backend: Backend) -> None:
    """Cancels and timeouts are raised in the callback; the run must end with that exception."""

    class Canceled(Exception):
        pass

    canceled = Canceled()
    calls: list[int] = []

    def on_step(step: int, steps: int) -> None:
        calls.append(step)
        if step == 2:
            raise canceled

    with pytest.raises(Canceled) as raised:
        backend.generate(replace(FOX, steps=5), on_step)
    assert raised.value is canceled
    assert calls == [1, 2]


def test_generate_before_load_is_refused(tmp_path: Path) -> None:
    unloaded = DiffusersBackend(device="cpu", model="tiny", data_dir=tmp_path)
    with pytest.raises(RuntimeError, match="before load"):
        unloaded.generate(FOX, ignore)


def test_a_cpu_runs_in_full_precision() -> None:
    assert pick_dtype(torch.device("cpu")) == torch.float32


def test_making_the_backend_imports_no_torch() -> None:
    """torch takes seconds to import; that belongs in load(), which the worker runs in a thread."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from gpu_worker.backends import make_backend\n"
        "make_backend('diffusers', device='cpu', model='tiny', data_dir=Path('.'))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
