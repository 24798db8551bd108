"""Which medium does the LLM choose for a request in an unseen verb? (issue 12)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_routing.py            # the installed shapes profile
    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_routing.py --models-dir /tmp/other-models

Asks the `shapes` profile's LLM for world media in verbs and frames that no training dialogue uses
("Please render a low tone.", "Could you craft a red circle moving left?"): 8 captions per medium x 5
verbs x 3 frames, and the held-out plain-text prompts (`synthetic.HELDOUT_TEXT_QA`). A request is routed
right when the reply holds a complete span of the asked medium and none of another; a text prompt when
it holds no span. Only the LLM runs (no diffusion), greedy-like at the served defaults, so the whole
probe takes about a minute: `nextgpt eval-world` asks 8 distinct requests per medium, too few to tell
two builds' routing apart.
"""

from __future__ import annotations

import argparse
import os
import random
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from nextgpt.config import GenerationOptions  # noqa: E402
from nextgpt.pipeline import NextGPT  # noqa: E402
from nextgpt.profiles import load_profile  # noqa: E402
from nextgpt.training.data.synthetic import HELDOUT_TEXT_QA  # noqa: E402
from nextgpt.training.data.world_media import world_captions  # noqa: E402
from nextgpt.training.world_eval.alignment import llm_reply  # noqa: E402
from nextgpt.types import MODALITIES  # noqa: E402

VERBS = ("produce", "create", "render", "craft", "prepare")
"""Verbs no training dialogue uses (`synthetic.SHOW_PROMPTS`, `NEUTRAL_SHOW_PROMPTS`)."""
FRAMES = ("Please {verb} {caption}.", "Could you {verb} {caption}?", "{Verb} {caption}, please.")


def probe_captions(per_medium: int = 8) -> dict[str, list[str]]:
    """A fixed sample of each medium's world captions (every sound: there are 8)."""
    rng = random.Random(0)
    every = {m: world_captions(m) for m in MODALITIES}
    return {m: rng.sample(captions, min(per_medium, len(captions))) for m, captions in every.items()}


def reply_media(model: NextGPT, prompt: str) -> list[str]:
    """The media of the complete spans in the LLM's reply to `prompt` (no decoding)."""
    out = llm_reply(model, prompt, GenerationOptions(seed=0, max_new_tokens=40))
    return sorted({span.modality for span in out.spans})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="holds shapes/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = NextGPT.from_profile(load_profile("shapes", models_dir=args.models_dir, env={}))
    right, asked, by_verb, per_verb, wrong = Counter(), Counter(), Counter(), Counter(), Counter()
    for medium, captions in probe_captions().items():
        for caption in captions:
            for verb in VERBS:
                for frame in FRAMES:
                    got = reply_media(model, frame.format(verb=verb, Verb=verb.capitalize(), caption=caption))
                    ok = got == [medium]
                    right[medium] += ok
                    asked[medium] += 1
                    by_verb[verb] += ok
                    per_verb[verb] += 1
                    if not ok:
                        wrong[f"{medium} -> {'+'.join(got) or 'text'}"] += 1
    for prompt in HELDOUT_TEXT_QA:
        right["text"] += not reply_media(model, prompt)
        asked["text"] += 1
    media = sum(right[m] for m in MODALITIES), sum(asked[m] for m in MODALITIES)
    print(
        "routed right: " + ", ".join(f"{k} {right[k]}/{asked[k]}" for k in asked),
        f"(media {media[0]}/{media[1]})",
    )
    print("by verb: " + ", ".join(f"{v} {by_verb[v]}/{per_verb[v]}" for v in VERBS))
    print("wrong: " + (", ".join(f"{k} {n}" for k, n in wrong.most_common()) or "none"))


if __name__ == "__main__":
    main()
