"""Which colour does the `shapes` profile give a clip asked for in other words? (issue 12)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_clip_wrappers.py --models-dir /work/build/models
    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_clip_wrappers.py --wrapper "Please film {}."

Asks for 12 world clips (a fixed sample of the captions) in each wrapper, makes them with the video
decoder and reads them with `nextgpt eval-world`'s classifiers: per wrapper, the share of clips in the
asked colour and direction and the colours drawn. A wrapper that pulls every clip to one colour names a
word the LLM took for the colour: seed 2's build drew 10 of 12 clips orange for "Please animate ...",
"Please annotate ..." and "Please an ..." and none for "Please film ..." or "Animate ...": the
tokenizer splits "animate" into "an im ate", and the world's dialogues put "an" only before "orange" in
a clip's caption (docs/training.md). About 2-3 minutes a wrapper set on one core.
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
from nextgpt.training.data.world_media import world_captions  # noqa: E402
from nextgpt.training.world_eval.end_to_end import Case, run_cases  # noqa: E402
from nextgpt.training.world_eval.score import evaluate_world_media  # noqa: E402
from nextgpt.training.world_eval.text import caption_attributes  # noqa: E402

WRAPPERS = (
    "Please animate {}.",
    "Please annotate {}.",
    "Please an {}.",
    "Please film {}.",
    "Please depict {}.",
    "Animate {}.",
)
"""`nextgpt eval-world`'s "Please animate", words that share its first token, and words that do not."""


def probe_wrapper(model: NextGPT, wrapper: str, captions: list[str]) -> tuple[dict[str, float], Counter[str]]:
    """Per-attribute accuracy of the clips asked for in `wrapper`, and the colours they came out in."""
    cases = [
        Case("text->video", wrapper.format(c), caption_attributes(c), seed=i) for i, c in enumerate(captions)
    ]
    options = GenerationOptions(max_new_tokens=48)
    pairs = [(case.expected, "" if got is None else got) for case, got, _ in run_cases(model, cases, options)]
    report = evaluate_world_media(pairs)
    return report.accuracy(), Counter(str(item.found.get("colour")) for item in report.items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="holds shapes/")
    parser.add_argument("--wrapper", action="append", help="a wrapper with {} for the caption (repeatable)")
    parser.add_argument("--clips", type=int, default=12, help="clips per wrapper")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = NextGPT.from_profile(
        load_profile("shapes", models_dir=args.models_dir, env={}), decoders=("video",)
    )
    captions = world_captions("video")
    random.Random(0).shuffle(captions)
    for wrapper in args.wrapper or WRAPPERS:
        accuracy, colours = probe_wrapper(model, wrapper, captions[: args.clips])
        print(
            f"{wrapper:28s} colour {accuracy.get('colour', 0):.0%}",
            f" direction {accuracy.get('direction', 0):.0%}  drawn {dict(colours.most_common())}",
            flush=True,
        )


if __name__ == "__main__":
    main()
