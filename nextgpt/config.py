"""Configuration dataclasses, one per concern. Each validates itself in `__post_init__`.

A profile (see `nextgpt/profiles.py`) is a `ProfileConfig` that names every component and its local path.
Services read environment variables into these same dataclasses; nothing here is global.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nextgpt.errors import ConfigError
from nextgpt.modalities import OUTPUTS
from nextgpt.types import MODALITIES, Modality

if TYPE_CHECKING:
    import torch

Device = str  # "cpu", "cuda", "cuda:1", ...
DTypeName = Literal["float32", "float16", "bfloat16"]
DTYPES = ("float32", "float16", "bfloat16")
"""Weight dtypes a placement may name (torch's own names)."""


# Output option ranges: every value inside them runs on every decoder (tests/nextgpt/decoders/
# test_output_budgets.py runs the maxima on the tiny profile).
MAX_STEPS = 500
"""Most diffusion steps. The schedulers (SD 1.5 PNDM, Zeroscope and AudioLDM DDIM: 1000 training
timesteps, steps_offset 1) index past their schedule from 1000 steps on (IndexError); they run up to 999,
and quality stops improving long before 500."""
MAX_SIDE = 1024
"""Largest output height or width in pixels (SD 1.5 and Zeroscope XL reach 1024; 512 / 576 are normal)."""
MAX_FRAMES = 64
"""Most video frames (Zeroscope is trained on 24)."""
MAX_AUDIO_SECONDS = 60.0
"""Longest generated audio (AudioLDM's normal use is 5-10 s)."""
MAX_PIXEL_STEPS = 1_000_000_000
"""Default of the decode budgets (`DecodeDefaults.max_pixel_steps`, `GenerationOptions.max_pixel_steps`):
steps x height x width x frames. 4.5x a 24-frame 576x320 Zeroscope video at 50 steps (221 M), 76x a
512x512 SD image at 50 steps (13 M)."""
PIXEL_STEP_MODALITIES: tuple[Modality, ...] = tuple(m for m, out in OUTPUTS.items() if out.pixels)
"""Modalities the pixel-step budgets count (audio is bounded by `MAX_STEPS` x `MAX_AUDIO_SECONDS`)."""


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass
class Placement:
    """Where one component runs."""

    device: Device = "cpu"
    """torch device string: "cpu", "cuda" or "cuda:N"."""
    dtype: DTypeName = "float32"
    """Weights and activations dtype. fp16/bf16 only make sense on a GPU."""

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, f"dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        _check(
            self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps",
            f"device={self.device!r}: use 'cpu', 'cuda' or 'cuda:N'",
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch  # here, not at the top: clients import this module and need no torch

        return getattr(torch, self.dtype)

    def resolve(self) -> Placement:
        """Fall back to CPU/fp32 with the same object shape when CUDA is asked for but absent."""
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return Placement("cpu", "float32")
        return self


@dataclass
class EncoderConfig:
    """The frozen ImageBind encoder."""

    checkpoint: Path
    """ImageBind state dict saved with torch.save (e.g. `imagebind_huge.pth`)."""
    arch: str = "huge"
    """Architecture preset in `nextgpt.encoders.imagebind.ARCHS` ("huge" or "tiny")."""
    embed_dim: int = 1024
    """Width of the joint embedding space (1024 for ImageBind-huge)."""
    placement: Placement = field(default_factory=Placement)
    model_id: str = "imagebind-huge"
    """Names the weights in cache keys: change it whenever the weights change."""

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        _check(self.embed_dim > 0, f"encoder embed_dim={self.embed_dim} must be positive")


@dataclass
class LoRAConfig:
    """LoRA on the LLM's attention projections (released checkpoint: r=32, alpha=32, dropout 0.1)."""

    r: int = 32
    """Rank of the low-rank update."""
    alpha: int = 32
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.1
    """Dropout on the LoRA input during training (inactive at inference)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        _check(self.r > 0, f"lora r={self.r} must be positive")
        _check(0.0 <= self.dropout < 1.0, f"lora dropout={self.dropout} must be in [0, 1)")


@dataclass
class LLMConfig:
    """The Vicuna base model and how prompts and signal tokens look."""

    base_dir: Path
    """Hugging Face Llama directory (config.json, weights, tokenizer) of the *base* model."""
    signal_layout: Literal["legacy", "v1.5"] = "legacy"
    """Which signal tokens to add: legacy `[IMG0]..` (32038 vocab) or v1.5 `<image_00>..` (32036)."""
    prompt_format: Literal["legacy", "v1.5"] = "legacy"
    """`### Human: ... ### Assistant:` (legacy) or Vicuna v1 `USER: ... ASSISTANT:` (v1.5)."""
    lora: LoRAConfig | None = field(default_factory=LoRAConfig)
    """LoRA shape in the delta checkpoint; None when the checkpoint carries no LoRA."""
    placement: Placement = field(default_factory=Placement)
    max_context: int = 2048
    """Prompt plus generated tokens may not exceed this."""

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        _check(self.signal_layout in ("legacy", "v1.5"), f"signal_layout={self.signal_layout!r}")
        _check(self.prompt_format in ("legacy", "v1.5"), f"prompt_format={self.prompt_format!r}")
        _check(self.max_context > 0, f"max_context={self.max_context} must be positive")


@dataclass
class InputProjectorConfig:
    """Maps encoder embeddings into the LLM's input space."""

    kind: Literal["linear", "group"] = "linear"
    """"linear": 1 token per input (legacy). "group": patch tokens -> `num_tokens` tokens (v1.5)."""
    in_dim: int = 1024
    out_dim: int = 4096
    num_tokens: int = 1
    """LLM tokens per input medium (1 for linear, 8 for group)."""

    def __post_init__(self) -> None:
        _check(self.kind in ("linear", "group"), f"input projector kind={self.kind!r}")
        _check(self.kind == "group" or self.num_tokens == 1, "a linear input projector makes 1 token")


@dataclass
class OutputProjectorConfig:
    """One modality's transformer output projector (design 1.4)."""

    in_dim: int = 4096
    """LLM hidden size."""
    num_signal_tokens: int = 4
    """Signal tokens in this modality's span (image 4, video 24, audio 8)."""
    d_model: int = 512
    nhead: int = 4
    num_encoder_layers: int = 4
    num_decoder_layers: int = 4
    dim_feedforward: int = 2048
    num_queries: int = 77
    """Q: rows of the produced conditioning (77 for SD/Zeroscope, 1 for AudioLDM)."""
    out_dim: int = 768
    """D_out: width of the decoder's text-encoder embedding (768 SD1.5, 1024 Zeroscope, 512 CLAP)."""
    normalize: bool = False
    """L2-normalise the output (AudioLDM does not normalise embeddings passed to it)."""

    def __post_init__(self) -> None:
        _check(self.d_model % self.nhead == 0, f"d_model={self.d_model} not divisible by nhead={self.nhead}")
        for name in ("in_dim", "num_signal_tokens", "d_model", "num_queries", "out_dim"):
            _check(getattr(self, name) > 0, f"output projector {name}={getattr(self, name)} must be positive")


@dataclass
class DecodeDefaults:
    """Default diffusion settings of one decoder; a request may override each."""

    steps: int = 50
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512
    num_frames: int = 24
    """Video only."""
    fps: int = 8
    """Video only: frames per second of the written MP4."""
    audio_seconds: float = 9.0
    """Audio only."""
    max_pixel_steps: int = MAX_PIXEL_STEPS
    """Budget of one image or video decode: steps x height x width (x num_frames for video) may not exceed
    it (a request over it is refused with INVALID_ARGUMENT / HTTP 400). Not a request option: set it in
    the profile (`decoders.video.defaults.max_pixel_steps`)."""

    def __post_init__(self) -> None:
        _check(1 <= self.steps <= MAX_STEPS, f"steps={self.steps} must be in [1, {MAX_STEPS}]")
        _check(self.guidance_scale >= 0, f"guidance_scale={self.guidance_scale} must be >= 0")
        _check(self.height % 8 == 0 and self.width % 8 == 0, f"size {self.height}x{self.width}: use /8")
        # Upper bounds keep one request from exhausting a decoder's memory.
        for name, value in (("height", self.height), ("width", self.width)):
            _check(8 <= value <= MAX_SIDE, f"{name}={value} must be in [8, {MAX_SIDE}]")
        _check(
            1 <= self.num_frames <= MAX_FRAMES, f"num_frames={self.num_frames} must be in [1, {MAX_FRAMES}]"
        )
        _check(1 <= self.fps <= 60, f"fps={self.fps} must be in [1, 60]")
        _check(
            0 < self.audio_seconds <= MAX_AUDIO_SECONDS,
            f"audio_seconds={self.audio_seconds} must be in (0, {MAX_AUDIO_SECONDS}]",
        )
        _check(self.max_pixel_steps >= 1, f"max_pixel_steps={self.max_pixel_steps} must be at least 1")

    def pixel_steps(self, modality: Modality) -> int:
        """What one decode of `modality` costs in the budget's unit: steps x height x width (x frames)."""
        if modality not in PIXEL_STEP_MODALITIES:
            return 0
        frames = self.num_frames if OUTPUTS[modality].frames else 1
        return self.steps * self.height * self.width * frames

    def check_budget(self, modality: Modality) -> None:
        """Raise ConfigError when one `modality` decode with these settings is over `max_pixel_steps`."""
        cost = self.pixel_steps(modality)
        _check(
            cost <= self.max_pixel_steps,
            f"{describe_pixel_steps(self, modality)} = {cost} is over the budget of {self.max_pixel_steps} "
            "steps x pixels x frames per decode (max_pixel_steps); lower steps, height, width"
            + (" or num_frames" if OUTPUTS[modality].frames else ""),
        )


def describe_pixel_steps(settings: DecodeDefaults, modality: Modality) -> str:
    """ "steps x height x width [x num_frames]" with the values, for error messages."""
    text = f"steps x height x width = {settings.steps} x {settings.height} x {settings.width}"
    if OUTPUTS[modality].frames:
        text = text.replace("width =", "width x num_frames =") + f" x {settings.num_frames}"
    return text


@dataclass
class DecoderConfig:
    """One modality's diffusion decoder."""

    pipeline_dir: Path
    """diffusers pipeline directory (model_index.json + components)."""
    placement: Placement = field(default_factory=Placement)
    offload: bool = False
    """Keep the pipeline on CPU between requests and move it to `placement.device` while it runs."""
    defaults: DecodeDefaults = field(default_factory=DecodeDefaults)

    def __post_init__(self) -> None:
        self.pipeline_dir = Path(self.pipeline_dir)


@dataclass
class ProfileConfig:
    """Every component of one deployment and its local path."""

    name: str
    encoder: EncoderConfig
    llm: LLMConfig
    input_projector: InputProjectorConfig
    output_projectors: dict[Modality, OutputProjectorConfig]
    decoders: dict[Modality, DecoderConfig]
    delta_checkpoint: Path | None
    """NExT-GPT delta (`pytorch_model.pt`): input projector, new token rows, LoRA, output projectors."""
    projector_placement: Placement = field(default_factory=Placement)
    """Device of the input and output projectors (next to the LLM by default)."""
    description: str = ""

    def __post_init__(self) -> None:
        if self.delta_checkpoint is not None:
            self.delta_checkpoint = Path(self.delta_checkpoint)
        _check(set(self.output_projectors) == set(MODALITIES), "need an output projector per modality")
        _check(set(self.decoders) == set(MODALITIES), "need a decoder per modality")
        _check(
            self.input_projector.in_dim == self.encoder.embed_dim,
            f"input projector in_dim={self.input_projector.in_dim} != encoder embed_dim="
            f"{self.encoder.embed_dim}",
        )

    def paths(self) -> dict[str, Path]:
        """Every file or directory the profile needs, by component name."""
        found = {"encoder": self.encoder.checkpoint, "llm": self.llm.base_dir}
        if self.delta_checkpoint is not None:
            found["delta"] = self.delta_checkpoint
        for modality, dec in self.decoders.items():
            found[f"decoder.{modality}"] = dec.pipeline_dir
        return found

    def missing_paths(self) -> dict[str, Path]:
        return {name: p for name, p in self.paths().items() if not p.exists()}

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class DecodeOptions:
    """Per-request diffusion settings for one modality; None means the decoder's default."""

    steps: int | None = None
    guidance_scale: float | None = None
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    audio_seconds: float | None = None

    def resolve(self, defaults: DecodeDefaults) -> DecodeDefaults:
        """Merge over the decoder defaults; the result validates itself."""
        merged = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return dataclasses.replace(defaults, **merged)


@dataclass
class SamplingOptions:
    """How the LLM picks its tokens: all the decode loop reads of a request (`nextgpt.llm`, the LLM
    service). `GenerationOptions` extends it with what the rest of the flow reads."""

    max_new_tokens: int = 246
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 0.01
    seed: int | None = None
    """Seeds LLM sampling and every diffusion call: the same request gives the same bytes."""

    def __post_init__(self) -> None:
        _check(1 <= self.max_new_tokens <= 4096, f"max_new_tokens={self.max_new_tokens} not in [1, 4096]")
        _check(self.temperature >= 0, f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        _check(0 < self.top_p <= 1, f"top_p={self.top_p} must be in (0, 1]")

    def sampling(self) -> SamplingOptions:
        """Only the sampling fields (what goes to the LLM service)."""
        return SamplingOptions(self.max_new_tokens, self.temperature, self.top_p, self.seed)


@dataclass
class GenerationOptions(SamplingOptions):
    """Options of one `NextGPT.generate` call: the LLM's sampling, the requested outputs, the adapter
    and the diffusion settings per modality."""

    modalities: tuple[str, ...] = ("text",)
    """Requested outputs, like OpenAI's `modalities`; text is always one (added when missing). A listed
    image/video/audio is guaranteed: when the model does not emit that span, it is made to (constrained
    continuation)."""
    max_media_per_modality: int = 1
    """Spans decoded per modality; further spans are reported in warnings and skipped."""
    image: DecodeOptions = field(default_factory=DecodeOptions)
    video: DecodeOptions = field(default_factory=DecodeOptions)
    audio: DecodeOptions = field(default_factory=DecodeOptions)
    max_pixel_steps: int = MAX_PIXEL_STEPS
    """Budget of the whole request: for each requested image/video modality, max_media_per_modality x
    steps x height x width (x num_frames), summed; options left unset count at `DecodeDefaults()` (real
    sizes). Over it, the request is refused (HTTP 400 / INVALID_ARGUMENT). Clients cannot change it (REST
    and gRPC do not carry it); code that embeds `NextGPT` may."""

    lora: str | None = None
    """LoRA adapter name; None means the profile's default adapter (the delta checkpoint's LoRA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.modalities = tuple(dict.fromkeys(("text", *self.modalities)))
        _check(0 <= self.max_media_per_modality <= 8, "max_media_per_modality must be in [0, 8]")
        unknown = set(self.modalities) - {"text", *MODALITIES}
        _check(not unknown, f"modalities {sorted(unknown)} unknown; use text, image, video, audio")
        self.check_budgets()

    def check_budgets(self, defaults: DecodeDefaults | None = None) -> None:
        """Each modality's options within its per-decode budget, and the requested media within the
        request's `max_pixel_steps`; unset options count at `defaults` (`DecodeDefaults()`). Ranges are
        left to `DecodeOptions.resolve` (the gateway's `check_options`, the decoders)."""
        base = defaults or DecodeDefaults()
        total, parts = 0, []
        for modality in MODALITIES:
            try:
                settings = self.decode_options(modality).resolve(base)
            except ConfigError:
                continue  # out of range: `check_options` / the decoder names it (options.<modality>: ...)
            try:
                settings.check_budget(modality)
            except ConfigError as exc:
                raise ConfigError(f"{modality}: {exc}") from None
            if modality in self.modalities and modality in PIXEL_STEP_MODALITIES:
                total += self.max_media_per_modality * settings.pixel_steps(modality)
                cost = settings.pixel_steps(modality)
                parts.append(
                    f"{modality} {self.max_media_per_modality} x {cost} "
                    f"({describe_pixel_steps(settings, modality)})"
                )
        _check(
            total <= self.max_pixel_steps,
            f"the requested media cost {' + '.join(parts)} = {total} steps x pixels x frames, over the "
            f"request budget of {self.max_pixel_steps} (max_pixel_steps); lower steps, size, num_frames or "
            "max_media_per_modality",
        )

    @property
    def requested_media(self) -> list[Modality]:
        return [m for m in MODALITIES if m in self.modalities]

    def decode_options(self, modality: Modality) -> DecodeOptions:
        return getattr(self, modality)
