"""Stage 0 of the train demo: chat-tune a tiny base LLM on the shapes world's dialogues.

NExT-GPT starts from a *trained chat model* (Vicuna) and keeps it frozen. The tiny profile's Llama is
random, and a frozen random model cannot put more than ~0.35% probability on any ordinary token, so
decoding wanders and never reaches the `###` stop; only the trained signal rows are confident. This
module gives the demo what the real recipe has: it fine-tunes the whole tiny base as a causal LM on the
world's dialogues rendered in the legacy prompt format (`### Human: ...\\n### Assistant: ...\\n###`),
with output placeholders omitted (no signal tokens) and input placeholders dropped (no media), and saves
it as a Hugging Face directory (tokenizer copied) that the three NExT-GPT stages then use, frozen, as
their base (`llm.base_dir`). The `tiny` profile itself stays random (design: tiny models are random).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MARKERS = ("<image>", "<video>", "<audio>")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class BaseChatConfig:
    """Stage-0 settings (the defaults take well under a minute on 2 CPU cores for the tiny base)."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 16
    """Dialogues per step."""
    lr: float = 3e-3
    """AdamW peak learning rate (linear decay to 0 after a 5% warmup)."""
    seed: int = 0
    """Seeds the model's dropout-free training order and torch's generator."""
    zero_unseen_embeddings: bool = False
    """Zero the input embeddings of tokens that no dialogue holds (`zero_unseen_embeddings`; measured
    with `WorldConfig.filler_rate`; the `shapes` build's `llm_plan` sets it: docs/training.md)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def render_dialogue(conversations: list[dict[str, str]]) -> str:
    """One record's turns as legacy-format text, placeholders removed (as `build_prompt` renders it)."""
    parts: list[str] = []
    for turn in conversations:
        text = turn["value"]
        for marker in MARKERS:
            text = text.replace(marker, "")
        text = " ".join(text.split())
        if turn["from"] == "human":
            parts.append(("### Human: " if not parts else " Human: ") + text + "\n### Assistant:")
        else:
            parts.append(f" {text}\n###" if text else "\n###")
    return "".join(parts)


def dialogue_texts(instructions_json: Path) -> list[str]:
    """Every dialogue of an instructions file (conversations layout) rendered by `render_dialogue`."""
    records = json.loads(Path(instructions_json).read_text())
    return [render_dialogue(r["conversations"]) for r in records if r.get("conversations")]


def _batch(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, torch.Tensor]:
    rows = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def lm_loss(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, texts: list[str], batch_size: int = 64
) -> float:
    """Mean next-token CE over `texts` (token-weighted), for before/after figures."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        batch = _batch(tokenizer, texts[i : i + batch_size])
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    return total / max(1, count)


def zero_unseen_embeddings(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, texts: list[str]
) -> int:
    """Zero the input-embedding rows of the tokens that none of `texts` holds; returns how many.

    Stage 0 never updates those rows, so they keep their random initialisation, and the first RMSNorm
    scales each to full size: a word the world never uses ("create", "animate"'s "im ate") then pushes
    a random direction into every later position, a different one for each base seed, which moved the
    shapes LLM's answers to held-out phrasings by up to 25 points between seeds (docs/training.md). A
    zero row stays zero through the norm and the attention projections (no biases), so an unknown word
    is close to absent, as a trained model's rare word is close to neutral. The LM head is untouched."""
    seen = {token for text in texts for token in tokenizer(text, add_special_tokens=True)["input_ids"]}
    embeddings = torch.as_tensor(model.get_input_embeddings().weight)
    unseen = torch.tensor([i for i in range(len(embeddings)) if i not in seen], dtype=torch.long)
    with torch.no_grad():
        embeddings[unseen] = 0.0
    return len(unseen)


def chat_tune_base(base_dir: Path, texts: list[str], out_dir: Path, cfg: BaseChatConfig) -> dict[str, float]:
    """Fine-tune every weight of the HF Llama at `base_dir` on `texts`; save it to `out_dir`.

    Returns {"loss_before", "loss_after"} (mean CE over all `texts`), "first" / "last" (train loss of
    the first / last step), "steps" and "unseen_tokens_zeroed" (`zero_unseen_embeddings`).
    """
    if not texts:
        raise ValueError("stage 0 needs at least one dialogue")
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        before = lm_loss(model, tokenizer, texts)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        warmup = max(1, cfg.steps // 20)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min((s + 1) / warmup, max(0.0, (cfg.steps - s) / (cfg.steps - warmup + 1)))
        )
        rng = random.Random(cfg.seed)
        order: list[int] = []
        first = last = float("nan")
        model.train()
        bar = tqdm(range(cfg.steps), desc="stage 0 (chat-tune base)", unit="step")
        for step in bar:
            if len(order) < cfg.batch_size:
                extra = list(range(len(texts)))
                rng.shuffle(extra)
                order += extra
            picked, order = order[: cfg.batch_size], order[cfg.batch_size :]
            loss = model(**_batch(tokenizer, [texts[i] for i in picked])).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            last = loss.item()
            first = last if step == 0 else first
            bar.set_postfix(loss=f"{last:.3f}")
        after = lm_loss(model, tokenizer, texts)
        zeroed = zero_unseen_embeddings(model, tokenizer, texts) if cfg.zero_unseen_embeddings else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    logger.info(
        "stage 0: LM loss %.3f -> %.3f over %d dialogues; saved %s", before, after, len(texts), out_dir
    )
    return {
        "steps": cfg.steps,
        "first": first,
        "last": last,
        "loss_before": before,
        "loss_after": after,
        "unseen_tokens_zeroed": zeroed,
    }
