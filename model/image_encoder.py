"""ViT image encoder: patch embedding, windowed/global attention with decomposed
relative position bias, and a neck down to the prompt-embedding width.

Parameter names follow the official checkpoints (`patch_embed.proj`, `pos_embed`,
`blocks.<i>.{norm1,attn.{qkv,proj,rel_pos_h,rel_pos_w},norm2,mlp.{lin1,lin2}}`,
`neck.{0,1,2,3}`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from model.common import LayerNorm2d, MLPBlock


def resize_rel_pos(rel_pos: torch.Tensor, span: int) -> torch.Tensor:
    """Linearly resample an L x C relative-position table to span x C rows."""
    if rel_pos.shape[0] == span:
        return rel_pos
    resampled = F.interpolate(rel_pos.t().unsqueeze(0), size=span, mode="linear")
    return resampled.squeeze(0).t()


def gather_rel_pos(q_len: int, k_len: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) offset: q_len x k_len x C."""
    table = resize_rel_pos(rel_pos, 2 * max(q_len, k_len) - 1)
    q_stride = max(k_len / q_len, 1.0)
    k_stride = max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=rel_pos.device)[:, None] * q_stride
    k_pos = torch.arange(k_len, device=rel_pos.device)[None, :] * k_stride
    offsets = q_pos - k_pos + (k_len - 1) * k_stride
    return table[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Additive attention bias from the (unscaled) queries.

    q: B x heads x (H*W) x C. Returns B x heads x (H*W) x (H*W): bias[i, j] =
    q_i . Rh[row_i - row_j] + q_i . Rw[col_i - col_j].
    """
    bias_h, bias_w = rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    bias = bias_h.unsqueeze(-1) + bias_w.unsqueeze(-2)
    return bias.flatten(4).flatten(2, 3)


def rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the bias: B x heads x H x W x H (rows) and x W (columns)."""
    height, width = size
    grid_q = q.unflatten(2, (height, width))
    table_h = gather_rel_pos(height, height, rel_pos_h).to(q.dtype)
    table_w = gather_rel_pos(width, width, rel_pos_w).to(q.dtype)
    # einsum hands back permuted views; the broadcast add that builds the bias writes
    # H*W x H*W values per head and runs ~2x faster reading contiguous rows.
    bias_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h).contiguous()
    bias_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w).contiguous()
    return bias_h, bias_w


# On a CPU, global attention builds its bias a few grid rows of queries at a time in one
# reused buffer of at most this size: the whole bias of a vit_b global block is 805 MB of
# fresh pages, and writing it cost more than the attention itself (docs/benchmarks.md).
CPU_BIAS_CHUNK_BYTES = 16 << 20


def attention_with_rel_pos(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """SDPA with the decomposed relative-position bias; q, k, v: B x heads x (H*W) x C."""
    batch, heads, tokens, _ = q.shape
    height, width = size
    row_bytes = batch * heads * width * tokens * q.element_size()
    whole = row_bytes * height <= CPU_BIAS_CHUNK_BYTES
    if whole or q.device.type != "cpu" or torch.is_grad_enabled():
        bias = decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    bias_h, bias_w = rel_pos_terms(q, rel_pos_h, rel_pos_w, size)
    rows = max(1, CPU_BIAS_CHUNK_BYTES // row_bytes)
    buffer = q.new_empty(batch, heads, rows, width, height, width)
    out = torch.empty_like(q)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        chunk = buffer[:, :, : stop - start]
        torch.add(
            bias_h[:, :, start:stop, :, :, None],
            bias_w[:, :, start:stop, :, None, :],
            out=chunk,
        )
        queries = slice(start * width, stop * width)
        out[:, :, queries] = F.scaled_dot_product_attention(
            q[:, :, queries], k, v, attn_mask=chunk.flatten(4).flatten(2, 3)
        )
    return out


class Attention(nn.Module):
    """Multi-head self-attention over a B x H x W x C grid of tokens."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("relative position bias needs the attention input_size")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).view(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.use_rel_pos:
            size = (height, width)
            out = attention_with_rel_pos(q, k, v, self.rel_pos_h, self.rel_pos_w, size)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, dim))


def partition_windows(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad B x H x W x C to multiples of `window` and cut it into
    (B * nWindows) x window x window x C tiles. Returns the tiles and the padded size."""
    batch, height, width, dim = x.shape
    pad_h = -height % window
    pad_w = -width % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    tiles = x.view(batch, rows, window, cols, window, dim).transpose(2, 3)
    return tiles.reshape(-1, window, window, dim), (height + pad_h, width + pad_w)


def merge_windows(
    tiles: torch.Tensor, window: int, padded_size: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `partition_windows`: back to B x H x W x C, padding removed."""
    rows, cols = padded_size[0] // window, padded_size[1] // window
    dim = tiles.shape[-1]
    grid = tiles.view(-1, rows, cols, window, window, dim).transpose(2, 3)
    grid = grid.reshape(-1, padded_size[0], padded_size[1], dim)
    return grid[:, : size[0], : size[1], :].contiguous()


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when `window_size > 0`."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=attn_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            size = (y.shape[1], y.shape[2])
            tiles, padded = partition_windows(y, self.window_size)
            y = merge_windows(self.attn(tiles), self.window_size, padded, size)
        else:
            y = self.attn(y)
        if torch.is_grad_enabled():
            x = x + y
            return x + self.mlp(self.norm2(x))
        # Inference: the residual sums go into the fresh outputs instead of new tensors.
        x = _add_into(y, x)
        return _add_into(self.mlp(self.norm2(x)), x)


def _add_into(fresh: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """fresh + residual, written into `fresh` when that keeps the sum's dtype (under
    autocast `fresh` is bf16 and the residual stream must stay fp32)."""
    if torch.result_type(fresh, residual) != fresh.dtype:
        return residual + fresh
    return fresh.add_(residual)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: B x 3 x H x W -> B x H/p x W/p x C."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """B x 3 x img_size x img_size normalized images -> B x out_chans x (img/patch)^2."""

    def __init__(
        self,
        *,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if index in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for index in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
