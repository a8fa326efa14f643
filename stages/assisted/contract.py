"""The browser decoder's ONNX contract: input and output names, point labels, metadata keys.

The exported graph (`stages.assisted.onnx_export`), its Python runner
(`stages.assisted.onnx_decoder`), the scripted annotators and the web page all code against
these names; docs/campaigns.md describes the contract in full.

Inputs (batch 1; h x w is the image embedding grid, 64 x 64 for vit_b/l/h):
    image_embeddings  float32 1 x 256 x h x w
    point_coords      float32 1 x N x 2, XY in original-image pixels (N >= 1, dynamic)
    point_labels      float32 1 x N: the labels below
    mask_input        float32 1 x 1 x 4h x 4w: an earlier prediction's low-res logits
    has_mask_input    float32 1: 1 when mask_input holds logits, 0 when it is ignored
    orig_im_size      float32 2: (H, W) of the image the coordinates refer to
Outputs:
    masks             float32 1 x 4 x H x W mask logits (0: single-mask token, 1..3: multimask)
    iou_predictions   float32 1 x 4
    low_res_masks     float32 1 x 4 x 4h x 4w
"""

from __future__ import annotations

INPUT_NAMES = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
OUTPUT_NAMES = ("masks", "iou_predictions", "low_res_masks")

# Point labels, as SAM's prompt encoder reads them.
PADDING_LABEL = -1
BACKGROUND_LABEL = 0
FOREGROUND_LABEL = 1
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3

# Mask tokens in the outputs: token 0 is the single-mask output, 1..3 the multimask outputs.
SINGLE_MASK_TOKEN = 0
MULTIMASK_TOKENS = (1, 2, 3)

# Keys of the exported file's metadata_props.
META_WEIGHTS_SHA256 = "weights_sha256"
META_MODEL_NAME = "model_name"
META_IMG_SIZE = "img_size"
META_EMBEDDING_SIZE = "embedding_size"
META_CONTRACT = "contract"
CONTRACT_VERSION = "sa-engine-decoder/1"
