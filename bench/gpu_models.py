"""Full-size Stable Diffusion 1.5 and SDXL pipelines with random weights, built with no download.

The architectures are the published ones, written into bench/gpu_configs/<family>/ (each
component's config.json from the model's repository, and pipeline.json for how they fit
together); random weights give real compute time, which is all a throughput figure needs. The
tokenizers are generated, byte-level, as gpu_worker/tiny_model.py makes its own: every prompt
tokenizes and nothing is fetched (the real vocabulary has 49,408 tokens; the embedding table
keeps that size, so the text encoders' compute is the real one).

    python -m bench.gpu_models OUT_DIR [sd15] [sdxl] [--device cuda] [--dtype bfloat16]

builds each family on the device and saves it under OUT_DIR/<family> with save_pretrained, so
that `gpuqueue worker --model OUT_DIR/sd15` can serve it. The `gpu` benchmark family builds
its own (bench/gpu_direct.py), saving only what a worker has to load.

`tiny=True` shrinks every width and depth (TINY) so the same code runs on a CPU in seconds:
that is how it is tested where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).with_name("gpu_configs")
FAMILIES = ("sd15", "sdxl")
MAX_TOKENS = 77  # CLIP's context, for both of SDXL's text encoders too
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
SEED = 0

# Config overrides that make each family small enough for a CPU smoke run; every other key is
# the published one, so the pipeline, its call and its saved form keep their real shape.
_TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}
_TINY_VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}
TINY: dict[str, dict[str, dict[str, Any]]] = {
    "sd15": {
        "unet": {
            "block_out_channels": [32, 32, 64, 64],
            "layers_per_block": 1,
            "attention_head_dim": 2,
            "cross_attention_dim": 32,
        },
        "vae": _TINY_VAE,
        "text_encoder": _TINY_CLIP,
    },
    "sdxl": {
        "unet": {
            "block_out_channels": [32, 64, 64],
            "layers_per_block": 1,
            "attention_head_dim": [2, 4, 4],
            "transformer_layers_per_block": [1, 1, 1],
            "cross_attention_dim": 64,  # the two text encoders' hidden sizes, concatenated
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled text + 6 time ids
        },
        "vae": _TINY_VAE,
        "text_encoder": _TINY_CLIP,
        "text_encoder_2": _TINY_CLIP,
    },
}


def pipeline_spec(family: str) -> dict[str, Any]:
    """bench/gpu_configs/<family>/pipeline.json: the pipeline class and its components."""
    spec: dict[str, Any] = json.loads((CONFIGS / family / "pipeline.json").read_text())
    return spec


def component_config(family: str, name: str, *, tiny: bool = False) -> dict[str, Any]:
    """One component's published config (with the TINY overrides when tiny)."""
    file = pipeline_spec(family)["components"][name]
    config: dict[str, Any] = json.loads((CONFIGS / family / file).read_text())
    if tiny:
        config.update(TINY[family].get(name, {}))
    return config


def component_class(config: dict[str, Any]) -> Any:
    """The class a config builds: diffusers' `_class_name`, or transformers' architecture."""
    if "_class_name" in config:
        import diffusers

        return getattr(diffusers, config["_class_name"])
    import transformers

    return getattr(transformers, config["architectures"][0])


def build_component(config: dict[str, Any]) -> Any:
    """An instance of the config's class with freshly initialised (random) weights, on the
    current default device (`with torch.device(...)`: meta builds no weights at all)."""
    cls = component_class(config)
    if "_class_name" in config:
        return cls.from_config(config)
    fields = {k: v for k, v in config.items() if k != "architectures"}
    return cls(cls.config_class.from_dict(fields))


def build_tokenizer() -> Any:
    """A byte-level CLIP tokenizer from a generated vocabulary: one token per byte, no merges
    (as gpu_worker/tiny_model.py builds its own): any prompt tokenizes, offline."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet), BOS, EOS]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=[],
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_TOKENS,
    )


def build_pipeline(
    family: str, *, device: str = "cpu", dtype: Any = None, tiny: bool = False
) -> Any:
    """The family's pipeline, its models initialised directly on `device` (no copy through host
    memory), then cast to `dtype`; on "meta" nothing is allocated (the configs' unit test)."""
    import diffusers
    import torch

    spec = pipeline_spec(family)
    parts: dict[str, Any] = {}
    torch.manual_seed(SEED)
    for name in spec["components"]:
        if name.startswith("tokenizer"):
            parts[name] = build_tokenizer()
        elif name == "scheduler":
            # Outside the device context: a scheduler's tables stay on the host, as loaded ones do.
            parts[name] = build_component(component_config(family, name))
        else:
            with torch.device(device):
                model = build_component(component_config(family, name, tiny=tiny))
            if dtype is not None and device != "meta":
                model = model.to(dtype)
            parts[name] = model.eval()
    pipeline_class = getattr(diffusers, spec["_class_name"])
    return pipeline_class(**parts, **spec.get("options", {}))


def parameter_counts(pipeline: Any) -> dict[str, int]:
    """Parameters per model component (what a config's size comes to)."""
    import torch

    return {
        name: sum(p.numel() for p in part.parameters())
        for name, part in pipeline.components.items()
        if isinstance(part, torch.nn.Module)
    }


def main(argv: Sequence[str] | None = None) -> None:
    from gpu_worker.tiny_model import save_atomically

    parser = argparse.ArgumentParser(prog="python -m bench.gpu_models", description=__doc__)
    parser.add_argument("out", type=Path, help="the models go to OUT/<family>")
    parser.add_argument("families", nargs="*", metavar="family", help=f"of {', '.join(FAMILIES)}")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (a CPU smoke test)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # no progress bars, no cast notices
    dtype = getattr(torch, args.dtype)
    for family in args.families or FAMILIES:
        started = time.perf_counter()
        pipeline = build_pipeline(family, device=args.device, dtype=dtype, tiny=args.tiny)
        built = time.perf_counter() - started
        path = save_atomically(pipeline, args.out / family)
        counts = parameter_counts(pipeline)
        total = sum(counts.values()) / 1e6
        print(
            f"{family}: {total:,.1f} M parameters, built in {built:.1f} s, saved to {path} "
            f"in {time.perf_counter() - started - built:.1f} s",
            flush=True,
        )
        del pipeline
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
