"""The ImageBind encoder component with the tiny random model (real loading path, real model code)."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt import tiny_profile as dims
from nextgpt.config import EncoderConfig
from nextgpt.encoders import imagebind as ib
from nextgpt.encoders import preprocess as pp
from nextgpt.errors import CheckpointError, InvalidInput, ModelNotReady
from nextgpt.tiny.imagebind import build_tiny_imagebind
from nextgpt.types import MediaItem
from tests.nextgpt.encoders.media_factory import indexed_frames, png_bytes, sine, video_bytes, wav_bytes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_imagebind(tmp_path_factory.mktemp("imagebind"))


@pytest.fixture(scope="module")
def encoder(checkpoint: Path) -> ib.ImageBindEncoder:
    return ib.ImageBindEncoder.load(_cfg(checkpoint))


def _cfg(path: Path, **kw) -> EncoderConfig:
    return EncoderConfig(checkpoint=path, arch="tiny", embed_dim=dims.ENCODER_EMBED, model_id="t", **kw)


def _items() -> dict[str, MediaItem]:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    return {
        "image": MediaItem("image", png_bytes(img), "image/png"),
        "audio": MediaItem("audio", wav_bytes(sine(1.3, 22050, channels=2), 22050), "audio/wav"),
        "video": MediaItem("video", video_bytes(indexed_frames(7)), "video/mp4"),
    }


def test_import_does_not_pull_torchvision_or_run_package_init() -> None:
    ib.imagebind_module()
    assert "torchvision" not in sys.modules and "torchaudio" not in sys.modules
    assert "imagebind.data" not in sys.modules


def test_drop_path_shim() -> None:
    torch.manual_seed(0)
    layer = ib._DropPath(0.5)
    x = torch.ones(64, 3)
    assert torch.equal(layer.eval()(x), x)
    dropped = layer.train()(x)
    assert set(dropped[:, 0].tolist()) == {0.0, 2.0}


def test_encode_each_modality(encoder: ib.ImageBindEncoder) -> None:
    assert encoder.embed_dim == dims.ENCODER_EMBED
    out = {m: encoder.encode(item) for m, item in _items().items()}
    for m, e in out.items():
        assert e.shape == (dims.ENCODER_EMBED,) and e.dtype == torch.float32 and torch.isfinite(e).all(), m
    # ImageBindModel.forward: images unit norm; clip averages of unit vectors <= 1; audio scaled by 20
    assert out["image"].norm().item() == pytest.approx(1.0, abs=1e-5)
    assert out["video"].norm().item() <= 1.0 + 1e-5
    assert 1.0 < out["audio"].norm().item() <= 20.0 + 1e-4
    for m, item in _items().items():
        assert encoder.encode(item, normalize=True).norm().item() == pytest.approx(1.0, abs=1e-5), m
    text = encoder.encode_batch("text", ["a dog barking", "a red car"], normalize=True)
    assert text.shape == (2, dims.ENCODER_EMBED)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_multi_clip_inputs_average_normalised_clip_embeddings(encoder: ib.ImageBindEncoder) -> None:
    """ImageBindModel.forward folds (B, S, ...) into B*S clips, normalises each, then means over S."""
    torch.manual_seed(0)
    video = torch.randn(15, 3, 2, 224, 224)
    got = encoder.encode_batch("video", [video])[0]
    with torch.inference_mode():
        per_clip = encoder.model({"vision": video.unsqueeze(1)})["vision"]  # (15, E): 15 items of 1 clip
    torch.testing.assert_close(per_clip.norm(dim=-1), torch.ones(15))
    torch.testing.assert_close(got, per_clip.mean(dim=0), atol=1e-5, rtol=1e-5)


def test_batch_matches_single(encoder: ib.ImageBindEncoder) -> None:
    torch.manual_seed(0)
    audio = [torch.randn(3, 1, 128, 204) for _ in range(3)]
    batch = encoder.encode_batch("audio", audio)
    single = torch.cat([encoder.encode_batch("audio", [a]) for a in audio])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)
    assert encoder.encode_batch("image", []).shape == (0, dims.ENCODER_EMBED)


def test_encode_batch_checks_inputs(encoder: ib.ImageBindEncoder) -> None:
    with pytest.raises(InvalidInput, match=r"shape \(3, 100, 100\), expected \(3, 224, 224\)"):
        encoder.encode_batch("image", [torch.zeros(3, 100, 100)])
    with pytest.raises(InvalidInput, match="modality 'depth' unknown"):
        encoder.encode_batch("depth", [torch.zeros(1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="strings"):
        encoder.encode_batch("text", [torch.zeros(3)])


def test_preprocess_item_shapes_and_mismatch() -> None:
    items = _items()
    assert pp.load_and_preprocess(items["image"]).shape == (3, 224, 224)
    assert pp.load_and_preprocess(items["audio"]).shape == (3, 1, 128, 204)
    assert pp.load_and_preprocess(items["video"]).shape == (15, 3, 2, 224, 224)
    wrong = MediaItem("video", items["image"].data, "image/png")
    with pytest.raises(InvalidInput, match="'image/png' is image"):
        pp.load_and_preprocess(wrong)
    for modality, mime in (("image", "image/png"), ("audio", "audio/wav"), ("video", "video/mp4")):
        with pytest.raises(InvalidInput, match=f"could not decode the {modality}") as info:
            pp.load_and_preprocess(MediaItem(modality, b"not a media file", mime))  # type: ignore[arg-type]
        assert "0x" not in str(info.value) and "<" not in str(info.value)  # no library repr reaches a client


def test_tokenizer() -> None:
    tokens = ib.tokenize(["hello world", "x " * 200])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.int64
    assert tokens[0, 0] == 49406 and tokens[0, 3] == 49407 and tokens[0, 4:].eq(0).all()
    assert tokens[1, -1] == 49407  # truncated to 76 tokens + end-of-text


def test_build_is_deterministic(tmp_path: Path, checkpoint: Path) -> None:
    again = build_tiny_imagebind(tmp_path / "a")
    other = build_tiny_imagebind(tmp_path / "b", seed=1)
    assert again.name == "imagebind_tiny.pth" and again.stat().st_size < 20 * 2**20
    a, b = torch.load(checkpoint, weights_only=True), torch.load(again, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.read_bytes() == checkpoint.read_bytes()
    c = torch.load(other, weights_only=True)
    assert not torch.equal(a["modality_heads.vision.2.weight"], c["modality_heads.vision.2.weight"])


def test_missing_key_raises_checkpoint_error(tmp_path: Path, checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    del state["modality_heads.audio.2.weight"]
    state["modality_trunks.vision.blocks.0.norm_1.weight"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        ib.ImageBindEncoder.load(_cfg(tmp_path / "bad.pth"))
    msg = str(err.value)
    assert "missing keys: modality_heads.audio.2.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "norm_1.weight: checkpoint (7,) vs model (32,)" in msg and "Likely cause" in msg


def test_missing_file_and_wrong_dims(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(ModelNotReady, match="nextgpt init-tiny"):
        ib.ImageBindEncoder.load(_cfg(tmp_path / "nope.pth"))
    with pytest.raises(CheckpointError, match="embed_dim=1024"):
        ib.ImageBindEncoder.load(EncoderConfig(checkpoint=checkpoint, arch="tiny", embed_dim=1024))


def test_wrong_arch_names_the_cause(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    narrow = {**ib.ARCHS["tiny"], "vision_embed_dim": 16}
    monkeypatch.setitem(ib.ARCHS, "narrow", narrow)
    cfg = EncoderConfig(checkpoint=checkpoint, arch="narrow", embed_dim=dims.ENCODER_EMBED)
    with pytest.raises(CheckpointError, match="another ImageBind size than arch='narrow'"):
        ib.ImageBindEncoder.load(cfg)


def test_huge_arch_matches_package_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    """ARCHS["huge"] is exactly what `imagebind_huge()` passes to the constructor (recorded, not built:
    building the 1.2 B-parameter model takes ~20 s)."""
    module = ib.imagebind_module()
    seen: dict = {}

    class Recorder:
        def __init__(self, **kwargs) -> None:
            seen.update(kwargs)

    monkeypatch.setattr(module, "ImageBindModel", Recorder)
    module.imagebind_huge(pretrained=False)
    assert seen == ib.ARCHS["huge"]


def test_the_timm_stand_in_does_not_break_diffusers_imported_after_it() -> None:
    """diffusers asks `importlib.util.find_spec("timm")`, which raised on a stand-in without a spec."""
    import subprocess
    import sys

    code = (
        "from nextgpt.encoders.imagebind import imagebind_module\n"
        "imagebind_module()\n"
        "from diffusers import StableDiffusionPipeline\n"
        "from diffusers.utils import is_timm_available\n"
        "assert not is_timm_available()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
