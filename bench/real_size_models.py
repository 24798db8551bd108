"""NExT-GPT's components at their real shapes with random weights, built from `bench/configs/real/`.

Used by `bench/gpu_real_size.py`. Each config there is the real model's own file in the Hugging Face
layout (a `config.json` per component, `scheduler_config.json` for schedulers); nothing is downloaded.
`scale="tiny"` applies `TINY_OVERRIDES`: the same block types and layer structure at small widths.
Modules are created straight on the target device in the target dtype, so a 7B model never exists in
fp32 on the host; on the meta device they take no memory at all (shapes, parameters and FLOPs only).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _import_diffusers() -> None:
    """Import diffusers even after ImageBind's import shim (nextgpt.encoders.imagebind) registered its bare
    `timm` module: diffusers probes optional packages with `importlib.util.find_spec`, which raises on a
    module without `__spec__`. The shim is hidden for that one import."""
    shim = sys.modules.get("timm")
    if shim is not None and getattr(shim, "__spec__", None) is None:
        del sys.modules["timm"]
    try:
        import diffusers  # noqa: F401
    finally:
        if shim is not None:
            sys.modules["timm"] = shim


_import_diffusers()

CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "real"
LLM_DIR = "vicuna-7b-v0"
IMAGEBIND_DIR = "imagebind-huge"
IMAGE_DIR = "stable-diffusion-v1-5"
VIDEO_DIR = "zeroscope-v2-576w"
AUDIO_DIR = "audioldm-l-full"

_VAE = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4}
_UNET = {"block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8}
_TEXT = {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    # head_dim 32, as vLLM's CPU attention needs; vocab stays 32000
    LLM_DIR: {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2},
    f"{IMAGE_DIR}/unet": {**_UNET, "cross_attention_dim": 32, "attention_head_dim": 4},
    f"{IMAGE_DIR}/vae": _VAE,
    f"{IMAGE_DIR}/text_encoder": {**_TEXT, "hidden_size": 32, "projection_dim": 32},
    f"{VIDEO_DIR}/unet": {**_UNET, "cross_attention_dim": 48, "attention_head_dim": 4},
    f"{VIDEO_DIR}/vae": _VAE,
    f"{VIDEO_DIR}/text_encoder": {**_TEXT, "hidden_size": 48, "projection_dim": 48},
    f"{AUDIO_DIR}/unet": {**_UNET, "cross_attention_dim": [32, 32, 64, 64],
                          "projection_class_embeddings_input_dim": 24},
    f"{AUDIO_DIR}/vae": {"block_out_channels": [8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4},
    f"{AUDIO_DIR}/text_encoder": {**_TEXT, "hidden_size": 32, "projection_dim": 24},
    # channels halve at each of the 5 upsamplings: 32 leaves one
    f"{AUDIO_DIR}/vocoder": {"upsample_initial_channel": 32, "resblock_kernel_sizes": [3],
                             "resblock_dilation_sizes": [[1, 3]]},
}  # fmt: skip


def load_config(name: str, scale: str) -> dict[str, Any]:
    """`CONFIG_DIR/<name>/config.json` (or `scheduler_config.json`), shrunk when `scale == "tiny"`."""
    folder = CONFIG_DIR / name
    path = folder / "config.json" if (folder / "config.json").is_file() else folder / "scheduler_config.json"
    config: dict[str, Any] = json.loads(path.read_text())
    if scale == "tiny":
        config.update(TINY_OVERRIDES.get(name, {}))
    return config


@contextlib.contextmanager
def building(device: str, dtype: torch.dtype, seed: int = 0) -> Iterator[None]:
    """Create parameters straight on `device` in `dtype`, seeded.

    On meta, accelerate's empty-weights mode makes the parameters meta while other tensors stay on the CPU
    (ImageBind's constructor calls `.item()`, which meta tensors refuse); `Target.build` moves the rest."""
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        if device == "meta":
            from accelerate import init_empty_weights

            with init_empty_weights(include_buffers=False):
                yield
        else:
            with torch.device(device):
                yield
    finally:
        torch.set_default_dtype(previous)


@dataclass(frozen=True)
class Target:
    """What to build and where."""

    scale: Literal["real", "tiny"]
    device: str
    """"cuda", "cuda:N", "cpu" or "meta"."""
    dtype: torch.dtype

    def build(self, factory: Callable[[], torch.nn.Module]) -> Any:
        """`factory()` on the device in the dtype, in eval mode, frozen."""
        with building(self.device, self.dtype):
            module = factory()
        return module.to(self.device).eval().requires_grad_(False)  # stray CPU buffers follow

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.device, dtype=self.dtype)

    def config(self, name: str) -> dict[str, Any]:
        return load_config(name, self.scale)


def count_params(module: torch.nn.Module, skip: str | None = None) -> tuple[int, int]:
    """(parameters, bytes), leaving out parameters whose name contains `skip`."""
    params = [p for n, p in module.named_parameters() if skip is None or skip not in n]
    return sum(p.numel() for p in params), sum(p.numel() * p.element_size() for p in params)


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return int(sdpa_flop_count(query, key, value))


# FlopCounterMode knows the CUDA attention kernels (and meta decomposes into matmuls) but not the CPU one.
_CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of `fn()`: matmuls, convolutions and attention (norms and elementwise ops are not counted)."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_CUSTOM_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------
# LLM and encoder


def build_llm(target: Target) -> tuple[Any, dict[str, Any]]:
    """Vicuna-7B v0 (LLaMA-1) from its config.json, resized for the legacy signal tokens the repo's way
    (32000 -> 32038 rows). Returns the LlamaForCausalLM and the raw config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nextgpt.llm.signal_tokens import LEGACY
    from nextgpt.llm.weights import resize_embeddings

    raw = target.config(LLM_DIR)
    model = target.build(lambda: LlamaForCausalLM(LlamaConfig.from_dict(raw)))
    resize_embeddings(model, raw["vocab_size"] + len(LEGACY.all_tokens))
    return model, raw


def build_imagebind(target: Target) -> tuple[torch.nn.Module, dict[str, Any]]:
    """ImageBind-huge with Meta's model code (through the repo's import shims); tiny: `ARCHS["tiny"]`."""
    from nextgpt.encoders.imagebind import ARCHS, imagebind_module

    if target.scale == "real":
        kwargs = json.loads((CONFIG_DIR / IMAGEBIND_DIR / "config.json").read_text())
    else:
        kwargs = dict(ARCHS["tiny"])
    return target.build(lambda: imagebind_module().ImageBindModel(**kwargs)), kwargs


# ---------------------------------------------------------------------------------------------------------
# Decoders


@dataclass
class Diffusion:
    """One decoder: its modules, the shapes of one denoising step, and how to wrap it for serving."""

    name: str
    config_dir: str
    components: dict[str, torch.nn.Module]
    unet_inputs: dict[str, Any]
    """Keyword arguments of one batch-1 UNet call (`sample` first); guidance doubles the batch."""
    once: dict[str, Callable[[], object]]
    """What runs once per request after the loop: VAE decode (and vocoder)."""
    make_pipeline: Callable[[Path], Any]
    """Builds the diffusers pipeline around the components (tokenizer files under the given folder)."""
    decoder_cls: type
    """The repo's decoder class (`ImageDecoder`, ...): what the decoder service runs."""
    decode_kwargs: dict[str, Any]
    """Size fields of `DecodeDefaults`."""


def clip_tokenizer(folder: Path) -> Any:
    """CLIP's real tokenizer (SD 1.5 and Zeroscope), rebuilt from the BPE file in the imagebind package."""
    from transformers import CLIPTokenizer

    from nextgpt.tiny.diffusion import CLIP_MAX_LENGTH, build_clip_tokenizer

    path = folder / "clip-tokenizer"
    if (path / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(path, model_max_length=CLIP_MAX_LENGTH)
    return build_clip_tokenizer(path)


def _vae_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def _clip_text(target: Target, name: str) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_dict(target.config(f"{name}/text_encoder"))
    return target.build(lambda: CLIPTextModel(config))


def build_image(target: Target, height: int, width: int) -> Diffusion:
    """Stable Diffusion 1.5: UNet2D cross-attending to CLIP ViT-L text states (77 x 768), x8 VAE."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from nextgpt.decoders.image import ImageDecoder

    unet = target.build(lambda: UNet2DConditionModel.from_config(target.config(f"{IMAGE_DIR}/unet")))
    vae = target.build(lambda: AutoencoderKL.from_config(target.config(f"{IMAGE_DIR}/vae")))
    text = _clip_text(target, IMAGE_DIR)
    f = _vae_factor(vae)
    latents = target.randn(1, unet.config.in_channels, height // f, width // f)  # (1, 4, H/8, W/8)
    cond = target.randn(1, text.config.max_position_embeddings, text.config.hidden_size)  # (1, 77, 768)

    def pipeline(folder: Path) -> Any:
        scheduler = PNDMScheduler.from_config(target.config(f"{IMAGE_DIR}/scheduler"))
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text, tokenizer=clip_tokenizer(folder), unet=unet, scheduler=scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip

    return Diffusion(
        f"SD 1.5 {height}x{width}",
        IMAGE_DIR,
        {"unet": unet, "vae": vae, "text_encoder": text},
        {"sample": latents, "timestep": 999, "encoder_hidden_states": cond},
        {"vae_decode": lambda: vae.decode(latents)},
        pipeline,
        ImageDecoder,
        {"height": height, "width": width},
    )


def build_video(target: Target, frames: int, height: int, width: int) -> Diffusion:
    """Zeroscope v2 576w: UNet3D cross-attending to OpenCLIP ViT-H text states (77 x 1024), x8 VAE."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel

    from nextgpt.decoders.video import VideoDecoder

    unet = target.build(lambda: UNet3DConditionModel.from_config(target.config(f"{VIDEO_DIR}/unet")))
    vae = target.build(lambda: AutoencoderKL.from_config(target.config(f"{VIDEO_DIR}/vae")))
    text = _clip_text(target, VIDEO_DIR)
    f, channels = _vae_factor(vae), unet.config.in_channels
    latents = target.randn(1, channels, frames, height // f, width // f)  # (1, 4, T, H/8, W/8)
    cond = target.randn(1, text.config.max_position_embeddings, text.config.hidden_size)  # (1, 77, 1024)
    frame_latents = target.randn(frames, channels, height // f, width // f)  # one VAE call for all frames

    def pipeline(folder: Path) -> Any:
        scheduler = DDIMScheduler.from_config(target.config(f"{VIDEO_DIR}/scheduler"))
        return TextToVideoSDPipeline(
            vae=vae, text_encoder=text, tokenizer=clip_tokenizer(folder), unet=unet, scheduler=scheduler
        )

    return Diffusion(
        f"Zeroscope {frames}x{height}x{width}",
        VIDEO_DIR,
        {"unet": unet, "vae": vae, "text_encoder": text},
        {"sample": latents, "timestep": 999, "encoder_hidden_states": cond},
        {"vae_decode": lambda: vae.decode(frame_latents)},
        pipeline,
        VideoDecoder,
        {"height": height, "width": width, "num_frames": frames},
    )


def build_audio(target: Target, seconds: float) -> Diffusion:
    """AudioLDM-l-full: UNet2D over mel latents, conditioned on the CLAP text projection (512) as class
    labels (no cross-attention), x4 mel VAE, HiFi-GAN vocoder at 16 kHz."""
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    from nextgpt.decoders.audio import AudioDecoder
    from nextgpt.tiny.diffusion import build_roberta_tokenizer

    unet = target.build(lambda: UNet2DConditionModel.from_config(target.config(f"{AUDIO_DIR}/unet")))
    vae = target.build(lambda: AutoencoderKL.from_config(target.config(f"{AUDIO_DIR}/vae")))
    text_config = ClapTextConfig.from_dict(target.config(f"{AUDIO_DIR}/text_encoder"))
    text = target.build(lambda: ClapTextModelWithProjection(text_config))
    vocoder_config = SpeechT5HifiGanConfig.from_dict(target.config(f"{AUDIO_DIR}/vocoder"))
    vocoder = target.build(lambda: SpeechT5HifiGan(vocoder_config))
    # As AudioLDMPipeline sizes it: the clip's mel frames, rounded up to the VAE's factor.
    hop = 1
    for rate in vocoder_config.upsample_rates:
        hop *= rate  # waveform samples per mel frame
    f, mel_bins = _vae_factor(vae), vocoder_config.model_in_dim
    frames = -(-int(seconds * vocoder_config.sampling_rate / hop) // f) * f
    latents = target.randn(1, unet.config.in_channels, frames // f, mel_bins // f)  # (1, 8, T/4, 16)
    clap = target.randn(1, text.config.projection_dim)  # (1, 512)
    mel = target.randn(1, frames, mel_bins)  # the vocoder's input

    def pipeline(folder: Path) -> Any:
        scheduler = DDIMScheduler.from_config(target.config(f"{AUDIO_DIR}/scheduler"))
        # CLAP's RoBERTa vocabulary is not here; the tiny byte-level BPE only tokenizes the empty negative.
        tokenizer = build_roberta_tokenizer(folder / "roberta-tokenizer")
        return AudioLDMPipeline(
            vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder
        )

    return Diffusion(
        f"AudioLDM {seconds:g} s",
        AUDIO_DIR,
        {"unet": unet, "vae": vae, "text_encoder": text, "vocoder": vocoder},
        {"sample": latents, "timestep": 999, "encoder_hidden_states": None, "class_labels": clap},
        {"vae_decode": lambda: vae.decode(latents), "vocoder": lambda: vocoder(mel)},
        pipeline,
        AudioDecoder,
        {"audio_seconds": seconds},
    )
