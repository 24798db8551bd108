"""A tiny Vicuna-like *base* Llama, built locally: a real SentencePiece BPE tokenizer and a random
`LlamaForCausalLM`, saved the way a Hugging Face Vicuna-7B v0 directory is saved.

Like the real base it has no signal tokens: `NextGPTLanguageModel.load` adds them, so the tiny profile
walks exactly the code path of the released checkpoint (32000 -> 32038 there, 1000 -> 1038 here).
Everything is deterministic: two builds give byte-identical files.
"""

from __future__ import annotations

import io
import logging
import random
import shutil
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from tokenizers import AddedToken
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from nextgpt import tiny_profile as dims

logger = logging.getLogger(__name__)

STOP_SYMBOL = "###"
"""One token in the real LLaMA vocab (id 835); a user-defined symbol here so it is one token too."""

# Words the prompts and replies of NExT-GPT are made of, so that the tiny vocab has whole-word pieces
# for them (and byte fallback for everything else).
_ROLES = ["Human", "Assistant", "USER", "ASSISTANT"]
_VERBS = [
    "describe",
    "show",
    "generate",
    "create",
    "draw",
    "paint",
    "make",
    "give",
    "tell",
    "explain",
    "compose",
    "play",
    "imagine",
    "render",
    "sing",
    "film",
]
_MEDIA = [
    "image",
    "picture",
    "photo",
    "video",
    "clip",
    "movie",
    "audio",
    "sound",
    "music",
    "song",
    "voice",
    "noise",
    "scene",
    "frame",
    "sketch",
    "painting",
]
_COLOURS = [
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "black",
    "white",
    "grey",
    "brown",
    "gold",
    "silver",
    "colour",
    "colours",
    "colourful",
    "bright",
    "dark",
]
_SHAPES = [
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "shape",
    "shapes",
    "line",
    "dot",
    "cube",
    "sphere",
    "spiral",
    "round",
    "pointed",
]
_THINGS = [
    "cat",
    "dog",
    "bird",
    "horse",
    "fish",
    "cow",
    "sheep",
    "lion",
    "tiger",
    "car",
    "bus",
    "train",
    "plane",
    "boat",
    "bike",
    "tree",
    "flower",
    "river",
    "lake",
    "sea",
    "mountain",
    "city",
    "street",
    "house",
    "room",
    "garden",
    "forest",
    "beach",
    "sky",
    "cloud",
    "sun",
    "moon",
    "rain",
    "snow",
    "piano",
    "guitar",
    "drum",
    "violin",
    "child",
    "woman",
    "man",
    "people",
    "crowd",
    "table",
]
_ADJECTIVES = [
    "sunny",
    "rainy",
    "snowy",
    "windy",
    "quiet",
    "loud",
    "fast",
    "slow",
    "big",
    "small",
    "tall",
    "short",
    "old",
    "new",
    "happy",
    "sad",
    "calm",
    "busy",
    "soft",
    "gentle",
    "beautiful",
]
_ACTIONS = [
    "playing",
    "running",
    "flying",
    "singing",
    "talking",
    "walking",
    "sitting",
    "standing",
    "jumping",
    "swimming",
    "barking",
    "laughing",
    "dancing",
    "reading",
    "sleeping",
    "raining",
]
_PLACES = ["in", "on", "near", "under", "above", "beside", "behind", "across"]
_TIMES = ["night", "day", "morning", "evening", "sunset", "winter", "summer"]
_TEMPLATES = [
    "### Human: {verb} a {adj} {thing} {place} the {thing2}.",
    "### Assistant: Sure, here is a {media} of a {colour} {thing} {action} {place} the {thing2}.",
    "Human: Can you {verb} an {media} with {n} {colour} {shape}s?",
    "Assistant: This {media} shows a {adj} {thing} {action} at {time}.",
    "USER: What is in this {media}? ASSISTANT: A {colour} {shape} and a {adj} {thing}.",
    "The {thing} is {action} {place} the {colour} {thing2} in the {time}.",
    "Please {verb} the {media}: {n} {shape}s, {colour} and {colour2}, {action}.",
    "I hear the {media} of a {thing} {action}; it sounds {adj}, like {n} {thing2}s.",
]
_NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "1", "2", "24"]


def tiny_corpus(n_lines: int = 600) -> list[str]:
    """A fixed English corpus (its own seed, independent of the weight seed)."""
    rng = random.Random(1234)
    pick = rng.choice
    lines = []
    for _ in range(n_lines):
        lines.append(
            pick(_TEMPLATES).format(
                verb=pick(_VERBS),
                adj=pick(_ADJECTIVES),
                thing=pick(_THINGS),
                thing2=pick(_THINGS),
                place=pick(_PLACES),
                media=pick(_MEDIA),
                colour=pick(_COLOURS),
                colour2=pick(_COLOURS),
                shape=pick(_SHAPES),
                action=pick(_ACTIONS),
                time=pick(_TIMES),
                n=pick(_NUMBERS),
            )
        )
    # Every word at least once in plain running text, capitalised too.
    words = _ROLES + _VERBS + _MEDIA + _COLOURS + _SHAPES + _THINGS + _ADJECTIVES + _ACTIONS + _TIMES
    for i in range(0, len(words), 8):
        chunk = words[i : i + 8]
        lines.append(" ".join(chunk))
        lines.append(" ".join(w.capitalize() for w in chunk) + ".")
    return lines


def train_sentencepiece(vocab_size: int = dims.LLM_BASE_VOCAB) -> bytes:
    """Train a LLaMA-style SentencePiece BPE model and return its serialized bytes.

    Settings follow the LLaMA tokenizer (BPE, byte fallback, split digits, identity normalisation, no
    whitespace squashing). Training from an iterator into memory keeps file paths out of the model proto,
    and one thread keeps it bitwise deterministic.
    """
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()),
        model_writer=buffer,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        num_threads=1,
        user_defined_symbols=[STOP_SYMBOL],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    return buffer.getvalue()


def build_tiny_tokenizer(out_dir: Path) -> LlamaTokenizer:
    """Train the SentencePiece model, convert it to transformers' (fast) LlamaTokenizer, save both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_bytes = train_sentencepiece()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(model_bytes)
        # transformers v5 converts a bare tokenizer.model on load. Its SentencePiece extractor would make
        # the user-defined `###` a *special* token (dropped by skip_special_tokens); re-add it as an
        # ordinary added token instead, at its existing id.
        tokenizer = LlamaTokenizer.from_pretrained(
            tmp,
            add_bos_token=True,
            add_eos_token=False,
            extra_special_tokens=[],
            legacy=False,
            local_files_only=True,  # recorded in tokenizer_config.json: the same offline or not
        )
    tokenizer.add_tokens([AddedToken(STOP_SYMBOL, special=False, normalized=False)])
    if len(tokenizer) != dims.LLM_BASE_VOCAB:
        raise RuntimeError(f"tiny tokenizer has {len(tokenizer)} tokens, expected {dims.LLM_BASE_VOCAB}")
    tokenizer.save_pretrained(out_dir)
    # Real Vicuna directories carry the SentencePiece model as well (slow tokenizers, llama.cpp, ...).
    (out_dir / "tokenizer.model").write_bytes(model_bytes)
    return tokenizer


def tiny_llama_config(
    hidden: int = dims.LLM_HIDDEN,
    layers: int = dims.LLM_LAYERS,
    heads: int = dims.LLM_HEADS,
    intermediate: int = dims.LLM_INTERMEDIATE,
) -> LlamaConfig:
    """The tiny base's Llama config; the sizes default to the tiny profile's (`make train-world` builds a
    wider, deeper one on the same tokenizer: `foundation.llm_base.WORLD_LLM`)."""
    return LlamaConfig(
        vocab_size=dims.LLM_BASE_VOCAB,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=dims.LLM_MAX_POSITIONS,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        initializer_range=0.02,
    )


def build_tiny_llama(out_dir: Path, seed: int = dims.SEED, config: LlamaConfig | None = None) -> Path:
    """Write a tiny Vicuna-like base (tokenizer + random LlamaForCausalLM of `config`, by default
    `tiny_llama_config()`) to `out_dir` and return it."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    build_tiny_tokenizer(out_dir)
    config = config or tiny_llama_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.save_pretrained(out_dir)
    logger.info(
        "built tiny Llama base (%d tokens, hidden %d) at %s", config.vocab_size, config.hidden_size, out_dir
    )
    return out_dir
