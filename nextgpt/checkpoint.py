"""The NExT-GPT delta checkpoint (`pytorch_model.pt`): read, split by component, check, write back.

The released file is one flat OrderedDict (design 1.5) holding only what NExT-GPT trained: the input
projector, the embedding / LM-head matrices grown by the signal tokens, LoRA on the attention projections
and the three output projectors. Every key must belong to one of those parts: a checkpoint with full LLM
weights or another layout is refused with the keys named, never half-loaded.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nextgpt.config import ProfileConfig
from nextgpt.errors import CheckpointError, ModelNotReady
from nextgpt.modalities import OUTPUTS
from nextgpt.types import MODALITIES, Modality

logger = logging.getLogger(__name__)

INPUT_PROJ_PREFIX = "llama_proj."
LLM_PREFIX = "llama_model."
EMBED_KEY = "llama_model.base_model.model.model.embed_tokens.weight"
LM_HEAD_KEY = "llama_model.base_model.model.lm_head.weight"
LORA_PREFIX = "llama_model.base_model.model.model.layers."
OUTPUT_PREFIXES: dict[Modality, str] = {m: out.projector_prefix for m, out in OUTPUTS.items()}
# `layers.{i}.{self_attn|mlp}.{q_proj|...}.lora_{A|B}.{adapter}.weight`, relative to LORA_PREFIX.
_LORA_RE = re.compile(r"^(\d+)\.(\w+)\.(\w+)\.lora_([AB])\.(\w+)\.weight$")
SIGNAL_TOKEN_COUNTS = {"legacy": 38, "v1.5": 36}
"""New vocabulary rows per signal layout (design 1.2)."""
# Decoders known by their conditioning width, to say what a checkpoint was made for.
_DECODER_BY_WIDTH = {
    768: "SD 1.5 (CLIP ViT-L/14, 768)",
    1024: "SD 2 / Zeroscope (OpenCLIP ViT-H/14, 1024)",
    512: "AudioLDM (CLAP, 512)",
}


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown} ... ({len(keys)} in all)" if len(keys) > n else shown


@dataclass
class DeltaCheckpoint:
    """The delta split by component; keys are relative to the module each part loads into."""

    input_projector: dict[str, Tensor] = field(default_factory=dict)
    """`weight` (H, E) and `bias` (H,) for the legacy linear projector."""
    embed_tokens: Tensor | None = None
    """(V, H) full input-embedding matrix, base rows plus the signal-token rows."""
    lm_head: Tensor | None = None
    """(V, H) full output matrix."""
    lora: dict[str, Tensor] = field(default_factory=dict)
    """PeftModel state-dict keys: `base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`."""
    output_projectors: dict[Modality, dict[str, Tensor]] = field(default_factory=dict)
    """Per modality, keys relative to `OutputProjector`: `fc.weight`, `tfm.encoder...`, `query_embs`."""

    def _lora_items(self) -> list[tuple[re.Match[str], Tensor]]:
        prefix = LORA_PREFIX[len(LLM_PREFIX) :]
        found = []
        for key, t in self.lora.items():
            m = _LORA_RE.match(key[len(prefix) :]) if key.startswith(prefix) else None
            if m is None:
                raise CheckpointError(f"LoRA key {key!r} does not follow `{prefix}<i>.<block>.<proj>...`")
            found.append((m, t))
        return found

    @property
    def lora_rank(self) -> int | None:
        """r, from the first LoRA A matrix (r, in); None without LoRA."""
        for m, t in self._lora_items():
            if m.group(4) == "A":
                return int(t.shape[0])
        return None

    @property
    def lora_layers(self) -> int:
        """Number of LLM layers that carry LoRA."""
        return len({int(m.group(1)) for m, _ in self._lora_items()})

    @property
    def lora_target_modules(self) -> tuple[str, ...]:
        """Projection names with LoRA, e.g. ("q_proj", "k_proj", "v_proj", "o_proj")."""
        return tuple(dict.fromkeys(m.group(3) for m, _ in self._lora_items()))

    @property
    def vocab_size(self) -> int | None:
        for t in (self.embed_tokens, self.lm_head):
            if t is not None:
                return int(t.shape[0])
        return None

    @property
    def hidden_size(self) -> int | None:
        """LLM width, from the input projector's output or the embedding matrix."""
        if "weight" in self.input_projector and self.input_projector["weight"].dim() == 2:
            return int(self.input_projector["weight"].shape[0])
        for t in (self.embed_tokens, self.lm_head):
            if t is not None:
                return int(t.shape[1])
        return None


def split_delta(state: Mapping[str, Tensor]) -> DeltaCheckpoint:
    """Sort the released flat keys into components; any key no component claims is an error."""
    delta = DeltaCheckpoint()
    unknown: list[str] = []
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"delta checkpoint values must be tensors; not tensors: {_few(not_tensors)}. A training "
            "checkpoint (e.g. DeepSpeed `module`/`optimizer` entries) must be exported to a flat state dict"
        )
    for key, t in state.items():
        if key.startswith(INPUT_PROJ_PREFIX):
            delta.input_projector[key[len(INPUT_PROJ_PREFIX) :]] = t
        elif key == EMBED_KEY:
            delta.embed_tokens = t
        elif key == LM_HEAD_KEY:
            delta.lm_head = t
        elif key.startswith(LORA_PREFIX) and _LORA_RE.match(key[len(LORA_PREFIX) :]):
            delta.lora[key[len(LLM_PREFIX) :]] = t
        else:
            modality = next((m for m, p in OUTPUT_PREFIXES.items() if key.startswith(p)), None)
            if modality is None:
                unknown.append(key)
            else:
                delta.output_projectors.setdefault(modality, {})[key[len(OUTPUT_PREFIXES[modality]) :]] = t
    if unknown:
        hint = ""
        if any(k.startswith(LLM_PREFIX) for k in unknown):
            hint = (
                " Keys under `llama_model.` other than the embedding, LM head and LoRA look like full or "
                "merged LLM weights: load those as the base model and export only the delta."
            )
        understood = [INPUT_PROJ_PREFIX, EMBED_KEY, LM_HEAD_KEY, LORA_PREFIX + "<i>.*.lora_{A,B}.*.weight"]
        raise CheckpointError(
            f"delta checkpoint has {len(unknown)} key(s) of no known component: {_few(unknown)}. "
            f"Understood: {', '.join(understood + list(OUTPUT_PREFIXES.values()))}.{hint}"
        )
    for name, matrix in (("embed_tokens", delta.embed_tokens), ("lm_head", delta.lm_head)):
        if matrix is not None and matrix.dim() != 2:
            raise CheckpointError(f"delta {name} must be a (vocab, hidden) matrix, got {list(matrix.shape)}")
    ranks = {int(t.shape[0]) for m, t in delta._lora_items() if m.group(4) == "A"}
    if len(ranks) > 1:
        raise CheckpointError(f"LoRA A matrices have mixed ranks {sorted(ranks)}; expected one rank")
    return delta


def join_delta(delta: DeltaCheckpoint) -> OrderedDict[str, Tensor]:
    """Inverse of `split_delta`: the released flat layout, in the released module order."""
    out: OrderedDict[str, Tensor] = OrderedDict()
    if delta.embed_tokens is not None:
        out[EMBED_KEY] = delta.embed_tokens
    for key, t in delta.lora.items():
        out[LLM_PREFIX + key] = t
    if delta.lm_head is not None:
        out[LM_HEAD_KEY] = delta.lm_head
    for key, t in delta.input_projector.items():
        out[INPUT_PROJ_PREFIX + key] = t
    for modality in MODALITIES:
        for key, t in delta.output_projectors.get(modality, {}).items():
            out[OUTPUT_PREFIXES[modality] + key] = t
    return out


def load_delta(path: Path) -> DeltaCheckpoint:
    """Read a released-layout `pytorch_model.pt` (tensors only, onto the CPU) and split it."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotReady(
            f"NExT-GPT delta checkpoint {path} not found; place the released `pytorch_model.pt` there "
            "(or run `nextgpt init-tiny` for the tiny profile)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and weights_only errors all mean "not a state dict"
        raise CheckpointError(f"{path} is not a torch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict (a key -> tensor map)"
        )
    delta = split_delta(state)
    logger.info(
        "loaded delta %s: vocab=%s hidden=%s lora r=%s on %s layers, output projectors %s",
        path,
        delta.vocab_size,
        delta.hidden_size,
        delta.lora_rank,
        delta.lora_layers,
        sorted(delta.output_projectors),
    )
    return delta


def save_delta(delta: DeltaCheckpoint, path: Path) -> Path:
    """Write the released layout (what the legacy code and `load_delta` read); atomic via a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(join_delta(delta), tmp)
    tmp.replace(path)
    return path


def load_into(
    module: nn.Module, state: Mapping[str, Tensor], what: str, *, allow_missing: bool = False
) -> None:
    """Load `state` into `module`, refusing unexpected keys, shape mismatches and (unless `allow_missing`,
    e.g. LoRA into a full PeftModel) missing keys. Shapes are checked before anything is copied, so a
    refused load leaves the module untouched."""
    expected = module.state_dict()
    mismatched = [
        f"{k} expected {list(expected[k].shape)} got {list(t.shape)}"
        for k, t in state.items()
        if k in expected and expected[k].shape != t.shape
    ]
    unexpected = [k for k in state if k not in expected]
    missing = [] if allow_missing else [k for k in expected if k not in state]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if problems:
        raise CheckpointError(
            f"{what}: checkpoint does not fit the model ({'; '.join(problems)}); check that the checkpoint "
            "and the profile describe the same model"
        )
    module.load_state_dict(dict(state), strict=False)
    logger.debug("%s: loaded %d tensors", what, len(state))


def _base_config(profile: ProfileConfig) -> dict[str, Any] | None:
    """The base LLM's config.json when it is there; the checks that need it are skipped otherwise."""
    path = profile.llm.base_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _check_llm(
    delta: DeltaCheckpoint, profile: ProfileConfig, problems: list[str], require_all: bool
) -> None:
    width = profile.input_projector.out_dim
    n_signal = SIGNAL_TOKEN_COUNTS[profile.llm.signal_layout]
    base = _base_config(profile)
    for name, t in (("embedding", delta.embed_tokens), ("LM head", delta.lm_head)):
        if t is None:
            continue
        if t.shape[1] != width:
            problems.append(f"checkpoint's {name} is {t.shape[1]} wide but the profile's LLM is {width}")
        if base is not None and isinstance(base.get("vocab_size"), int):
            base_vocab = int(base["vocab_size"])
            if t.shape[0] != base_vocab + n_signal:
                problems.append(
                    f"checkpoint's {name} has {t.shape[0]} rows but the base model at {profile.llm.base_dir} "
                    f"has {base_vocab} + {n_signal} {profile.llm.signal_layout} signal tokens = "
                    f"{base_vocab + n_signal}: wrong base model (the released checkpoint needs Vicuna-7B v0, "
                    "LLaMA-1, vocab 32000) or wrong signal_layout"
                )
    if base is not None and isinstance(base.get("hidden_size"), int) and base["hidden_size"] != width:
        problems.append(
            f"the base model at {profile.llm.base_dir} is {base['hidden_size']} wide but the profile's input "
            f"projector writes {width}: wrong base model size"
        )
    lora, rank = profile.llm.lora, delta.lora_rank
    if lora is None and rank is not None:
        problems.append(
            f"checkpoint carries LoRA (r={rank}) but the profile has llm.lora: null; set llm.lora"
        )
    elif lora is not None and rank is None and require_all:
        problems.append(
            "the profile expects LoRA but the checkpoint has none (a stage-1/2 checkpoint?); "
            "set llm.lora: null"
        )
    elif lora is not None and rank is not None:
        if rank != lora.r:
            problems.append(f"checkpoint's LoRA rank is {rank} but the profile says llm.lora.r={lora.r}")
        targets = set(delta.lora_target_modules)
        if targets != set(lora.target_modules):
            problems.append(
                f"checkpoint has LoRA on {sorted(targets)} but the profile's llm.lora.target_modules are "
                f"{sorted(lora.target_modules)}"
            )
        if base is not None and isinstance(base.get("num_hidden_layers"), int):
            if delta.lora_layers != base["num_hidden_layers"]:
                problems.append(
                    f"checkpoint has LoRA on {delta.lora_layers} layers but the base model has "
                    f"{base['num_hidden_layers']}: wrong base model"
                )


def _check_input_projector(delta: DeltaCheckpoint, profile: ProfileConfig, problems: list[str]) -> None:
    cfg = profile.input_projector
    if not delta.input_projector:
        problems.append("checkpoint has no input projector (keys llama_proj.*)")
        return
    if cfg.kind != "linear":
        return  # the group projector's own layout is checked key by key in load_into
    w = delta.input_projector.get("weight")
    if w is None or w.dim() != 2 or set(delta.input_projector) != {"weight", "bias"}:
        problems.append(
            f"checkpoint's input projector has keys {sorted(delta.input_projector)}, not the linear layout "
            "(weight, bias); set input_projector.kind to match the checkpoint"
        )
        return
    if w.shape[1] != profile.encoder.embed_dim:
        problems.append(
            f"checkpoint's input projector takes {w.shape[1]}-d embeddings but the profile's encoder gives "
            f"{profile.encoder.embed_dim}: use the encoder the checkpoint was trained with"
        )
    if w.shape[0] != cfg.out_dim:
        problems.append(
            f"checkpoint's input projector writes {w.shape[0]}-d LLM embeddings but the profile's LLM is "
            f"{cfg.out_dim} wide: use the LLM size the checkpoint was trained with"
        )


def _check_output_projector(
    modality: Modality, state: dict[str, Tensor], profile: ProfileConfig, problems: list[str]
) -> None:
    cfg = profile.output_projectors[modality]
    fc, head, queries = state.get("fc.weight"), state.get("model.weight"), state.get("query_embs")
    if fc is None or head is None or queries is None:
        problems.append(f"checkpoint's {modality} projector lacks fc.weight, model.weight or query_embs")
        return
    if fc.shape[1] != cfg.in_dim:
        problems.append(
            f"checkpoint's {modality} projector reads {fc.shape[1]}-d hidden states but the profile's LLM "
            f"gives {cfg.in_dim}"
        )
    if fc.shape[0] != cfg.d_model:
        problems.append(
            f"checkpoint's {modality} projector has d_model {fc.shape[0]}, profile says {cfg.d_model}"
        )
    if queries.dim() != 3 or queries.shape[1] != cfg.num_queries:
        problems.append(
            f"checkpoint's {modality} projector makes {list(queries.shape)[1:2]} query rows but the "
            f"profile's decoder expects {cfg.num_queries}"
        )
    if head.shape[0] != cfg.out_dim:
        made_for = _DECODER_BY_WIDTH.get(int(head.shape[0]), f"a {head.shape[0]}-d decoder")
        problems.append(
            f"checkpoint's {modality} projector outputs {head.shape[0]} but the profile's decoder expects "
            f"{cfg.out_dim}: this checkpoint was made for {made_for}; use that decoder or retrain stage 2"
        )
    for side, want in (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers)):
        prefix = f"tfm.{side}.layers."
        got = len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})
        if got != want:
            problems.append(f"checkpoint's {modality} projector has {got} {side} layers, profile says {want}")


def check_against_profile(
    delta: DeltaCheckpoint, profile: ProfileConfig, *, require_all: bool = True
) -> None:
    """Raise CheckpointError listing every way the delta does not fit the profile, each with its fix.

    With `require_all=False` absent parts (e.g. no output projectors after stage 1) are not errors.
    """
    problems: list[str] = []
    if require_all or delta.input_projector:
        _check_input_projector(delta, profile, problems)
    _check_llm(delta, profile, problems, require_all)
    for modality in MODALITIES:
        state = delta.output_projectors.get(modality)
        if state is not None:
            _check_output_projector(modality, state, profile, problems)
        elif require_all:
            problems.append(
                f"checkpoint has no {modality} output projector (keys {OUTPUT_PREFIXES[modality]}*)"
            )
    if problems:
        raise CheckpointError(
            f"delta checkpoint does not fit profile {profile.name!r}:\n- " + "\n- ".join(problems)
        )
