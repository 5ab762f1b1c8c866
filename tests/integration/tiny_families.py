"""Tiny offline builds of the common pipeline families, for tests: random weights, the real
diffusers classes, saved with save_pretrained so the worker loads them through from_pretrained.

Nothing is downloaded: the CLIP tokenizers are gpu_worker.tiny_model's byte-level one, the T5
tokenizers a unigram vocabulary generated here (one piece per printable character, with and
without the word-start mark). Every image is noise, but every shape and call is the family's.
This module holds no tests.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from gpu_worker.tiny_model import MAX_TOKENS, _build_tokenizer

SEED = 0
T5_TOKENS = 32  # prompts are short; a shorter sequence keeps the T5 pass cheap on a CPU


def _clip_config(vocab: int, *, projection: bool = False) -> CLIPTextConfig:
    tokenizer = _build_tokenizer()
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32 if projection else 512,
    )


def _vae(latent_channels: int = 4, **extra: Any) -> AutoencoderKL:
    """Four blocks: the real factor of 8 between image and latent."""
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        sample_size=64,
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
        **extra,
    )


def t5_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer from a generated vocabulary: pad, eos, unk, then every
    printable character alone and with the word-start mark."""
    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(f"\u2581{c}", -3.0) for c in chars] + [(c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=T5_TOKENS)


def _t5_encoder(vocab: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=vocab,
            d_model=32,
            d_ff=64,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def _unet(**family: Any) -> Any:
    """The SD-style denoiser every UNet family here shares, with the family's own options."""
    return UNet2DConditionModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        **family,
    )


def _sd_scheduler(**family: Any) -> Any:
    """Euler with SD's beta schedule, with the family's own prediction and timestep spacing."""
    return EulerDiscreteScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        **family,
    )


def build_sdxl() -> Any:
    tokenizer = _build_tokenizer()
    vocab = len(tokenizer)
    unet = _unet(
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # time ids + pooled text
        cross_attention_dim=64,  # both text encoders' hidden states side by side
    )
    return StableDiffusionXLPipeline(  # type: ignore[no-untyped-call]
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(vocab)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(vocab, projection=True)),
        tokenizer=tokenizer,
        tokenizer_2=_build_tokenizer(),
        unet=unet,
        scheduler=_sd_scheduler(timestep_spacing="leading"),
    )


def build_sd2_turbo() -> Any:
    """SD 2.x as sd-turbo is: v-prediction, linear projections, trailing timesteps."""
    tokenizer = _build_tokenizer()
    unet = _unet(cross_attention_dim=32)
    return StableDiffusionPipeline(  # type: ignore[no-untyped-call]
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config(len(tokenizer))),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_sd_scheduler(prediction_type="v_prediction", timestep_spacing="trailing"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_pixart_sigma() -> Any:
    tokenizer = t5_tokenizer()
    transformer = PixArtTransformer2DModel(  # type: ignore[no-untyped-call]
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,  # learned sigma, as the real one
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(  # type: ignore[no-untyped-call]
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(len(tokenizer)),
        vae=_vae(),
        transformer=transformer,
        scheduler=EulerDiscreteScheduler(),  # type: ignore[no-untyped-call]
    )


def build_flux() -> Any:
    """Flux with guidance embedded (dev-like), CLIP for the pooled text, T5 for the sequence."""
    clip_tokenizer = _build_tokenizer()
    tokenizer_2 = t5_tokenizer()
    transformer = FluxTransformer2DModel(  # type: ignore[no-untyped-call]
        patch_size=1,
        in_channels=16,  # 4 latent channels in 2x2 packed patches
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5's d_model
        pooled_projection_dim=32,  # CLIP's hidden size
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=True,
    )
    return FluxPipeline(  # type: ignore[no-untyped-call]
        scheduler=FlowMatchEulerDiscreteScheduler(),  # type: ignore[no-untyped-call]
        vae=_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.06),
        text_encoder=CLIPTextModel(_clip_config(len(clip_tokenizer))),
        tokenizer=clip_tokenizer,
        text_encoder_2=_t5_encoder(len(tokenizer_2)),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


# Folder name -> builder. The names matter: "turbo" gives that model the distilled defaults.
FAMILIES: dict[str, Callable[[], Any]] = {
    "tiny-sdxl": build_sdxl,
    "tiny-sd2-turbo": build_sd2_turbo,
    "tiny-pixart-sigma": build_pixart_sigma,
    "tiny-flux": build_flux,
}


def build(name: str, root: Path) -> Path:
    """Build family `name` with fixed random weights under root/name; return its folder."""
    target = root / name
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        pipeline = FAMILIES[name]()
    pipeline.save_pretrained(target)
    return target
