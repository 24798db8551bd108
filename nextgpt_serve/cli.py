"""The `nextgpt` command line: serving (up, demo, generate), models (init-tiny, profiles,
prepare-vicuna) and training (make-synthetic, precompute-targets, train, export-checkpoint, eval-world)."""

from __future__ import annotations

import json
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from nextgpt.errors import NextGPTError
from nextgpt.media.files import read_media_file, write_media
from nextgpt.types import MODALITIES, GenerateResult, Message, Modality

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _no_placeholder_for_flags() -> None:
    """typer's rich help prints a type placeholder for every option, `<bool>` after on/off flags (and
    --help) included; a flag takes no value, so it shows none here."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:  # ctx: typer's vendored click Context
        return None if self.is_flag else shown(self, ctx)

    # A deliberate patch of typer's method, which mypy refuses on principle.
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_placeholder_for_flags()
console = Console(stderr=True, soft_wrap=True)

ProfileOpt = Annotated[str | None, typer.Option("--profile", help="profile name (default: tiny)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML/TOML file overriding the profile")]
ModelsOpt = Annotated[Path | None, typer.Option("--models-dir", help="root of model dirs (default ./models)")]


class LLMEngine(StrEnum):
    """The cluster LLM service's `--engine`."""

    auto = "auto"
    hf = "hf"
    vllm = "vllm"


EngineOpt = Annotated[
    LLMEngine,
    typer.Option("--engine", help="LLM engine: auto = vllm on a GPU where it imports, else hf"),
]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool) -> None:
    """Our own progress bars cover loading; the libraries' per-file bars and deprecation notices
    (diffusers moved AudioLDM/TextToVideoSD under `deprecated/`) only add noise unless asked for.

    Set through their environment variables, read when (and only if) a command imports them: importing
    transformers or diffusers here would cost every command, `generate --server` included, seconds."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' loading bars follow it
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


@app.command("init-tiny")
def init_tiny_cmd(
    models_dir: Annotated[Path, typer.Argument(help="where to write models/tiny")] = Path("models"),
    force: Annotated[bool, typer.Option(help="rebuild even if a current build exists")] = False,
) -> None:
    """Write the tiny profile's model directories (random weights, real formats, fixed seed)."""
    from nextgpt.tiny.build import init_tiny

    with console.status(
        "building the tiny profile (random weights in the real formats; ~1 min the first time)"
    ):
        root = init_tiny(models_dir, force=force)
    console.print(f"tiny profile ready at [bold]{root}[/bold]")


@app.command("profiles")
def profiles_cmd(models_dir: ModelsOpt = None) -> None:
    """List the profiles and whether their files are present."""
    from nextgpt.profiles import BUILTIN_PROFILES, load_profile

    table = Table("profile", "component", "path", "present")
    for name in BUILTIN_PROFILES:
        profile = load_profile(name, models_dir=models_dir, env={})
        for component, path in profile.paths().items():
            table.add_row(name, component, str(path), "yes" if path.exists() else "[red]missing[/red]")
    Console().print(table)


@app.command("generate")
def generate_cmd(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="the user's text")],
    image: Annotated[list[Path] | None, typer.Option(help="input image (repeatable)")] = None,
    audio: Annotated[list[Path] | None, typer.Option(help="input audio (repeatable)")] = None,
    video: Annotated[list[Path] | None, typer.Option(help="input video (repeatable)")] = None,
    modalities: Annotated[
        str, typer.Option(help="outputs wanted, e.g. text,image (listed media are guaranteed)")
    ] = "text",
    out: Annotated[Path, typer.Option(help="directory for generated media")] = Path("out"),
    seed: Annotated[int | None, typer.Option(help="seed for sampling and diffusion")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 246,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 1.0,
    top_p: Annotated[float, typer.Option()] = 0.01,
    steps: Annotated[int | None, typer.Option(help="diffusion steps for every medium")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON result")] = False,
    server: Annotated[
        str | None,
        typer.Option(
            help="gateway URL to send the request to (default: NEXTGPT_SERVER, else a local cluster on "
            ":8000 when one answers, else the models load in this process)"
        ),
    ] = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="load the models here even if a cluster runs")
    ] = False,
    api_key: Annotated[
        str | None, typer.Option(help="API key for --server (default: NEXTGPT_API_KEY)")
    ] = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    models_dir: ModelsOpt = None,
) -> None:
    """Answer one prompt with optional media inputs; print the reply and write generated media.

    With a cluster running (`nextgpt up`) the request goes to its gateway and returns in well under a
    second on the tiny profile; otherwise the models load in this process first (10-20 s)."""
    from nextgpt.config import DecodeOptions, GenerationOptions

    inputs: tuple[tuple[Modality, list[Path] | None], ...] = (
        ("image", image),
        ("audio", audio),
        ("video", video),
    )
    try:
        media = [read_media_file(path, modality) for modality, paths in inputs for path in paths or []]
        decode = DecodeOptions(steps=steps)
        options = GenerationOptions(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
            image=decode,
            video=decode,
            audio=decode,
        )
        url = None if in_process else (server or os.environ.get("NEXTGPT_SERVER") or _local_gateway())
        if url:
            from nextgpt_serve import rest

            body = rest.chat_body(prompt, media, options, model="")
            key = api_key or os.environ.get("NEXTGPT_API_KEY")
            result = rest.chat(url, body, api_key=key)
            if not as_json:
                console.print(f"[dim]answered by the gateway at {url}[/dim]")
        else:
            from nextgpt.pipeline import NextGPT
            from nextgpt.profiles import load_profile

            resolved = load_profile(profile, config_file=config, models_dir=models_dir)
            model = NextGPT.from_profile(resolved, progress=not as_json)
            result = model.generate([Message("user", prompt, media)], options, progress=not as_json)
    except NextGPTError as exc:
        console.print(f"[red]error:[/red] {escape(safe_text(str(exc)))}")
        raise typer.Exit(2) from exc
    paths = write_media(result.media, out)
    if as_json:
        print(json.dumps(result_summary(result, paths), indent=2))
        return
    print(safe_text(result.text))
    for path in paths:
        console.print(f"wrote {path}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for error in result.errors:
        console.print(f"[red]{error.modality} failed:[/red] {error.message}")


@app.command("prepare-vicuna")
def prepare_vicuna_cmd(
    base: Annotated[Path, typer.Option(help="LLaMA-7B directory in Hugging Face format")],
    delta: Annotated[Path, typer.Option(help="Vicuna-7B v0 delta directory")],
    out: Annotated[Path, typer.Option(help="where to write Vicuna-7B v0")],
) -> None:
    """Apply the Vicuna v0 delta to LLaMA-7B (the base NExT-GPT 7b_tiva_v0 was trained on)."""
    from nextgpt.vicuna import apply_vicuna_delta

    try:
        apply_vicuna_delta(base, delta, out)
    except NextGPTError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"Vicuna written to [bold]{out}[/bold]")


@app.command("up")
def up_cmd(
    profile: ProfileOpt = None,
    models_dir: ModelsOpt = None,
    redis: Annotated[bool, typer.Option(help="start Debian's redis-server if installed")] = True,
    log_dir: Annotated[Path, typer.Option(help="where each process writes its log")] = Path("out/cluster"),
    engine: EngineOpt = LLMEngine.auto,
    supervise: Annotated[
        bool, typer.Option(help="restart a service that exits on its own (backoff 1 s, 2 s, .. 30 s)")
    ] = True,
    host: Annotated[
        str, typer.Option(help="interface of the gateway's REST and gRPC ports (backends stay on loopback)")
    ] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="the gateway's REST port (chat page, OpenAI API)")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="the gateway's gRPC port")] = 50051,
) -> None:
    """Start Redis, every service and the gateway locally; Ctrl-C stops them all cleanly."""
    import signal
    import threading

    from services.launcher import ClusterPorts, LocalCluster

    status = console.status("starting the cluster")

    def progress(ready: list[str], loading: list[str]) -> None:
        done = f" ({', '.join(ready)} ready)" if ready else ""
        status.update(f"loading models: {', '.join(loading)}{done}")

    cluster = LocalCluster(
        models_dir=models_dir,
        profile=profile,
        cluster_ports=ClusterPorts(gateway_http=port, gateway_grpc=grpc_port),
        log_dir=log_dir,
        use_redis=redis,
        extra_env={"NEXTGPT_GATEWAY_HOST": host},
        engine=engine.value,
        supervise=supervise,
        on_progress=progress,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with status:
        cluster.start()  # stops what it started if a service fails to come up
    try:
        table = Table("endpoint", "address")
        for name, url in cluster.describe().items():
            table.add_row(name, url)
        Console(width=max(Console().width, 110)).print(table)
        console.print("cluster is up; press Ctrl-C to stop")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        console.print("stopping...")
    finally:
        cluster.stop()


@app.command("demo")
def demo_cmd(
    out: Annotated[Path, typer.Option(help="directory for the demo's media")] = Path("out/demo"),
    in_process: Annotated[bool, typer.Option(help="run the model in this process, not the cluster")] = False,
    profile: ProfileOpt = None,
    models_dir: ModelsOpt = None,
    engine: EngineOpt = LLMEngine.auto,
) -> None:
    """Start the local cluster, send any-to-any requests over REST and gRPC, save the media."""
    from nextgpt_serve.demo import run_demo

    run_demo(out, profile=profile, models_dir=models_dir, in_process=in_process, engine=engine.value)


@app.command("make-synthetic")
def make_synthetic_cmd(
    out: Annotated[Path, typer.Argument(help="directory to write the shapes world into")],
    seed: Annotated[int, typer.Option(help="same seed, same files")] = 0,
    n_images: Annotated[int, typer.Option(help="image-caption pairs")] = 240,
    n_videos: Annotated[int, typer.Option(help="video-caption pairs")] = 64,
    n_audios: Annotated[int, typer.Option(help="audio-caption pairs")] = 64,
    n_instructions: Annotated[int, typer.Option(help="instruction dialogues")] = 320,
    n_heldout_images: Annotated[int, typer.Option(help="image captions kept out of training")] = 6,
) -> None:
    """Write the synthetic "shapes world" (media, caption pairs, instructions, held-out prompts)."""
    from nextgpt.training.data.synthetic import make_world
    from nextgpt.training.data.world_media import WorldConfig

    try:
        cfg = WorldConfig(
            seed=seed,
            n_images=n_images,
            n_videos=n_videos,
            n_audios=n_audios,
            n_instructions=n_instructions,
            n_heldout_images=n_heldout_images,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    summary = make_world(out, cfg)
    counts = ", ".join(f"{name} {n}" for name, n in summary["counts"].items())
    console.print(f"shapes world (seed {seed}) written to [bold]{out}[/bold]: {counts}")


@app.command("precompute-targets")
def precompute_targets_cmd(
    data: Annotated[Path, typer.Option("--data", help="data directory (pairs JSON + instructions.json)")],
    modality: Annotated[str, typer.Option(help="comma-separated modalities")] = "image,video,audio",
    batch_size: Annotated[int, typer.Option(help="captions per text-encoder call")] = 32,
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    models_dir: ModelsOpt = None,
) -> None:
    """Run each decoder's own text encoder over the data's captions once; write DIR/targets/."""
    from nextgpt.modalities import OUTPUTS
    from nextgpt.profiles import load_profile
    from nextgpt.training.data.targets import (
        check_target_dims,
        data_caption_sets,
        load_targets,
        precompute_targets,
        write_index,
    )

    names = [m.strip() for m in modality.split(",") if m.strip()]
    if not names or any(m not in MODALITIES for m in names):
        console.print(
            f"[red]error:[/red] --modality {modality!r}: use a comma-separated subset of {MODALITIES}"
        )
        raise typer.Exit(2)
    wanted = [m for m in names if m in MODALITIES]  # all of them (checked above), typed as modalities
    try:
        prof = load_profile(profile, config_file=config, models_dir=models_dir)
        sets = data_caption_sets(data)
        written: dict[Modality, Path] = {}
        for m in wanted:
            if not sets[m]:
                console.print(f"{m}: no captions in {data}, skipped")
                continue
            decoder = OUTPUTS[m].decoder_class().load(prof.decoders[m], text_only=True)  # no UNet, no VAE
            path = precompute_targets(sets[m], decoder, data / "targets", batch_size=batch_size)
            check_target_dims(load_targets(path), prof, m, source=str(path))
            written[m] = path
            console.print(f"{m}: {len(set(sets[m]))} captions -> [bold]{path}[/bold]")
    except (NextGPTError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if written:
        write_index(data / "targets", written)


@app.command("train")
def train_cmd(
    stage: Annotated[str, typer.Option(help="encoder (stage 1), decoder (stage 2) or instruct (stage 3)")],
    config: Annotated[Path, typer.Option("--config", help="training YAML (nextgpt.training.config)")],
    output_dir: Annotated[Path | None, typer.Option(help="overrides output_dir of the config")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the latest checkpoint in output_dir")] = False,
) -> None:
    """Train one NExT-GPT stage; writes metrics.jsonl, checkpoints, final/ and pytorch_model.pt."""
    from nextgpt.training.config import TrainConfig
    from nextgpt.training.runner import run_stage

    try:
        cfg = TrainConfig.from_yaml(config, stage=stage, output_dir=output_dir)
        summary = run_stage(cfg, resume=resume)
    except NextGPTError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(json.dumps({k: summary.get(k) for k in ("stage", "steps", "first", "last")}, indent=2))


@app.command("export-checkpoint")
def export_checkpoint_cmd(
    run: Annotated[Path, typer.Argument(help="a training run folder (or its final/)")],
    out: Annotated[Path, typer.Option(help="where to write the legacy pytorch_model.pt")],
    profile: ProfileOpt = None,
    config: ConfigOpt = None,
    models_dir: ModelsOpt = None,
) -> None:
    """Export a run's own-format checkpoint to the released legacy layout (pytorch_model.pt)."""
    from nextgpt.profiles import load_profile
    from nextgpt.training.export import export_legacy, load_run

    try:
        model = load_run(run, load_profile(profile, config_file=config, models_dir=models_dir))
        export_legacy(model, out)
    except NextGPTError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(f"wrote {out}")


@app.command("eval-world")
def eval_world_cmd(
    out: Annotated[Path, typer.Option(help="where to write eval-world.json and eval-world.md")] = Path(
        "out/eval-world"
    ),
    seeds: Annotated[str, typer.Option(help="comma-separated sampling / diffusion seeds")] = "0,1",
    items: Annotated[int, typer.Option(help="prompts per text->medium task and seed")] = 12,
    describe_items: Annotated[int, typer.Option(help="input media per medium->text task and seed")] = 48,
    tasks: Annotated[str, typer.Option(help="comma-separated tasks, e.g. text->image,image->text")] = "all",
    profile: Annotated[str | None, typer.Option("--profile", help="profile name (default: shapes)")] = None,
    config: ConfigOpt = None,
    models_dir: ModelsOpt = None,
    ask_media: Annotated[
        bool,
        typer.Option(
            "--ask-media",
            help="also name the output medium through the API (modalities), as a client may; the goals are"
            " for the model deciding alone",
        ),
    ] = False,
    world_seed: Annotated[
        int | None,
        typer.Option(
            help="seed of the world the model was built on, whose held-out picture combinations are asked"
            " (default: the seed models/shapes/manifest.json records, else 0)"
        ),
    ] = None,
) -> None:
    """Ask the shapes-world model held-out prompts of every task; score its media and replies with
    independent classifiers (colour, shape, motion, pitch); print and save the table."""
    from nextgpt.pipeline import NextGPT
    from nextgpt.profiles import load_profile, shapes_built
    from nextgpt.training.world_build import WorldBuildConfig, world_config
    from nextgpt.training.world_eval.end_to_end import TASKS, EvalWorldConfig, evaluate_world, markdown_table

    wanted = TASKS if tasks == "all" else tuple(t.strip() for t in tasks.split(",") if t.strip())
    unknown = set(wanted) - set(TASKS)
    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        seed_list = ()
    if unknown or not wanted or not seed_list or min(items, describe_items) < 1:
        console.print(
            f"[red]error:[/red] --tasks from {', '.join(TASKS)}; --seeds integers; "
            "--items and --describe-items >= 1"
        )
        raise typer.Exit(2)
    try:
        prof = load_profile(
            profile or (None if config else "shapes"), config_file=config, models_dir=models_dir
        )
        missing = prof.missing_paths()
        if missing:
            raise NextGPTError(
                f"profile {prof.name} lacks {', '.join(f'{k} ({v})' for k, v in missing.items())}; "
                "build the shapes profile with `make train-world`"
            )
        model = NextGPT.from_profile(prof, progress=True)
    except NextGPTError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    result = evaluate_world(
        model,
        EvalWorldConfig(
            seeds=seed_list,
            items=items,
            describe_items=describe_items,
            tasks=wanted,
            ask_media=ask_media,
            world=world_config(
                WorldBuildConfig(
                    seed=world_seed if world_seed is not None else shapes_built(models_dir).get("seed", 0)
                )
            ),
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval-world.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown_table(result)
    (out / "eval-world.md").write_text(table + "\n")
    Console().print(table)
    console.print(f"items and replies in [bold]{out / 'eval-world.json'}[/bold]")


def _local_gateway() -> str | None:
    """The gateway of a local cluster (`nextgpt up`), when one answers."""
    from nextgpt_serve.rest import DEFAULT_SERVER, server_answers

    return DEFAULT_SERVER if server_answers(DEFAULT_SERVER) else None


def safe_text(text: str) -> str:
    """The model's text for a terminal: control characters (an untrained model emits them) escaped, so
    they cannot move the cursor or change colours; newlines and tabs kept."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else ascii(ch)[1:-1] for ch in text)


def result_summary(result: GenerateResult, paths: list[Path]) -> dict[str, Any]:
    return {
        "text": result.text,
        "media": [{"modality": m.modality, "path": str(p)} for m, p in zip(result.media, paths, strict=True)],
        "errors": [{"modality": e.modality, "message": e.message} for e in result.errors],
        "warnings": result.warnings,
        "forced_modalities": result.forced_modalities,
        "finish_reason": result.finish_reason,
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens},
        "timings": result.timings,
    }


if __name__ == "__main__":
    app()
