"""The gpu benchmark's architectures (issue 13, item 6): every config in bench/gpu_configs builds
its diffusers or transformers class, at the published size, so the configs cannot rot.

Everything is built on the meta device: no weights are allocated, so this takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import gpu_models

CONFIG_FILES = sorted(gpu_models.CONFIGS.glob("*/*.json"))
COMPONENT_FILES = [p for p in CONFIG_FILES if p.name != "pipeline.json"]
# Millions of parameters per component, as the model cards and every loader report them.
PUBLISHED_PARAMETERS = {
    "sd15": {"unet": 859.52, "vae": 83.65, "text_encoder": 123.06},
    "sdxl": {"unet": 2567.46, "vae": 83.65, "text_encoder": 123.06, "text_encoder_2": 694.66},
}


def test_every_config_file_belongs_to_a_pipeline() -> None:
    used = {
        gpu_models.CONFIGS / family / file
        for family in gpu_models.FAMILIES
        for file in gpu_models.pipeline_spec(family)["components"].values()
        if file != "generated"
    }
    pipelines = {gpu_models.CONFIGS / family / "pipeline.json" for family in gpu_models.FAMILIES}
    assert set(CONFIG_FILES) == used | pipelines


@pytest.mark.parametrize(
    "path", COMPONENT_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in COMPONENT_FILES]
)
def test_each_component_config_builds_its_class_on_the_meta_device(path: Path) -> None:
    config = json.loads(path.read_text())
    cls = gpu_models.component_class(config)
    # Models on meta; a scheduler holds host tables only, as build_pipeline makes it.
    device = "meta" if issubclass(cls, torch.nn.Module) else "cpu"
    with torch.device(device):
        built = gpu_models.build_component(config)
    assert isinstance(built, cls)
    if "_class_name" in config:  # diffusers ignores a key it does not know: refuse it here
        _init, unused, _hidden = cls.extract_init_dict(config)
        assert unused == {}, f"{path.name}: keys {cls.__name__} does not take: {sorted(unused)}"


@pytest.mark.parametrize("family", gpu_models.FAMILIES)
def test_each_pipeline_assembles_at_its_published_size(family: str) -> None:
    pipeline = gpu_models.build_pipeline(family, device="meta")
    assert type(pipeline).__name__ == gpu_models.pipeline_spec(family)["_class_name"]
    counts = {
        name: round(count / 1e6, 2) for name, count in gpu_models.parameter_counts(pipeline).items()
    }
    assert counts == PUBLISHED_PARAMETERS[family]
    assert pipeline.tokenizer("a fox").input_ids[0] == pipeline.tokenizer.bos_token_id
