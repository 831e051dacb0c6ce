"""A Conv1d computed as unfold + one matrix multiply: the same layer, faster on CPUs at policy sizes.

Diffusion Policy's UNet convolves short chunks (T = 16 down to 4) with many channels (up to 2048). For those
shapes oneDNN's direct convolution is far from the memory bound, and its backward pass is worse: measured on
this project's 2-core CPU (one thread), a 2048-channel kernel-5 layer on T = 4 took 41 ms forward at batch 1
as nn.Conv1d and 15 ms as unfold + matmul, and 2.5 s vs 0.7 s forward + backward at batch 64
(`python scripts/bench_policy_speed.py` measures the whole network). The layer keeps nn.Conv1d's parameters
and state-dict keys, so checkpoints are interchangeable, and falls back to nn.Conv1d for what it does not
cover (dilation, groups, padding modes other than zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Int8Weights:
    """Optional int8 copy of a layer's GEMM weight for CPU inference (`quantize_int8_`).

    At batch 1 the UNet is bound by reading its weights (65-250 M fp32 parameters per network evaluation);
    per-output-channel int8 weights with dynamically quantized activations (fbgemm's `linear_dynamic`) read a
    quarter of the bytes. Relative error per layer is about 2%; the success rates with and without it are in
    docs/results.md. Inference only: a layer refuses to train while it holds int8 weights.
    """

    packed: torch.Tensor | None = None

    def _pack(self, w2d: torch.Tensor, bias: torch.Tensor | None) -> None:
        w2d = w2d.detach().float().contiguous()
        scales = (w2d.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()
        zeros = torch.zeros(w2d.shape[0], dtype=torch.long)
        q = torch.quantize_per_channel(w2d, scales, zeros, 0, torch.qint8)
        b = None if bias is None else bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(q, b)

    def _int8_mm(self, x2d: torch.Tensor, training: bool) -> torch.Tensor:
        if training or x2d.requires_grad:
            raise RuntimeError("this layer holds int8 inference weights; call dequantize_(model) before training")
        return torch.ops.quantized.linear_dynamic(x2d.float().contiguous(), self.packed, True)


class MatmulConv1d(_Int8Weights, nn.Conv1d):
    """nn.Conv1d whose forward pads, unfolds the time axis and does one (B*T_out, C*k) x (C*k, O) GEMM."""

    def _fast_path(self) -> bool:
        return self.dilation == (1,) and self.groups == 1 and self.padding_mode == "zeros" \
            and not isinstance(self.padding, str)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fast_path() or x.ndim != 3:
            return super().forward(x)
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        b, c, _ = x.shape
        if pad:
            x = F.pad(x, (pad, pad))
        cols = x.unfold(2, k, stride)  # (B, C, T_out, k), a view
        t_out = cols.shape[2]
        cols = cols.permute(0, 2, 1, 3).reshape(b * t_out, c * k)
        if self.packed is not None:
            y = self._int8_mm(cols, self.training)
            return y.reshape(b, t_out, self.out_channels).transpose(1, 2)
        w = self.weight.reshape(self.out_channels, c * k)
        y = cols @ w.t() if self.bias is None else torch.addmm(self.bias, cols, w.t())
        return y.reshape(b, t_out, self.out_channels).transpose(1, 2)


class MatmulConvTranspose1d(_Int8Weights, nn.ConvTranspose1d):
    """nn.ConvTranspose1d as one GEMM and an overlap-add (F.fold): oneDNN has no fast path for the UNet's
    upsampling shapes on this CPU and falls back to `slow_conv_transpose2d` (14% of a batch-1 forward)."""

    def _fast_path(self) -> bool:
        return self.dilation == (1,) and self.groups == 1 and self.padding_mode == "zeros" \
            and self.output_padding == (0,)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None or not self._fast_path() or x.ndim != 3:
            return super().forward(x, output_size)
        (k,), (stride,), (pad,) = self.kernel_size, self.stride, self.padding
        b, c, t = x.shape
        # cols[b, o*k + j, t] = sum_c x[b, c, t] w[c, o, j]; output position t*stride + j receives it
        x2d = x.transpose(1, 2).reshape(b * t, c)
        if self.packed is not None:
            cols = self._int8_mm(x2d, self.training)
        else:
            cols = x2d @ self.weight.reshape(c, self.out_channels * k)
        cols = cols.reshape(b, t, self.out_channels * k).transpose(1, 2)
        full = (t - 1) * stride + k
        y = F.fold(cols, output_size=(1, full), kernel_size=(1, k), stride=(1, stride)).reshape(b, -1, full)
        if pad:
            y = y[..., pad:full - pad]
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y


def quantize_int8_(model: nn.Module) -> int:
    """Give every MatmulConv1d / MatmulConvTranspose1d in `model` int8 inference weights (CPU only).

    The fp32 parameters stay (checkpoints and `dequantize_` are unaffected). Returns the number of layers
    converted. Call after loading weights; any later weight change needs `quantize_int8_` again.
    """
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"int8 inference needs the fbgemm engine; this torch has "
                           f"{torch.backends.quantized.supported_engines}")
    n = 0
    for m in model.modules():
        if isinstance(m, MatmulConv1d) and m._fast_path():
            m._pack(m.weight.reshape(m.out_channels, -1), m.bias)
            n += 1
        elif isinstance(m, MatmulConvTranspose1d) and m._fast_path():
            # GEMM weight (out*k, in): row o*k + j holds w[:, o, j]
            m._pack(m.weight.reshape(m.in_channels, -1).t(), None)
            n += 1
    return n


def dequantize_(model: nn.Module) -> None:
    """Drop the int8 inference weights set by `quantize_int8_` (back to exact fp32 layers)."""
    for m in model.modules():
        if isinstance(m, _Int8Weights):
            m.packed = None
