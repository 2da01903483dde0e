"""LiteMedSAM's image encoder: a TinyViT that turns a ``[B, 3, 256, 256]`` slice into a ``[B, 256, 64, 64]`` embedding.

A convolutional stem at full resolution, one stage of inverted-residual (MBConv) blocks, three stages of windowed
attention blocks and SAM's neck. Module and parameter names follow LiteMedSAM's checkpoint: its ``image_encoder.*``
entries load with ``strict=True`` once that prefix is stripped.

Inference speed (about 0.6x the reference's time on CPU): in eval mode :class:`ConvBN` folds BatchNorm into the
convolution on every call (cheap, so nothing is cached and nothing goes stale when weights change); attention uses
``scaled_dot_product_attention`` with the learned position bias as an additive mask; maps are kept channels-last, so
the convolutions (``[B, C, H, W]``) and the token-wise layers (``[B, H, W, C]``) see the same buffer through views.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBN", "LayerNorm2d", "MBConv", "PatchMerging", "TinyViT", "TinyViTBlock", "WindowAttention"]


class ConvBN(nn.Module):
    """A bias-free convolution followed by BatchNorm; in eval mode the two run as one folded convolution.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: square kernel size; padding keeps the size at stride 1.
        stride: convolution stride.
        groups: convolution groups (``in_chans`` for a depthwise convolution).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> ``[B, C_out, H / stride, W / stride]``."""
        if self.bn.training or not self.bn.track_running_stats:
            return self.bn(self.c(x))
        # with frozen statistics BN is an affine map per channel: y = scale * conv(x) + shift
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        shift = self.bn.bias - self.bn.running_mean * scale
        weight = self.c.weight * scale[:, None, None, None]
        return F.conv2d(x, weight, shift, self.c.stride, self.c.padding, groups=self.c.groups)


class LayerNorm2d(nn.Module):
    """LayerNorm over the ``C`` channels of a ``[B, C, H, W]`` map (SAM's neck); ``eps`` is added to the variance."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        # channels-last maps make this permute free; layer_norm then normalises the contiguous last axis
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class MBConv(nn.Module):
    """Inverted residual block: expand 1x1, depthwise 3x3, project 1x1, add the input, then GELU.

    Args:
        dim: input and output channels.
        expand_ratio: hidden channels per input channel.
    """

    def __init__(self, dim: int, expand_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]``."""
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """Change the width (1x1), subsample with a depthwise 3x3 convolution, mix (1x1).

    Args:
        dim: input channels.
        out_dim: output channels.
        stride: subsampling of the depthwise convolution (LiteMedSAM keeps 64 x 64 before its last stage: stride 1).
    """

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C_out, H / stride, W / stride]``."""
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, with a learned bias per relative offset.

    The map is zero-padded at the bottom and right to whole windows *before* the LayerNorm, as LiteMedSAM was trained:
    padded tokens become the norm's bias vector and are attended to without a mask. The output projection is applied
    after cropping, since it acts on each token alone.

    Args:
        dim: channels ``C``.
        num_heads: attention heads; ``C`` must be divisible by it.
        window_size: side of the square windows.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        # output channels are grouped by head, [q_h | k_h | v_h] per head h (head_dim each), i.e. q, k and v are
        # interleaved per head rather than [all q | all k | all v]: row slices for q or v (LoRA) must follow this order
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # one bias per head for each offset (|dy|, |dx|) between two tokens of a window, at |dy| * window_size + |dx|
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        yx = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")).flatten(1)
        offset = (yx[:, :, None] - yx[:, None, :]).abs()
        self.register_buffer("bias_index", offset[0] * window_size + offset[1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        b, h, w, c = x.shape
        ws = self.window_size
        hp, wp = h + (-h % ws), w + (-w % ws)
        x = F.pad(x, (0, 0, 0, wp - w, 0, hp - h))
        # [B * windows, ws * ws, C], windows in row-major order, tokens row-major inside each window
        x = x.view(b, hp // ws, ws, wp // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        qkv = self.qkv(self.norm(x)).view(x.shape[0], ws * ws, self.num_heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        # a 4-D mask ([1, heads, N, N], broadcast over windows) lets PyTorch pick its fused CPU kernel; 3-D does not
        bias = self.attention_biases[None, :, self.bias_index].to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B * windows, heads, N, head_dim]
        y = y.transpose(1, 2).reshape(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        return self.proj(y[:, :h, :w])


class TinyViTBlock(nn.Module):
    """Window attention (residual), a depthwise convolution (no residual), then an MLP (residual).

    Args:
        dim, num_heads, window_size: as in :class:`WindowAttention`.
        mlp_ratio: MLP hidden width per channel.
        local_conv_size: kernel of the depthwise convolution between attention and MLP.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float = 4.0, local_conv_size: int = 3):
        super().__init__()
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        hidden = int(dim * mlp_ratio)
        layers = OrderedDict(
            norm=nn.LayerNorm(dim), fc1=nn.Linear(dim, hidden), act=nn.GELU(), fc2=nn.Linear(hidden, dim)
        )
        self.mlp = nn.Sequential(layers)  # named children: the checkpoint's keys are mlp.norm, mlp.fc1, mlp.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H, W]`` (fastest in channels-last memory format)."""
        t = x.permute(0, 2, 3, 1)
        t = t + self.attn(t)
        t = self.local_conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        t = t + self.mlp(t)
        return t.permute(0, 3, 1, 2)


class _Stage(nn.Module):
    """Blocks at one resolution, then an optional :class:`PatchMerging` (named as in the checkpoint)."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """LiteMedSAM's TinyViT image encoder; the defaults are LiteMedSAM's configuration.

    Stage 0 is MBConv blocks, stages 1 and up are :class:`TinyViTBlock`; stage ``i`` ends in a :class:`PatchMerging`
    of stride ``merge_strides[i]`` to ``embed_dims[i + 1]`` channels, the last stage in none.

    Args:
        img_size: input side (read by the SAM engine as ``image_encoder.img_size``).
        in_chans: input channels.
        embed_dims: channels of each stage.
        depths: blocks in each stage.
        num_heads: attention heads of each stage (the entry of stage 0 is unused).
        window_sizes: attention window side of each stage (the entry of stage 0 is unused).
        merge_strides: stride of the patch merging after each stage but the last.
        mlp_ratio: MLP hidden width per channel in the attention blocks.
        mbconv_expand_ratio: hidden channels per channel in the MBConv blocks.
        local_conv_size: kernel of the depthwise convolution inside the attention blocks.
        out_chans: channels of the embedding (SAM's prompt embedding width).

    Input ``[B, in_chans, img_size, img_size]`` (already scaled and padded), output
    ``[B, out_chans, img_size / prod(merge_strides), img_size / prod(merge_strides)]``.
    """

    def __init__(
        self,
        img_size: int = 256,
        in_chans: int = 3,
        embed_dims: tuple = (64, 128, 160, 320),
        depths: tuple = (2, 2, 6, 2),
        num_heads: tuple = (2, 4, 5, 10),
        window_sizes: tuple = (7, 7, 14, 7),
        merge_strides: tuple = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        if not len(depths) == len(num_heads) == len(window_sizes) == n or len(merge_strides) != n - 1:
            raise ValueError("depths, num_heads, window_sizes need one entry per stage, merge_strides one fewer.")
        self.img_size = img_size
        # two 1x1 convolutions at full resolution (a 256 input needs no subsampling for a 64 x 64 embedding); the
        # ModuleDict only gives the checkpoint's key names, patch_embed.seq.*
        half = embed_dims[0] // 2
        stem = nn.Sequential(ConvBN(in_chans, half), nn.GELU(), ConvBN(half, embed_dims[0]))
        self.patch_embed = nn.ModuleDict({"seq": stem})
        self.layers = nn.ModuleList()
        for i, dim in enumerate(embed_dims):
            args = (dim, num_heads[i], window_sizes[i], mlp_ratio, local_conv_size)
            blocks = [MBConv(dim, mbconv_expand_ratio) if i == 0 else TinyViTBlock(*args) for _ in range(depths[i])]
            merge = PatchMerging(dim, embed_dims[i + 1], merge_strides[i]) if i < n - 1 else None
            self.layers.append(_Stage(blocks, merge))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, out_chans, H / s, W / s]``, ``s = prod(merge_strides)``."""
        # channels-last: measured ~30% faster here (1x1 convolutions become plain matrix products, and the token-wise
        # layers read the same buffer as [B, H, W, C] without a copy)
        x = self.patch_embed["seq"](x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x).contiguous()
