"""Widths of the tiny profile. Shapes mirror the real model (token counts, 77 query rows, one audio row),
only the widths shrink. Each decoder gets its own conditioning width so that a mix-up of image (768) and
video (1024) targets, the reference's classic bug, shows up as a shape error in tests."""

SEED = 0

# LLM (Llama). vLLM's CPU attention needs head_dim in {32, 64, 80, ...}.
LLM_HIDDEN = 64
LLM_LAYERS = 2
LLM_HEADS = 2  # head_dim 32
LLM_INTERMEDIATE = 128
LLM_BASE_VOCAB = 1000  # before the signal tokens are added
LLM_MAX_POSITIONS = 2048
LORA_R = 8
LORA_ALPHA = 16

# ImageBind.
ENCODER_EMBED = 32

# Output projectors: d_model, heads, layers, feed-forward.
PROJ_D_MODEL = 32
PROJ_HEADS = 4
PROJ_LAYERS = 2
PROJ_FF = 64

# Decoder conditioning widths (real: 768 / 1024 / 512).
IMAGE_COND_DIM = 32
VIDEO_COND_DIM = 48
AUDIO_COND_DIM = 24

# Decode defaults of the tiny profile (fast on 2 CPU cores).
IMAGE_SIZE = 64
VIDEO_SIZE = 64
VIDEO_FRAMES = 8
AUDIO_SECONDS = 2.0
DIFFUSION_STEPS = 10
