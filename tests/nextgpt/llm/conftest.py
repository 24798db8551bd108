"""Fixtures of the LLM tests: the tiny Vicuna-like base is built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nextgpt.config import LLMConfig
from nextgpt.llm.model import NextGPTLanguageModel
from nextgpt.tiny.llama import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "vicuna")


@pytest.fixture(scope="session")
def lm(tiny_llama_dir: Path) -> NextGPTLanguageModel:
    """Base + signal tokens, no LoRA. Tests must not modify its weights (use `fresh_lm` for that)."""
    torch.manual_seed(0)
    return NextGPTLanguageModel.load(LLMConfig(base_dir=tiny_llama_dir, lora=None))


@pytest.fixture
def fresh_lm(tiny_llama_dir: Path) -> NextGPTLanguageModel:
    torch.manual_seed(0)
    return NextGPTLanguageModel.load(LLMConfig(base_dir=tiny_llama_dir, lora=None))
