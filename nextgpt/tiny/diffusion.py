"""Tiny random diffusion pipelines for the `tiny` profile, written in the real diffusers format.

Each builder constructs the *real* pipeline class (`StableDiffusionPipeline`, `TextToVideoSDPipeline`,
`AudioLDMPipeline`) from small random components and calls `save_pretrained`, so that the serving code
loads them with the same `Pipeline.from_pretrained(dir)` it uses for real weights. The shapes mirror the
real models (77-token CLIP conditioning, CLAP projection as class labels, x8 VAEs, 16 kHz audio); only
the widths shrink (`nextgpt.tiny_profile`). Starting point: diffusers' own fast-test dummy components.

Nothing is downloaded: the CLIP tokenizer is rebuilt from the BPE merges file that ships inside the
`imagebind-unofficial` package, and the CLAP (RoBERTa) tokenizer is a byte-level BPE trained here on a
fixed corpus.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DDIMScheduler, PNDMScheduler

# Models and pipelines from their modules, not `diffusers`: the package's TYPE_CHECKING branch types those
# lazy names as dummies.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.models.unets.unet_3d_condition import UNet3DConditionModel
from diffusers.pipelines.deprecated.audioldm.pipeline_audioldm import AudioLDMPipeline
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth import (
    TextToVideoSDPipeline,
)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from tokenizers import ByteLevelBPETokenizer
from transformers import (
    ClapTextConfig,
    ClapTextModelWithProjection,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    RobertaTokenizer,
    SpeechT5HifiGan,
    SpeechT5HifiGanConfig,
)

from nextgpt import tiny_profile as dims

logger = logging.getLogger(__name__)

CLIP_MAX_LENGTH = 77
CLIP_VOCAB_SIZE = 49408
SAMPLE_RATE = 16000
MEL_BINS = 32
"""Vocoder input bins; must be divisible by the VAE's x8 (real AudioLDM: 64)."""
HOP = 160
"""Waveform samples per mel frame (10 ms at 16 kHz, as AudioLDM); the vocoder upsamples by this."""

# Corpus for the tiny CLAP tokenizer: fixed, so that the trained merges are identical on every build.
_ROBERTA_CORPUS = (
    "a dog barks in the distance while rain falls on a tin roof",
    "a man speaks and birds chirp in the background",
    "music plays with drums, bass and an electric guitar",
    "a car engine revs up and accelerates down the road",
    "people laugh and clap in a large hall",
    "water flows in a stream; wind blows through the trees",
    "a hammer hits a wooden surface three times",
    "an orchestra performs a slow piece with violins",
)


# ---------------------------------------------------------------------------------------------------------
# Tokenizers


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (printable bytes map to themselves)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_bpe_path() -> Path:
    """CLIP's `bpe_simple_vocab_16e6.txt.gz` inside the installed imagebind package (not imported: its
    `imagebind.data` pulls torchvision)."""
    spec = importlib.util.find_spec("imagebind")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package imagebind-unofficial is not installed; it ships CLIP's BPE file")
    for location in spec.submodule_search_locations:
        path = Path(location) / "bpe" / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    raise FileNotFoundError("bpe/bpe_simple_vocab_16e6.txt.gz not found in the imagebind package")


def write_clip_vocab(out_dir: str | Path) -> Path:
    """Write CLIP's real `vocab.json` + `merges.txt` into `out_dir`, derived from the BPE merges file the
    same way OpenAI's SimpleTokenizer does (49408 tokens)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out


def build_clip_tokenizer(out_dir: str | Path) -> CLIPTokenizer:
    """CLIP's tokenizer (SD 1.5 / Zeroscope), built from the files `write_clip_vocab` writes."""
    path = write_clip_vocab(out_dir)
    return CLIPTokenizer.from_pretrained(path, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)


def build_roberta_tokenizer(out_dir: str | Path) -> RobertaTokenizer:
    """A tiny byte-level BPE in RoBERTa's layout (<s>=0, <pad>=1, </s>=2), as CLAP's text branch expects."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        list(_ROBERTA_CORPUS),
        vocab_size=512,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.save_model(str(out))  # vocab.json + merges.txt
    return RobertaTokenizer.from_pretrained(out, model_max_length=CLIP_MAX_LENGTH, local_files_only=True)


# ---------------------------------------------------------------------------------------------------------
# Components


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed component init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _x8_vae(channels: int, latent_channels: int, scaling_factor: float, sample_size: int) -> AutoencoderKL:
    """4 blocks -> downsamples x8 like the real VAEs (fewer blocks make CPU attention explode at 512px)."""
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


def clip_text_encoder(hidden: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=hidden,
    )
    return CLIPTextModel(config)


def clap_text_encoder(vocab_size: int, hidden: int, projection_dim: int) -> ClapTextModelWithProjection:
    """A small CLAP text tower (RoBERTa, 2 layers) with its projection, AudioLDM's conditioning."""
    return ClapTextModelWithProjection(
        ClapTextConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH + 3,  # RoBERTa positions start at pad_id + 1
            type_vocab_size=1,
            projection_dim=projection_dim,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
        )
    )


def sd_scheduler_kwargs() -> dict[str, object]:
    """SD 1.5's noise schedule (also Zeroscope's)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def _save(pipe: DiffusionPipeline, out: Path) -> Path:
    pipe.save_pretrained(out, safe_serialization=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    logger.info("wrote %s to %s (%.1f MB)", type(pipe).__name__, out, size / 1e6)
    return out


# ---------------------------------------------------------------------------------------------------------
# Pipelines


def build_tiny_stable_diffusion(out_dir: str | Path, seed: int = dims.SEED) -> Path:
    """Stable Diffusion 1.5 in miniature: CLIP text (77 x IMAGE_COND_DIM), UNet2D, x8 VAE, PNDM."""
    out = Path(out_dir)
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    with _seeded(seed):
        unet = UNet2DConditionModel(
            sample_size=dims.IMAGE_SIZE // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=dims.IMAGE_COND_DIM,
            attention_head_dim=8,
            norm_num_groups=4,
        )
    with _seeded(seed):
        vae = _x8_vae(3, latent_channels=4, scaling_factor=0.18215, sample_size=dims.IMAGE_SIZE)
    with _seeded(seed):
        text_encoder = clip_text_encoder(dims.IMAGE_COND_DIM)
    scheduler = PNDMScheduler(skip_prk_steps=True, **sd_scheduler_kwargs())
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,  # type: ignore[arg-type]  # diffusers annotates schedulers as the KarrasDiffusionSchedulers enum
        # diffusers annotates the optional components as required; None is its documented way to drop them.
        safety_checker=None,  # type: ignore[arg-type]
        feature_extractor=None,  # type: ignore[arg-type]
        requires_safety_checker=False,
    )
    return _save(pipe, out)


def build_tiny_zeroscope(out_dir: str | Path, seed: int = dims.SEED) -> Path:
    """Zeroscope (TextToVideoSD) in miniature: CLIP text (77 x VIDEO_COND_DIM), UNet3D, x8 VAE, DDIM."""
    out = Path(out_dir)
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    with _seeded(seed):
        unet = UNet3DConditionModel(
            sample_size=dims.VIDEO_SIZE // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=dims.VIDEO_COND_DIM,
            attention_head_dim=8,
            norm_num_groups=4,
        )
    with _seeded(seed):
        vae = _x8_vae(3, latent_channels=4, scaling_factor=0.18215, sample_size=dims.VIDEO_SIZE)
    with _seeded(seed):
        text_encoder = clip_text_encoder(dims.VIDEO_COND_DIM)
    scheduler = DDIMScheduler(clip_sample=False, **sd_scheduler_kwargs())
    pipe = TextToVideoSDPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,  # type: ignore[arg-type]  # diffusers annotates schedulers as the KarrasDiffusionSchedulers enum
    )
    return _save(pipe, out)


def build_tiny_audioldm(out_dir: str | Path, seed: int = dims.SEED) -> Path:
    """AudioLDM in miniature: CLAP text projection (AUDIO_COND_DIM) fed to the UNet as class labels,
    x8 mel VAE, HiFi-GAN vocoder at 16 kHz (hop 160), DDIM."""
    out = Path(out_dir)
    tokenizer = build_roberta_tokenizer(out / "tokenizer")
    latent_frames = round(dims.AUDIO_SECONDS * SAMPLE_RATE / HOP) // 8
    with _seeded(seed):
        # AudioLDM has no text cross-attention: the CLAP embedding enters as a class embedding, and the
        # attention blocks self-attend (cross_attention_dim == block width, as in the real config).
        unet = UNet2DConditionModel(
            sample_size=latent_frames,
            in_channels=8,
            out_channels=8,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=(16, 32),
            attention_head_dim=8,
            norm_num_groups=4,
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=dims.AUDIO_COND_DIM,
            class_embeddings_concat=True,
        )
    with _seeded(seed):
        vae = _x8_vae(1, latent_channels=8, scaling_factor=0.9227914, sample_size=MEL_BINS)
    with _seeded(seed):
        text_encoder = clap_text_encoder(len(tokenizer), 32, dims.AUDIO_COND_DIM)
    with _seeded(seed):
        vocoder = SpeechT5HifiGan(
            SpeechT5HifiGanConfig(
                model_in_dim=MEL_BINS,
                sampling_rate=SAMPLE_RATE,
                upsample_initial_channel=16,
                upsample_rates=[5, 4, 8],  # product = HOP
                upsample_kernel_sizes=[9, 8, 16],  # (kernel - rate) even: exact x160,
                resblock_kernel_sizes=[3],
                resblock_dilation_sizes=[[1, 3]],
                normalize_before=False,
                # The default 0.01 init makes a random HiFi-GAN output ~1e-7, which PCM16 rounds to
                # silence; 0.2 gives audible noise (peaks ~0.5) so that WAV tests see real samples.
                initializer_range=0.2,
            )
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
    )
    pipe = AudioLDMPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,  # type: ignore[arg-type]  # diffusers annotates schedulers as the KarrasDiffusionSchedulers enum
        vocoder=vocoder,
    )
    return _save(pipe, out)


def build_all(root: str | Path, seed: int = dims.SEED) -> dict[str, Path]:
    """The three tiny decoders under `root`, at the directory names the `tiny` profile expects."""
    root = Path(root)
    return {
        "image": build_tiny_stable_diffusion(root / "stable-diffusion", seed),
        "video": build_tiny_zeroscope(root / "zeroscope", seed),
        "audio": build_tiny_audioldm(root / "audioldm", seed),
    }
