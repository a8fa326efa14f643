"""Two-way transformer of the mask decoder: prompt tokens and image tokens attend to
each other.

Many prompts of one image share the image tokens until the first image-side update,
so the image side may come with a batch of 1 while the tokens have a batch of B. The
attention below handles that broadcast without copying the image tokens B times;
results equal those of an explicitly repeated batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from model.common import MLPBlock


@dataclass(frozen=True)
class SharedImage:
    """The first layer's image-side inputs, the same for every prompt of one image without
    a mask prompt: computed once per image (`TwoWayTransformer.share_image`) instead of
    once per decoder call."""

    size: tuple[int, int]  # the embedding grid, h x w
    keys: torch.Tensor  # 1 x (h*w) x C, token-major
    keys_with_pe: torch.Tensor
    projected: tuple[torch.Tensor, torch.Tensor]  # first token->image attention's k, v heads


class Attention(nn.Module):
    """Multi-head attention with an optional down-projection of the internal width."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(f"num_heads={num_heads} must divide {self.internal_dim}")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """B x N x C -> B x heads x N x C/heads."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        residual: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """q: Bq x Nq x C; k, v: Bk x Nk x C, with Bq == Bk or one of them 1.
        residual: added to the output (fused into the last product where it can be).
        projected: k and v already projected and split into heads (`_heads`)."""
        if projected is not None:
            return _plus(self._plain(q, k, v, projected), residual)
        if not torch.is_grad_enabled():
            # Inference between a few prompt tokens and thousands of image tokens: project
            # the few instead of the many when that is cheaper (same result up to rounding).
            few = self.num_heads * min(q.shape[1], k.shape[1])
            if few < self.internal_dim and q.shape[1] < k.shape[1] and q.shape[0] == k.shape[0]:
                return _plus(self._few_queries(q, k, v), residual)
            if few < self.internal_dim and q.shape[1] > k.shape[1]:
                return self._few_keys(q, k, v, residual)
        return _plus(self._plain(q, k, v), residual)

    def _plain(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        projected: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        q_h = self._heads(self.q_proj(q))
        if projected is None:
            projected = self.project_keys(k, v)
        k_h, v_h = projected
        if q_h.shape[0] == k_h.shape[0]:
            out = F.scaled_dot_product_attention(q_h, k_h, v_h)
        elif k_h.shape[0] == 1:
            out = _attend_shared_keys(q_h, k_h, v_h)
        else:
            out = _attend_shared_queries(q_h, k_h, v_h)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def project_keys(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._heads(self.k_proj(k)), self._heads(self.v_proj(v))

    def _few_queries(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Nq << Nk, one key set per query set. Per head h, with Q_h the projected queries:
        scores = (Q_h W_k,h) k^T (the key bias adds a constant per row, which softmax
        ignores), and out_h = (P_h v) W_v,h^T + b_v,h (each row of P_h sums to 1)."""
        heads, n_q = self.num_heads, q.shape[1]
        head_dim = self.internal_dim // heads
        q_h = self.q_proj(q).unflatten(-1, (heads, head_dim))  # B x Nq x H x d
        w_k = self.k_proj.weight.unflatten(0, (heads, head_dim))  # H x d x C
        query_in = torch.einsum("bnhd,hdc->bhnc", q_h, w_k * head_dim**-0.5).flatten(1, 2)
        probs = (query_in @ k.transpose(1, 2)).softmax(dim=-1)  # B x (H*Nq) x Nk
        mixed = (probs @ v).unflatten(1, (heads, n_q))  # B x H x Nq x C
        w_v = self.v_proj.weight.unflatten(0, (heads, head_dim))  # H x d x C
        out = torch.einsum("bhnc,hdc->bnhd", mixed, w_v) + self.v_proj.bias.view(heads, -1)
        return self.out_proj(out.flatten(2))

    def _few_keys(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, residual: torch.Tensor | None
    ) -> torch.Tensor:
        """Nk << Nq (image tokens asking the prompt tokens), q possibly shared by all key
        sets. Per head: scores = q (W_q,h^T K_h^T) + b_q,h K_h^T, and the output
        projection applied to V_h first: out = sum_h P_h (V_h W_o,h^T) + b_o, where b_o
        rides on the values as b_o / heads (each head's probabilities sum to 1) and the
        residual is the product's starting value."""
        heads, n_k, batch = self.num_heads, k.shape[1], k.shape[0]
        head_dim = self.internal_dim // heads
        scale = head_dim**-0.5
        k_h = self.k_proj(k).unflatten(-1, (heads, head_dim))  # B x Nk x H x d
        v_h = self.v_proj(v).unflatten(-1, (heads, head_dim))
        w_q = self.q_proj.weight.unflatten(0, (heads, head_dim))  # H x d x C
        keys_in = torch.einsum("bkhd,hdc->bhkc", k_h, w_q * scale).flatten(1, 2)  # B x HNk x C
        key_bias = torch.einsum("bkhd,hd->bhk", k_h, self.q_proj.bias.view(heads, -1) * scale)
        if q.shape[0] == 1 and batch > 1:  # one image for all prompts: one matrix product
            scores = (q[0] @ keys_in.flatten(0, 1).t()).unflatten(-1, (batch, -1))
            scores = scores.transpose(0, 1)  # B x Nq x (H*Nk)
        else:
            scores = q @ keys_in.transpose(1, 2)
        scores = scores + key_bias.flatten(1)[:, None, :]
        probs = _softmax_short_rows(scores.unflatten(-1, (heads, n_k))).flatten(2)
        w_o = self.out_proj.weight.unflatten(1, (heads, head_dim))  # C x H x d
        values_out = torch.einsum("bkhd,chd->bhkc", v_h, w_o)  # B x H x Nk x C
        values_out = (values_out + self.out_proj.bias / heads).flatten(1, 2)
        if residual is None:
            return probs @ values_out
        if torch.is_autocast_enabled(residual.device.type):
            # baddbmm would round the residual stream to the autocast dtype.
            return residual + probs @ values_out
        return torch.baddbmm(residual.expand(len(probs), -1, -1), probs, values_out)


def _plus(x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    return x if residual is None else residual + x


def _softmax_short_rows(x: torch.Tensor) -> torch.Tensor:
    """softmax over a short last axis (a handful of keys): 3x faster than `Tensor.softmax`
    on a CPU for millions of 7-element rows."""
    exp = (x - x.amax(dim=-1, keepdim=True)).exp()
    return exp / exp.sum(dim=-1, keepdim=True)


def _attend_shared_keys(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """B queries sets against one key set: fold the batch into the query axis."""
    batch, heads, n_q, dim = q.shape
    folded = q.transpose(0, 1).reshape(1, heads, batch * n_q, dim)
    out = F.scaled_dot_product_attention(folded, k, v)
    return out.reshape(heads, batch, n_q, dim).transpose(0, 1)


def _attend_shared_queries(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query set against B key sets: scores for all key sets in one product."""
    batch, heads, n_k, dim = k.shape
    keys = k.permute(1, 3, 0, 2).reshape(heads, dim, batch * n_k)
    scores = (q[0] * dim**-0.5) @ keys  # heads x Nq x (B * Nk)
    probs = scores.unflatten(-1, (batch, n_k)).softmax(dim=-1)
    return torch.matmul(probs.permute(2, 0, 1, 3), v)  # B x heads x Nq x dim


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image, MLP on tokens, image->token."""

    def __init__(
        self,
        *,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        shared: SharedImage | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """shared: this image's precomputed inputs (first layer only; `keys` is shared.keys)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        keys_with_pe = keys + key_pe if shared is None else shared.keys_with_pe
        q = queries + query_pe
        attended = self.cross_attn_token_to_image(
            q=q, k=keys_with_pe, v=keys, projected=None if shared is None else shared.projected
        )
        queries = self.norm2(queries + attended)
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(
            self.cross_attn_image_to_token(q=keys_with_pe, k=q, v=queries, residual=keys)
        )
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self,
        *,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=index == 0,
            )
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def share_image(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> SharedImage:
        """The first layer's image-side work for a 1 x C x h x w image embedding."""
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        keys_with_pe = keys + image_pe.flatten(2).transpose(1, 2)
        first = self.layers[0]
        assert isinstance(first, TwoWayAttentionBlock)
        attention = first.cross_attn_token_to_image
        projected = attention.project_keys(keys_with_pe, keys)
        size = (image_embedding.shape[-2], image_embedding.shape[-1])
        return SharedImage(size, keys, keys_with_pe, projected)

    def forward(
        self,
        image_embedding: torch.Tensor | SharedImage,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding: Bi x C x h x w (Bi = B or 1, shared by all prompts), or the
        `share_image` of one; image_pe: 1 x C x h x w; point_embedding: B x N x C.
        Returns tokens B x N x C and image tokens B x (h*w) x C."""
        key_pe = image_pe.flatten(2).transpose(1, 2)
        shared = image_embedding if isinstance(image_embedding, SharedImage) else None
        if shared is not None:
            keys = shared.keys
        else:
            assert isinstance(image_embedding, torch.Tensor)
            # Token-major once here, so that every later add and projection reads
            # contiguous rows.
            keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            layer_shared = shared if index == 0 else None
            queries, keys = layer(queries, keys, point_embedding, key_pe, layer_shared)
        attn = self.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
        return self.norm_final_attn(queries + attn), keys
