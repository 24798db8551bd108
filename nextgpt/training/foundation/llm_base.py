"""The `shapes` profile's base LLM before stage 0: a random Llama of its own size on the tiny profile's
tokenizer (issue 12). Stage 0 (`nextgpt.training.base_chat`) then chat-tunes it on the world's
dialogues; it is built here, with the other foundation builders, so the build needs nothing of the tiny
profile's folder."""

from __future__ import annotations

from pathlib import Path

from nextgpt.tiny.llama import build_tiny_llama, tiny_llama_config

WORLD_LLM: dict[str, int] = {"hidden": 128, "layers": 4, "heads": 4, "intermediate": 256}
"""Size of the `shapes` profile's base Llama (`tiny_llama_config`'s arguments; the tiny profile's is 64
wide and 2 deep, on the same tokenizer). Measured with the LLM stages alone on one build's parts (world
seed 0; LLM seeds 0 and 1; `nextgpt eval-world`, 2 x 12 prompts a task): replies to held-out pictures
name colour and shape in 83% / 83% (the tiny size: 38% / 38%, colour 50% / 46%), to clips 50% / 92%
(33% / 33%); the six tasks' sum 462 / 488 points (405 / 400), at about 2 times the tiny size's CPU.
Two layers of 128: 437 / 458 at 1.4 times (every "Tell me what you can hear." answered "A chord.").
More of the world's clips (256 instead of 64) for the tiny size instead: clips 4%."""


def build_world_llm_base(out_dir: Path, seed: int) -> Path:
    """A random `WORLD_LLM`-sized Llama with the tiny tokenizer in `out_dir` (deterministic for `seed`)."""
    return build_tiny_llama(out_dir, seed, tiny_llama_config(**WORLD_LLM))
