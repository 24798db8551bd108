"""Does a trained video UNet read the direction in its caption? (issue 12)

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_video_direction.py out/train-world/video/pipeline

For one colour and shape, gives the pipeline's UNet one pure-noise clip (what sampling starts from), the
same for each of the four directions, takes its estimate of the clean clip (x0, from its noise or v
prediction), decodes it with the pipeline's VAE and prints the centroid track of the foreground (pixels
away from white) frame by frame. A UNet that reads the direction draws four different tracks (frame 0 of
"right" on the left, of "left" on the right); one that does not draws the same track four times,
whatever its sampled clips then do. The last line gives the largest distance between two directions'
centroids in any frame, in pixels (the world's clips start ~16 px apart at 32 px). At the smaller
timesteps the noise stands in for a noised clip, which it is not: only the first is a clean test (under
a zero-terminal-SNR schedule, where timestep 999 is pure noise).

Cheap (seconds): it runs one UNet call per noise level, no sampling loop.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth import (  # noqa: E402
    TextToVideoSDPipeline,
)

from nextgpt.training.data.world_media import DIRECTIONS, video_caption


@torch.no_grad()
def predicted_clips(
    pipe: TextToVideoSDPipeline, captions: list[str], timestep: int, frames: int, size: int, seed: int
) -> torch.Tensor:
    """(B, T, 3, H, W) in [0, 1]: the UNet's x0 estimate for each caption from one shared noise at
    `timestep`, decoded frame by frame."""
    cond, _ = pipe.encode_prompt(captions, "cpu", 1, False)
    latent = size // pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, frames, latent, latent)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).expand(
        len(captions), -1, -1, -1, -1
    )
    out = pipe.unet(noise, timestep, cond).sample
    pipe.scheduler.set_timesteps(1)  # `step` needs a schedule; its x0 estimate does not depend on it
    x0 = pipe.scheduler.step(out, timestep, noise).pred_original_sample  # noise or v prediction alike
    pixels = pipe.decode_latents(x0).transpose(1, 2)  # (B, C, T, H, W) in [-1, 1] -> (B, T, C, H, W)
    return ((pixels + 1) / 2).clamp(0, 1)


def centroid_tracks(clips: torch.Tensor) -> torch.Tensor:
    """(B, T, 2) x, y centroid of each frame's foreground, weighted by how far a pixel is from white."""
    weight = 1 - clips.min(dim=2).values  # (B, T, H, W)
    size = clips.shape[-1]
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    mass = weight.sum(dim=(-1, -2)).clamp_min(1e-6)
    return torch.stack([(weight * xs).sum(dim=(-1, -2)) / mass, (weight * ys).sum(dim=(-1, -2)) / mass], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", type=Path, help="a saved Zeroscope-format pipeline directory")
    parser.add_argument("--colour", default="red")
    parser.add_argument("--shape", default="circle")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 800, 500])
    parser.add_argument("--frames", type=int, default=4, help="frames of the clip (the shapes profile: 4)")
    parser.add_argument("--size", type=int, default=32, help="frame side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = TextToVideoSDPipeline.from_pretrained(args.pipeline)
    captions = [video_caption(args.colour, args.shape, d) for d in DIRECTIONS]
    spread = 0.0
    for timestep in args.timesteps:
        clips = predicted_clips(pipe, captions, timestep, args.frames, args.size, args.seed)
        tracks = centroid_tracks(clips)  # (4, T, 2)
        spread = max(spread, float(torch.cdist(tracks.transpose(0, 1), tracks.transpose(0, 1)).max()))
        for caption, track in zip(captions, tracks, strict=True):
            points = " ".join(f"({x:.0f},{y:.0f})" for x, y in track.tolist())
            print(f"t={timestep} {caption:<32} {points}")
    print(f"largest distance between two directions' centroids in one frame: {spread:.1f} px")


if __name__ == "__main__":
    main()
