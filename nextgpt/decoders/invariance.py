"""Batch invariance: an item decodes to the same bits alone or inside a batch of any size, on the CPU.

Every row of a batch gets its own seed, but that alone does not make a row's output independent of the
batch: a few CPU kernels pick their algorithm by the batch size, and two algorithms sum in different
orders (~1e-6 apart, enough to flip PNG levels, WAV steps and MP4 macroblocks). Found with torch 2.13
(MKL sgemm, oneDNN, one thread) on the tiny pipelines by comparing every module's output for an item
alone and inside a batch of 3, then checked end to end up to batch 16
(`tests/nextgpt/decoders/test_batch_invariance.py`):

- `F.linear` with 1-3 rows takes another kernel than with >= 4 rows (rows of >= 4 are computed alike
  whatever their count), and a strided input that folds into a transposed matrix another still. Hit:
  the timestep / class-embedding MLPs and every resnet's `time_emb_proj` (2 * B guidance rows).
- oneDNN convolutions with batch 1 take another kernel than with batch >= 2. Hit: the VAE decoder and
  the HiFi-GAN vocoder, whose batch is B (1 for a lone image or sound).
- 1x1 convolutions and Zeroscope's temporal (3, 1, 1) convolutions run a per-sample gemm below batch 16
  and oneDNN from 16 on. Hit: transformer proj_in / proj_out, resnet shortcuts, the VAE's
  post_quant_conv, every temporal conv of the 3D UNet (batch 2 * B).
- Group norm has a channels-last kernel; the VAE's attention block hands it channels-last strides at
  batch >= 2 but not at batch 1.

Attention (SDPA), layer norm, softmax, activations and the schedulers were bit-identical between batch
sizes. `make_batch_invariant` moves each affected layer to one algorithm for all batch sizes, changing
only what it hands to the kernels:

- linear layers get a row-major matrix of at least `MIN_GEMM_ROWS` rows (zero rows, sliced off again);
- 1x1 convolutions always take torch's per-sample gemm (`thnn_conv2d`, what nn.Conv2d ran below 16);
- (k, 1, 1) convolutions run as a (k, 1) 2D oneDNN convolution over (frames, pixels) (the same bits as
  oneDNN's 3D one), and every other convolution pads a batch of 1 to 2;
- group norms get contiguous (NCHW) inputs.

The layers keep their classes' parents and their weights, so state dicts and `from_pretrained` are
unchanged. The cost is ~10 ms on a lone tiny image or sound (mostly the VAE at batch 2), nothing in a
batch. On CUDA, cuBLAS / cuDNN also choose kernels by shape; this module does not address that, so the
decoders apply it on the CPU only.

`share_guidance_halves` is the other half of making batches cheap: modules that see only the latents and
the timestep compute once for both classifier-free-guidance halves. `project_spans` keeps the output
projector batch-invariant too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nextgpt.projectors.output import OutputProjector

logger = logging.getLogger(__name__)

SMALL_GEMM_ROWS = 4
"""Measured (AMD EPYC, AVX2, MKL): `F.linear` computes a row alike for every row count >= 4; 1-3 rows take
another kernel."""

MIN_GEMM_ROWS = 16
"""Rows a linear layer's matrix multiply gets at least: SMALL_GEMM_ROWS with room for wider SIMD kernels
on other CPUs; costs nothing measurable on the few small layers it pads."""

MIN_CONV_BATCH = 2
"""Batch a oneDNN convolution gets at least (batch 1 takes its own kernel)."""


class InvariantLinear(nn.Linear):
    """`nn.Linear` whose matrix multiply always has >= MIN_GEMM_ROWS rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return padded_linear(x, self.weight, self.bias)


def padded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` as one row-major (rows, K) matrix multiply of >= MIN_GEMM_ROWS rows.

    Row-major always: a strided input that happens to fold into a transposed matrix (e.g. when the batch
    is 1) would otherwise reach the gemm transposed, and sum in another order."""
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    if rows >= MIN_GEMM_ROWS and x.is_contiguous() or rows == 0:
        return F.linear(x, weight, bias)  # folds to the same (rows, K) gemm as below
    flat = x.reshape(rows, k).contiguous()  # (R, K)
    if rows < MIN_GEMM_ROWS:
        flat = torch.cat([flat, flat.new_zeros(MIN_GEMM_ROWS - rows, k)])  # (MIN, K)
    out = F.linear(flat, weight, bias)[:rows]  # (R, N)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _pad_batch(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(x contiguous with batch >= MIN_CONV_BATCH, the original batch)."""
    batch = x.shape[0]
    x = x.contiguous()
    if batch >= MIN_CONV_BATCH:
        return x, batch
    return torch.cat([x, x.new_zeros(MIN_CONV_BATCH - batch, *x.shape[1:])]), batch


def _conv(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`forward(x)` on a contiguous batch of >= MIN_CONV_BATCH, cut back to x's batch."""
    if x.shape[0] >= MIN_CONV_BATCH and x.is_contiguous():
        return forward(x)
    padded, batch = _pad_batch(x)
    return forward(padded)[:batch]


class InvariantGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` on a contiguous (NCHW) input: its channels-last kernel sums in another order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


class InvariantConv1d(nn.Conv1d):
    """`nn.Conv1d` that never runs oneDNN at batch 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _conv(super().forward, x)


class InvariantConvTranspose1d(nn.ConvTranspose1d):
    """`nn.ConvTranspose1d` that never runs oneDNN at batch 1."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        parent = super().forward
        return _conv(lambda padded: parent(padded, output_size), x)


# Torch's per-sample gemm for 1x1 convolutions (what nn.Conv2d runs below batch 16): the same bits for a
# sample whatever the batch, and faster than oneDNN at these widths (7 us vs 7 us at batch 2, 29 us vs
# 93 us at batch 32, 16 channels at 8x8).
_thnn_conv2d: Callable[..., torch.Tensor] | None = getattr(torch._C._nn, "thnn_conv2d", None)


class InvariantConv2d(nn.Conv2d):
    """`nn.Conv2d`: 1x1 kernels by a per-sample gemm at every batch, others never at batch 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_pointwise(self):
            return _conv(super().forward, x)
        if _thnn_conv2d is not None:
            return _thnn_conv2d(x.contiguous(), self.weight, (1, 1), self.bias, (1, 1), (0, 0))
        # Without that op: a linear layer over the pixels (rows = batch x pixels).
        rows = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        out = padded_linear(rows, self.weight.flatten(1), self.bias)  # (N, H, W, O)
        return out.permute(0, 3, 1, 2).contiguous()


class InvariantConv3d(nn.Conv3d):
    """`nn.Conv3d` for temporal (k, 1, 1) kernels: a (k, 1) 2D convolution over (frames, pixels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _is_temporal(self):
            return _conv(super().forward, x)
        n, c, frames, h, w = x.shape

        def temporal(flat: torch.Tensor) -> torch.Tensor:  # (N', C, F, H*W)
            return F.conv2d(
                flat,
                self.weight[..., 0],  # (O, C, k, 1)
                self.bias,
                stride=self.stride[:2],
                padding=self.padding[:2],
                dilation=self.dilation[:2],
                groups=self.groups,
            )

        out = _conv(temporal, x.reshape(n, c, frames, h * w))  # (N, O, F', H*W)
        return out.reshape(n, out.shape[1], out.shape[2], h, w)


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _is_temporal(conv: nn.Conv3d) -> bool:
    return (
        conv.kernel_size[1:] == (1, 1)
        and conv.stride[1:] == (1, 1)
        and conv.padding[1:] == (0, 0)
        and conv.dilation[1:] == (1, 1)
        and conv.padding_mode == "zeros"
    )


def project_spans(
    projector: OutputProjector, hidden: torch.Tensor, token_embeds: torch.Tensor
) -> torch.Tensor:
    """`projector(hidden, token_embeds)` for (B, N, H) spans, each span's result independent of B.

    The output projector's attention layers call `F.linear` directly (no module to switch) on B x N
    source rows and B x Q query rows. With N and Q >= SMALL_GEMM_ROWS (image: 4 x 77, video: 24 x 77)
    the batch is row-invariant as it is. The audio projector has Q = 1 query, so its B query rows would
    take the small-matrix gemm for B < 4 and another kernel above: there every span is projected alone,
    exactly as the in-process pipeline projects a lone span (1.2 ms a span on the tiny profile, 2% of an
    audio item's batched cost; padding instead would change the lone span's bits)."""
    cfg = projector.cfg
    if min(int(cfg.num_signal_tokens), int(cfg.num_queries)) >= SMALL_GEMM_ROWS or hidden.shape[0] == 1:
        return projector(hidden, token_embeds)
    return torch.cat([projector(h[None], e[None]) for h, e in zip(hidden, token_embeds, strict=True)])


_REPLACEMENTS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: InvariantLinear,
    nn.Conv1d: InvariantConv1d,
    nn.ConvTranspose1d: InvariantConvTranspose1d,
    nn.Conv2d: InvariantConv2d,
    nn.Conv3d: InvariantConv3d,
    nn.GroupNorm: InvariantGroupNorm,
}


def make_batch_invariant(module: nn.Module) -> int:
    """Switch every plain torch linear / conv / group-norm layer inside `module` to its batch-invariant
    subclass, in place (same weights, same state dict). Returns how many layers were switched. Layers of
    other classes (subclasses with a forward of their own, e.g. LoRA wrappers) are left alone, logged."""
    switched = 0
    for name, child in module.named_modules():
        replacement = _REPLACEMENTS.get(type(child))
        if replacement is not None and getattr(child, "padding_mode", "zeros") == "zeros":
            child.__class__ = replacement
            switched += 1
        elif isinstance(child, (nn.Linear, nn.modules.conv._ConvNd, nn.GroupNorm)) and not isinstance(
            child, tuple(_REPLACEMENTS.values())
        ):
            logger.warning("batch invariance: %s (%s) left as is", name, type(child).__name__)
    return switched


def _halves_equal(t: torch.Tensor, rows: int) -> bool:
    return torch.equal(t[: rows // 2], t[rows // 2 :])


def _halve(value: object, rows: int) -> object:
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
        return value[: rows // 2]
    return value


def _double(value: object) -> object | None:
    """[value; value] along rows, or None for an output this cannot repeat."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value, value])
    if isinstance(value, tuple) and all(isinstance(v, torch.Tensor) for v in value):
        return tuple(torch.cat([v, v]) for v in value)
    return None


def share_guidance_halves(module: nn.Module) -> None:
    """Run `module` once for both halves of a classifier-free-guidance batch when they are equal.

    The pipelines stack a batch as [unconditional rows; conditional rows] with the same latents in both
    halves, and until the first cross-attention (or class embedding) both halves carry equal values: a
    module there computes everything twice. Wrapped, it checks bit-exactly that its input and every other
    tensor argument with the same rows has two equal halves, runs on the first half and repeats the
    result; otherwise it runs as before. With batch-invariant kernels both ways give the same bits. Meant
    for modules that return a tensor or a tuple of tensors (others run both halves after all)."""
    if getattr(module, "_shares_guidance_halves", False):
        return
    inner = module.forward

    def forward(*args: object, **kwargs: object) -> object:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or not x.ndim or x.shape[0] % 2:
            return inner(*args, **kwargs)
        rows = x.shape[0]
        batched = [
            a
            for a in (*args, *kwargs.values())
            if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == rows
        ]
        if not all(_halves_equal(a, rows) for a in batched):
            return inner(*args, **kwargs)
        out = _double(
            inner(*(_halve(a, rows) for a in args), **{k: _halve(v, rows) for k, v in kwargs.items()})
        )
        if out is None:  # not a tensor or a tuple of tensors: never seen in the pipelines, but stay correct
            logger.warning("%s: output not a tensor (tuple); running both halves", type(module).__name__)
            return inner(*args, **kwargs)
        return out

    module.forward = forward
    # torch types nn.Module.__setattr__ for tensors and modules only; a plain flag is fine at runtime.
    module._shares_guidance_halves = True  # type: ignore[assignment]
