"""The LLM service: input projector + Vicuna/LoRA with signal tokens behind an engine interface
(`python -m services.llm.server`)."""
