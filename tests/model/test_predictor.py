from __future__ import annotations

import numpy as np
import pytest
import torch

from model import PredictorInputError, SamPredictor, build_sam
from model.image_encoder import merge_windows, partition_windows


@pytest.fixture(scope="module")
def predictor():
    p = SamPredictor(build_sam("vit_tiny"))
    p.set_image(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    return p


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(point_coords=np.array([[10.0, 10.0]])), "point_labels must be given"),
        (dict(point_coords=np.array([10.0, 10.0]), point_labels=np.array([1])), "N x 2"),
        (
            dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 1])),
            "must have shape",
        ),
        (
            dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([2])),
            "0 \\(background\\) or 1",
        ),
        (
            dict(point_coords=np.array([[500.0, 10.0]]), point_labels=np.array([1])),
            "outside the 200x120",
        ),
        (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), "finite"),
        (dict(box=np.array([10.0, 10.0, 5.0, 50.0])), "x0 <= x1"),
        (dict(box=np.array([10.0, 10.0, 50.0])), "4 numbers"),
        (dict(mask_input=np.zeros((256, 256))), "mask_input must have shape"),
    ],
)
def test_bad_prompts_get_clear_errors(predictor, kwargs, message):
    with pytest.raises(PredictorInputError, match=message):
        predictor.predict(**kwargs)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((10, 10), np.uint8), "H x W x 3"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        ([[1, 2, 3]], "numpy array"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_bad_images_get_clear_errors(image, message):
    with pytest.raises(PredictorInputError, match=message):
        SamPredictor(build_sam("vit_tiny")).set_image(image)


def test_predict_before_set_image():
    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(build_sam("vit_tiny")).predict(
            point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1])
        )


def test_batched_decode_equals_one_by_one(predictor):
    coords = torch.rand(5, 2, 2) * 1000
    labels = torch.tensor([[1, 0]] * 5, dtype=torch.int)
    low, iou = predictor.decode_low_res(coords, labels)
    for i in range(5):
        one_low, one_iou = predictor.decode_low_res(coords[i : i + 1], labels[i : i + 1])
        assert torch.allclose(one_low[0], low[i], atol=1e-4)
        assert torch.allclose(one_iou[0], iou[i], atol=1e-5)


def test_outputs_have_official_shapes(predictor):
    masks, iou, low = predictor.predict(
        point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1])
    )
    assert masks.shape == (3, 120, 200) and masks.dtype == bool
    assert iou.shape == (3,) and low.shape == (3, 256, 256)
    logits, _, _ = predictor.predict(
        box=np.array([0, 0, 100, 100]), multimask_output=False, return_logits=True
    )
    assert logits.shape == (1, 120, 200) and logits.dtype == np.float32


def test_model_trains_gradients_reach_every_part():
    sam = build_sam("vit_tiny").train()
    images = torch.randn(1, 3, 1024, 1024)
    low, iou = sam(
        images,
        point_coords=torch.rand(1, 1, 2) * 1024,
        point_labels=torch.ones(1, 1, dtype=torch.int),
    )
    (low.mean() + iou.mean()).backward()
    for part in (
        sam.image_encoder.blocks[0].attn.rel_pos_h,
        sam.image_encoder.patch_embed.proj.weight,
        sam.prompt_encoder.point_embeddings[1].weight,
        sam.mask_decoder.mask_tokens.weight,
    ):
        assert part.grad is not None and part.grad.abs().sum() > 0


@pytest.mark.parametrize(("height", "width"), [(64, 64), (13, 30), (14, 14)])
def test_window_partition_round_trip(height, width):
    x = torch.randn(2, height, width, 8)
    tiles, padded = partition_windows(x, 14)
    assert tiles.shape[1:3] == (14, 14)
    assert padded[0] % 14 == 0 and padded[1] % 14 == 0
    assert torch.equal(merge_windows(tiles, 14, padded, (height, width)), x)


def test_encoder_takes_a_batch():
    sam = build_sam("vit_tiny")
    with torch.no_grad():
        one = sam.image_encoder(torch.randn(1, 3, 1024, 1024))
        x = torch.randn(2, 3, 1024, 1024)
        both = sam.image_encoder(x)
        first = sam.image_encoder(x[:1])
    assert one.shape == (1, 256, 64, 64) and both.shape == (2, 256, 64, 64)
    assert torch.allclose(both[0], first[0], atol=1e-5)


@pytest.mark.gpu
def test_bf16_autocast_on_cuda_stays_close():
    sam = build_sam("vit_tiny").cuda()
    image = np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    exact, fast = SamPredictor(sam), SamPredictor(sam, autocast_dtype=torch.bfloat16)
    exact.set_image(image)
    fast.set_image(image)
    rel = (exact.features - fast.features).norm() / exact.features.norm()
    assert rel < 2e-2


def test_dense_positional_encoding_follows_new_weights():
    sam = build_sam("vit_tiny")
    encoder = sam.prompt_encoder
    with torch.inference_mode():
        before = encoder.get_dense_pe().clone()
    state = sam.state_dict()
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
    sam.load_state_dict(state)
    with torch.inference_mode():
        after = encoder.get_dense_pe()
        fresh = encoder.pe_layer(encoder.image_embedding_size).unsqueeze(0)
    assert not torch.allclose(before, after)
    assert torch.equal(after, fresh)
    # An encoding made under inference mode is not reused where gradients are recorded.
    low, _ = sam.decode(
        torch.randn(1, 256, 64, 64),
        point_coords=torch.rand(1, 1, 2) * 1024,
        point_labels=torch.ones(1, 1, dtype=torch.int),
    )
    low.mean().backward()
    assert sam.mask_decoder.mask_tokens.weight.grad is not None


def test_model_works_under_torch_compile():
    torch.manual_seed(0)
    sam = build_sam("vit_tiny").eval()
    images = torch.randn(1, 3, 1024, 1024)
    coords, labels = torch.rand(4, 2, 2) * 1024, torch.tensor([[1, 0]] * 4, dtype=torch.int)

    def run(encoder, decode):
        embedding = encoder(images)
        return embedding, *decode(embedding, point_coords=coords, point_labels=labels)

    with torch.inference_mode():
        eager = run(sam.image_encoder, sam.decode)
        compiled = run(torch.compile(sam.image_encoder), torch.compile(sam.decode))
    for ours, reference in zip(compiled, eager, strict=True):
        assert torch.allclose(ours, reference, atol=1e-4), (ours - reference).abs().max()


@pytest.mark.parametrize(
    ("query_shape", "key_shape"),
    [
        ((3, 7, 256), (3, 4096, 256)),  # prompt tokens asking per-prompt image tokens
        ((3, 4096, 256), (3, 7, 256)),  # image tokens asking prompt tokens
        ((1, 4096, 256), (3, 7, 256)),  # one image shared by three prompts
        ((3, 7, 256), (1, 4096, 256)),  # shared image keys: the standard path
    ],
)
def test_inference_attention_equals_the_training_path(query_shape, key_shape):
    """Without gradients the decoder's cross-attention projects the few prompt tokens
    instead of the many image tokens; it must give what the plain attention gives."""
    from model.transformer import Attention

    torch.manual_seed(0)
    attention = Attention(256, 8, downsample_rate=2)
    for parameter in attention.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    q, k, v = torch.randn(query_shape), torch.randn(key_shape), torch.randn(key_shape)
    residual = torch.randn(query_shape)
    with torch.no_grad():
        folded = attention(q, k, v)
        folded_residual = attention(q, k, v, residual=residual)
    plain = attention(q, k, v).detach()
    assert torch.allclose(folded, plain, atol=1e-4), (folded - plain).abs().max()
    expected = plain + residual
    assert torch.allclose(folded_residual, expected, atol=1e-4)
    assert torch.equal(attention(q, k, v, residual=residual).detach(), expected)


@pytest.mark.parametrize(
    ("input_size", "original_size"),
    [
        ((683, 1024), (534, 800)),
        ((1024, 683), (1500, 1000)),
        ((1024, 1024), (640, 640)),
        ((1024, 37), (1200, 43)),
        ((21, 1024), (20, 977)),
        ((1024, 1021), (1024, 1021)),
    ],
)
def test_postprocess_reads_only_the_unpadded_part(input_size, original_size):
    """Upsampling the whole 256 x 256 and cropping (the plain reading) gives the same
    values, bit for bit, as upsampling the rows and columns that reach the input."""
    sam = build_sam("vit_tiny")
    low = torch.randn(2, 3, 256, 256) * 5
    plain = torch.nn.functional.interpolate(low, (1024, 1024), mode="bilinear")
    plain = plain[..., : input_size[0], : input_size[1]]
    plain = torch.nn.functional.interpolate(plain, original_size, mode="bilinear")
    assert torch.equal(sam.postprocess_masks(low, input_size, original_size), plain)
    rows, cols = sam.valid_low_res_size(input_size)
    assert rows < 256 or input_size[0] > 1020
    cut = sam.postprocess_masks(low[..., :rows, :cols].clone(), input_size, original_size)
    assert torch.equal(cut, plain)
    with pytest.raises(ValueError, match="do not cover"):
        sam.postprocess_masks(low[..., : rows - 1, :cols], input_size, original_size)


def test_decode_kept_equals_decode_then_filter(predictor):
    """The kept masks, their IoUs and their indices equal a full decode filtered after,
    restricted to the low-res part that reaches the unpadded 120 x 200 image."""
    sharp = SamPredictor(predictor.model)
    sharp.set_image(np.random.default_rng(1).integers(0, 255, (120, 200, 3), dtype=np.uint8))
    coords = torch.rand(7, 1, 2) * torch.tensor([1024.0, 614.0])
    labels = torch.ones(7, 1, dtype=torch.int)
    low, iou = sharp.decode_low_res(coords, labels)
    pattern = torch.tensor(
        [[1, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0]]
    )
    chosen, median = iou[pattern.bool()], iou.median()
    for keep in (
        # prompts 1 and 4 lose every mask, the others keep 1 to 3 (keep sees the IoUs of
        # a group of prompts at a time, so the pattern is told by its values)
        lambda x: (x[..., None] - chosen).abs().amin(dim=-1) < 1e-6,
        lambda x: x > median,
        lambda x: torch.ones_like(x, dtype=torch.bool),
        lambda x: torch.zeros_like(x, dtype=torch.bool),
    ):
        expected = keep(iou).flatten()
        kept_low, kept_iou, index = sharp.decode_kept(coords, labels, keep)
        assert torch.equal(index, expected.nonzero().flatten())
        assert torch.allclose(kept_iou, iou.flatten()[expected], atol=1e-6)
        rows, cols = sharp.model.valid_low_res_size(sharp.input_size)
        assert kept_low.shape[1:] == (-(-rows // 4) * 4, -(-cols // 4) * 4)
        assert kept_low.shape[1] < 256
        full = low.flatten(0, 1)[expected][:, : kept_low.shape[1], : kept_low.shape[2]]
        assert torch.allclose(kept_low, full, atol=1e-4)
        assert torch.allclose(
            sharp.upscale(kept_low[:, None]), sharp.upscale(full[:, None]), atol=1e-4
        )


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 8 * 11 * 13 * 11 * 4])
def test_rel_pos_attention_in_row_chunks_equals_whole(monkeypatch, chunk_bytes):
    """On a CPU without gradients the encoder builds the relative-position bias a few grid
    rows of queries at a time (1 row, then 3 rows with a shorter last chunk)."""
    from model import image_encoder

    torch.manual_seed(0)
    size = (13, 11)
    q, k, v = (torch.randn(2, 4, 13 * 11, 8) for _ in range(3))
    rel_h, rel_w = torch.randn(25, 8), torch.randn(21, 8)
    whole = image_encoder.attention_with_rel_pos(q, k, v, rel_h, rel_w, size).detach()
    bias = image_encoder.decomposed_rel_pos_bias(q, rel_h, rel_w, size)
    assert torch.allclose(whole, torch.nn.functional.scaled_dot_product_attention(q, k, v, bias))
    monkeypatch.setattr(image_encoder, "CPU_BIAS_CHUNK_BYTES", chunk_bytes)
    with torch.no_grad():
        chunked = image_encoder.attention_with_rel_pos(q, k, v, rel_h, rel_w, size)
    assert torch.allclose(chunked, whole, atol=1e-5), (chunked - whole).abs().max()


def test_shared_image_work_gives_the_same_decode():
    """The first layer's per-image work done once (`share_image`) equals doing it in every
    call; with a mask prompt the shared work does not apply and is not used."""
    torch.manual_seed(0)
    sam = build_sam("vit_tiny").eval()
    features = torch.randn(1, 256, 64, 64)
    prompts = dict(
        point_coords=torch.rand(3, 2, 2) * 1024,
        point_labels=torch.tensor([[1, 0]] * 3, dtype=torch.int),
    )
    with torch.no_grad():
        shared = sam.share_image(features)
        for extra in ({}, {"mask_input": torch.randn(3, 1, 256, 256)}):
            plain = sam.decode(features, **prompts, **extra)
            reused = sam.decode(features, **prompts, **extra, shared=shared)
            for a, b in zip(plain, reused, strict=True):
                assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        with pytest.raises(ValueError, match="single image embedding"):
            sam.decode(features.expand(3, -1, -1, -1), **prompts, shared=shared)


def test_residual_stays_full_precision_under_bf16_autocast():
    """The fast mode computes attention in bf16, but the residual stream it is added to
    must not be rounded to bf16 (8 bits of mantissa: 1000.3 would come back as 1000)."""
    from model.transformer import Attention

    torch.manual_seed(0)
    attention = Attention(256, 8, downsample_rate=2)
    q, k = torch.randn(2, 4096, 256), torch.randn(2, 7, 256)
    residual = 1000.0 + torch.rand(2, 4096, 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = attention(q, k, k, residual=residual)
        alone = attention(q, k, k)
    assert fast.dtype == torch.float32
    assert torch.allclose(fast - residual, alone.float(), atol=0.05)


def test_encoder_residual_stream_stays_fp32_under_bf16_autocast():
    """The encoder's residual sums are done in place at inference; under autocast they
    must still be fp32 (as `x + y` promotes), not written into the bf16 block outputs."""
    from model.image_encoder import Block

    torch.manual_seed(0)
    block = Block(64, num_heads=2, window_size=0, input_size=(8, 8))
    x = 1000.0 + torch.rand(1, 8, 8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fast = block(x)
        plain = block(x).detach()  # gradients recorded: the out-of-place sums
    assert fast.dtype == torch.float32
    # bf16 rounding of values near 1000 would be off by up to 2-4
    assert torch.allclose(fast, plain, atol=0.02), (fast - plain).abs().max()
