"""A tiny, randomly initialised Stable Diffusion pipeline, built locally on first use.

It lets the real diffusers loading and generation code run with no download: the weights are
random, so the images are noise, but every shape and call is that of a real pipeline.
"""

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 0
MAX_TOKENS = 77  # what Stable Diffusion's text encoder takes
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def ensure_tiny_model(data_dir: Path) -> Path:
    """Return data_dir/models/tiny-sd, building it first if it is not there.

    Several processes may call this at once: each builds into its own temporary folder beside
    the target and renames it into place, and a loser of that race uses the winner's copy.
    """
    target = data_dir / "models" / "tiny-sd"
    if target.exists():
        return target
    return save_atomically(_build_pipeline(), target)


def save_atomically(pipeline: Any, target: Path) -> Path:
    """save_pretrained into a scratch folder beside target, renamed into place when done, so a
    half-written model is never taken for a saved one; a loser of the rename keeps the winner's.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; the model is for every local user
    try:
        pipeline.save_pretrained(scratch)
        os.rename(scratch, target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build_pipeline() -> Any:
    """Assemble the components with fixed random weights, leaving the global RNG untouched.

    diffusers' constructors are unannotated, hence the `no-untyped-call` ignores.
    """
    tokenizer = _build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(  # type: ignore[no-untyped-call]
            sample_size=8,  # 8 latent pixels: the pipeline's default image is 64x64
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        # Four blocks give the real model's factor of 8 between image and latent, so any
        # multiple of 8 is a valid size and large images stay cheap (a 64x64 latent at 512x512).
        vae = AutoencoderKL(  # type: ignore[no-untyped-call]
            sample_size=64,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=8,
        )
    scheduler = DDIMScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer from a generated vocabulary: one token per byte, no merges.

    Every prompt tokenizes (one token per character) and nothing has to be fetched.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(f"{char}</w>" for char in alphabet), BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        model_max_length=MAX_TOKENS,
    )
