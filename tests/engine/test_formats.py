"""Label formats: SA-1B datasets exported to COCO, YOLO-seg, CVAT and Label Studio, read back
by the readers their users have (pycocotools, supervision, the XML structure CVAT imports,
Label Studio's brush RLE) and by this engine's readers."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from engine.config import compose_config
from engine.dataset import image_key
from engine.dataset.formats import FORMATS, detect_format, geometry, read_labels
from engine.dataset.formats.command import run_export
from engine.dataset.formats.labelstudio import brush_decode, brush_encode
from engine.dataset.writer import DatasetWriter, image_entry, numbered
from engine.errors import UsageError
from engine.sources import InputError, list_sources
from engine.storage import Storage
from engine.training.synthetic import SceneOptions, write_synthetic_dataset

SIZE = (48, 64)  # height, width of the crafted images


def crafted_masks() -> dict[str, np.ndarray]:
    """Masks that polygons get wrong unless holes and parts are handled."""
    yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
    ring = ((yy - 20) ** 2 + (xx - 24) ** 2 <= 15**2) & ((yy - 20) ** 2 + (xx - 24) ** 2 > 6**2)
    island = ring | ((yy - 20) ** 2 + (xx - 24) ** 2 <= 2**2)  # a part inside the hole
    two_holes = np.zeros(SIZE, bool)
    two_holes[5:40, 40:62] = True
    two_holes[10:15, 45:50] = two_holes[25:33, 52:58] = False
    parts = np.zeros(SIZE, bool)
    parts[2:6, 2:9] = parts[40:47, 50:63] = parts[30, 10] = True  # a single pixel too
    diagonal = np.eye(SIZE[0], SIZE[1], dtype=bool) | np.eye(SIZE[0], SIZE[1], 1, dtype=bool)
    border = np.zeros(SIZE, bool)
    border[:, :3] = border[-2:, :] = True
    return {
        "ring": ring,
        "island": island,
        "two_holes": two_holes,
        "parts": parts,
        "diagonal": diagonal,
        "border": border,
    }


def _annotation(mask: np.ndarray) -> dict[str, object]:
    ys, xs = np.nonzero(mask)
    return {
        "segmentation": geometry.encode(mask),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)), int(np.ptp(ys))],
        "area": int(mask.sum()),
        "predicted_iou": 0.9,
        "stability_score": 0.95,
        "crop_box": [0, 0, SIZE[1], SIZE[0]],
        "point_coords": [[float(xs[0]), float(ys[0])]],
    }


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SA-1B dataset of two images holding the crafted masks."""
    root = tmp_path_factory.mktemp("crafted")
    writer = DatasetWriter(Storage(str(root)), images_per_shard=1)
    masks = list(crafted_masks().values())
    for image_id, chosen in ((1, masks[:3]), (2, masks[3:])):
        buffer = io.BytesIO()
        Image.fromarray(np.full((*SIZE, 3), 90 * image_id, np.uint8)).save(buffer, "JPEG")
        entry = image_entry(image_id, image_key(image_id), width=SIZE[1], height=SIZE[0])
        annotations = numbered(image_id, [_annotation(m) for m in chosen])
        writer.add(
            image_id=image_id,
            key=image_key(image_id),
            source=f"crafted:{image_id}",
            jpeg=buffer.getvalue(),
            record={"image": entry, "annotations": annotations},
        )
    writer.close({"crafted": True})
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic scenes (occlusion cuts holes, two-part objects) in two shards."""
    root = tmp_path_factory.mktemp("scenes")
    options = SceneOptions(size=96, objects=(3, 6), part_probability=0.8)
    write_synthetic_dataset(str(root), num_images=4, images_per_shard=2, options=options)
    return root


def export(dataset: Path, output: Path, fmt: str, *extra: str) -> dict[str, object]:
    """Run the export command's function; returns its report (export.json)."""
    overrides = [f"dataset={dataset}", f"format={fmt}", f"output={output}", "progress=false"]
    run_export(compose_config("export", [*overrides, *extra]))
    report: dict[str, object] = json.loads((output / "export.json").read_text())
    return report


def original_masks(dataset: Path) -> dict[str, list[np.ndarray]]:
    """file name -> the dataset's masks, from its SA-1B JSON."""
    from engine.dataset.reader import iter_records

    found = {}
    for key, _, raw in iter_records(Storage(str(dataset))):
        annotations = json.loads(raw)["annotations"]
        found[f"{key}.jpg"] = [geometry.decode(a["segmentation"]) for a in annotations]
    return found


def assert_same_masks(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for mask, truth in zip(got, expected):
        np.testing.assert_array_equal(mask.astype(bool), truth.astype(bool))


def imported_masks(path: Path) -> dict[str, list[np.ndarray]]:
    """file name -> masks, through this engine's reader of the label file."""
    found = {}
    for labels in read_labels(str(path)):
        assert all(o.rle is not None for o in labels.objects)
        found[Path(labels.file_name).name] = [geometry.decode(o.rle) for o in labels.objects]  # type: ignore[arg-type]
    return found


# Geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(crafted_masks()))
def test_polygons_give_back_the_mask_with_its_holes_and_parts(name: str) -> None:
    mask = crafted_masks()[name]
    parts = geometry.mask_polygons(mask)
    for polygons in (parts, [geometry.single_polygon(parts)]):
        drawn = geometry.decode(geometry.polygons_to_rle(polygons, height=SIZE[0], width=SIZE[1]))
        np.testing.assert_array_equal(drawn.astype(bool), mask)


def test_simplified_polygons_lose_some_iou() -> None:
    mask = crafted_masks()["ring"]
    simplified = geometry.mask_polygons(mask, tolerance=1.5)
    drawn = geometry.polygons_to_rle(simplified, height=SIZE[0], width=SIZE[1])
    iou = geometry.rle_iou(drawn, geometry.encode(mask))
    assert 0.8 < iou < 1.0
    assert sum(map(len, simplified)) < sum(map(len, geometry.mask_polygons(mask)))


# COCO ---------------------------------------------------------------------------------


def test_coco_rle_loads_in_pycocotools_evaluates_to_ap_1_and_round_trips(
    scenes: Path, tmp_path: Path
) -> None:
    report = export(scenes, tmp_path / "coco", "coco")
    path = tmp_path / "coco" / "annotations.json"
    gt = COCO(str(path))
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["object"]
    for image in gt.imgs.values():
        assert (tmp_path / "coco" / image["file_name"]).is_file()  # images beside the JSON
    results = [{**a, "score": 1.0} for a in gt.anns.values()]
    evaluation = COCOeval(gt, gt.loadRes(results), iouType="segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    assert report["masks"] == len(gt.anns) > 10
    expected = original_masks(scenes)
    imported = imported_masks(path)
    assert imported.keys() == expected.keys()
    for name, masks in expected.items():
        assert_same_masks(imported[name], masks)


def test_coco_polygons_keep_the_reported_iou(crafted: Path, tmp_path: Path) -> None:
    for tolerance in (0.0, 1.0):
        output = tmp_path / f"tolerance{tolerance}"
        report = export(crafted, output, "coco", "polygons=true", f"polygon_tolerance={tolerance}")
        fidelity = report["polygon_fidelity"]
        assert isinstance(fidelity, dict)
        gt = COCO(str(output / "annotations.json"))
        expected = original_masks(crafted)
        ious = []
        for image in gt.imgs.values():
            annotations = gt.loadAnns(gt.getAnnIds(imgIds=[image["id"]]))
            assert all(isinstance(a["segmentation"], list) for a in annotations)
            truths = expected[Path(image["file_name"]).name]
            for annotation, truth in zip(annotations, truths):
                drawn = gt.annToMask(annotation).astype(bool)
                ious.append((drawn & truth).sum() / (drawn | truth).sum())
        assert min(ious) >= fidelity["min_iou"] - 1e-6
        assert np.mean(ious) == pytest.approx(fidelity["mean_iou"], abs=1e-5)
        if tolerance == 0:
            assert fidelity["min_iou"] == 1.0
        else:
            assert fidelity["min_iou"] < 1.0


def test_coco_loads_in_supervision(scenes: Path, tmp_path: Path) -> None:
    sv = pytest.importorskip("supervision")
    export(scenes, tmp_path, "coco")
    dataset = sv.DetectionDataset.from_coco(
        images_directory_path=str(tmp_path),
        annotations_path=str(tmp_path / "annotations.json"),
        force_masks=True,
    )
    expected = original_masks(scenes)
    assert len(dataset) == len(expected) and dataset.classes == ["object"]
    for path, _, detections in dataset:
        assert_same_masks(list(detections.mask), expected[Path(path).name])


# YOLO-seg ------------------------------------------------------------------------------


def test_yolo_seg_loads_in_supervision_within_the_reported_iou(
    crafted: Path, tmp_path: Path
) -> None:
    sv = pytest.importorskip("supervision")
    fidelity = export(crafted, tmp_path, "yolo-seg")["polygon_fidelity"]
    assert isinstance(fidelity, dict)
    line = (tmp_path / "labels" / "sa_1.txt").read_text().splitlines()[0].split()
    assert line[0] == "0" and all(0 <= float(v) <= 1 for v in line[1:])
    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(tmp_path / "images"),
        annotations_directory_path=str(tmp_path / "labels"),
        data_yaml_path=str(tmp_path / "data.yaml"),
        force_masks=True,
    )
    assert dataset.classes == ["object"]
    expected, imported = original_masks(crafted), imported_masks(tmp_path)
    ious = []
    for path, _, detections in dataset:
        name = Path(path).name
        assert_same_masks(list(detections.mask), imported[name])  # both fill with OpenCV
        for mask, truth in zip(detections.mask, expected[name], strict=True):
            ious.append((mask & truth).sum() / (mask | truth).sum())
    assert len(ious) == 6 and min(ious) == pytest.approx(fidelity["min_iou"], abs=1e-6)
    assert np.mean(ious) == pytest.approx(fidelity["mean_iou"], abs=1e-5)
    # holes are exact; the cuts to the 3 parts and to the island inside the ring cost pixels
    assert sum(iou == 1.0 for iou in ious) == 4


# CVAT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("polygons", [False, True])
def test_cvat_xml_has_the_structure_cvat_imports_and_round_trips(
    crafted: Path, tmp_path: Path, polygons: bool
) -> None:
    export(crafted, tmp_path, "cvat", f"polygons={str(polygons).lower()}")
    root = ElementTree.parse(tmp_path / "annotations.xml").getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    assert [e.text for e in root.iterfind("meta/task/labels/label/name")] == ["object"]
    assert root.findtext("meta/task/size") == "2"
    images = root.findall("image")
    assert [(i.get("id"), i.get("name"), i.get("width")) for i in images] == [
        ("0", "sa_1.jpg", "64"),
        ("1", "sa_2.jpg", "64"),
    ]
    shape = "polygon" if polygons else "mask"
    keys = {"label", "source", "occluded", "z_order"}
    keys |= {"points"} if polygons else {"rle", "left", "top", "width", "height"}
    for element in root.iter(shape):
        assert keys <= set(element.attrib) and element.get("label") == "object"
    if polygons:  # the 3 parts of the "parts" mask share a group
        groups = [p.get("group_id") for p in images[1].iter("polygon")]
        assert groups.count(groups[0]) == 3 and groups[0] is not None
    expected = original_masks(crafted)
    imported = imported_masks(tmp_path / "annotations.xml")
    for name, masks in expected.items():
        assert_same_masks(imported[name], masks)


# Label Studio ---------------------------------------------------------------------------

# A mask and its brush RLE as Label Studio's converter (label-studio-converter 0.0.59,
# brush.mask2rle) encodes it: the reference for this engine's encoder and decoder.
LS_MASK = [
    [0, 0, 0, 0, 0, 0, 1],
    [0, 0, 1, 1, 1, 1, 0],
    [0, 0, 1, 1, 1, 1, 0],
    [0, 0, 1, 1, 1, 1, 0],
    [1, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0],
]
LS_RLE = [0, 0, 0, 168, 57, 27, 254, 23, 0, 143, 254, 112, 11, 255, 246, 192, 47, 255, 219, 0]
LS_RLE += [191, 255, 24, 4, 127, 248, 204, 0]


def test_brush_rle_matches_label_studio() -> None:
    mask = np.array(LS_MASK, np.uint8)
    assert brush_encode(mask) == LS_RLE
    np.testing.assert_array_equal(brush_decode(LS_RLE, height=6, width=7), mask)
    large = np.zeros((300, 400), np.uint8)  # runs longer than 65536 bytes are split
    large[40:260, 10:390] = 1
    large[100, 100] = 0
    np.testing.assert_array_equal(brush_decode(brush_encode(large), height=300, width=400), large)


@pytest.mark.parametrize("polygons", [False, True])
def test_labelstudio_tasks_round_trip(crafted: Path, tmp_path: Path, polygons: bool) -> None:
    export(crafted, tmp_path, "labelstudio", f"polygons={str(polygons).lower()}")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [
        "/data/local-files/?d=images/sa_1.jpg",
        "/data/local-files/?d=images/sa_2.jpg",
    ]
    result = tasks[0]["predictions"][0]["result"][0]
    assert result["from_name"] == "label" and result["to_name"] == "image"
    assert (result["original_width"], result["original_height"]) == (64, 48)
    config = (tmp_path / "labeling_config.xml").read_text()
    if polygons:
        assert result["type"] == "polygonlabels" and result["value"]["polygonlabels"] == ["object"]
        assert all(0 <= v <= 100 for point in result["value"]["points"] for v in point)
        assert "<PolygonLabels" in config
    else:
        assert result["type"] == "brushlabels" and result["value"]["format"] == "rle"
        assert "<BrushLabels" in config
    expected = original_masks(crafted)
    for labels in read_labels(str(tmp_path / "tasks.json")):
        name = labels.file_name.rsplit("/", 1)[-1]
        assert_same_masks([geometry.decode(o.rle) for o in labels.objects], expected[name])  # type: ignore[arg-type]


# Readers: boxes and detection ----------------------------------------------------------


def test_readers_give_boxes_as_boxes(tmp_path: Path) -> None:
    Image.new("RGB", (40, 20)).save(tmp_path / "a.jpg")
    coco = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [4, 2, 10, 8]}],
        "categories": [{"id": 3, "name": "cup"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    (tmp_path / "yolo" / "images").mkdir(parents=True)
    shutil.copy(tmp_path / "a.jpg", tmp_path / "yolo" / "images" / "a.jpg")
    (tmp_path / "yolo" / "labels").mkdir()
    (tmp_path / "yolo" / "labels" / "a.txt").write_text("0 0.225 0.3 0.25 0.4\n")
    cvat = '<annotations><version>1.1</version><meta/><image id="0" name="a.jpg" width="40" '
    cvat += 'height="20"><box label="cup" xtl="4" ytl="2" xbr="14" ybr="10"/></image></annotations>'
    (tmp_path / "cvat.xml").write_text(cvat)
    rectangle = {"x": 10, "y": 10, "width": 25, "height": 40, "rectanglelabels": ["cup"]}
    task = {"type": "rectanglelabels", "original_width": 40, "original_height": 20}
    tasks = [
        {"data": {"image": "a.jpg"}, "annotations": [{"result": [{**task, "value": rectangle}]}]}
    ]
    (tmp_path / "ls.json").write_text(json.dumps(tasks))
    for path, fmt in (
        ("coco.json", "coco"),
        ("yolo", "yolo-seg"),
        ("cvat.xml", "cvat"),
        ("ls.json", "labelstudio"),
    ):
        assert detect_format(str(tmp_path / path)) == fmt
        (labels,) = read_labels(str(tmp_path / path))
        (item,) = labels.objects
        assert item.kind == "box" and item.rle is None
        assert item.box_xywh == pytest.approx((4, 2, 10, 8)), fmt
        assert Path(labels.image) == tmp_path / (
            "yolo/images/a.jpg" if fmt == "yolo-seg" else "a.jpg"
        )


def test_every_format_is_registered_with_writer_and_reader() -> None:
    assert set(FORMATS) == {"coco", "yolo-seg", "cvat", "labelstudio"}
    for name, entry in FORMATS.items():
        assert entry.name == name and callable(entry.writer) and callable(entry.reader)


# The command -------------------------------------------------------------------------


def test_sa1b_tars_without_a_manifest_export(scenes: Path, tmp_path: Path) -> None:
    """SA-1B's own release: tars only (no manifest, no job.json)."""
    for tar in scenes.glob("sa_*.tar"):
        shutil.copy(tar, tmp_path / tar.name)
    report = export(tmp_path, tmp_path / "out", "coco", "max_images=3")
    assert report["images"] == 3
    assert len(list((tmp_path / "out" / "images").iterdir())) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["format=pascal"], "unknown format 'pascal'"),
        (["dataset=/nonexistent/data"], "not an SA-1B dataset"),
        (["polygon_tolerance=-1"], "polygon_tolerance must be >= 0"),
        (["output=s3://bucket/out"], "output must be a local folder"),
    ],
)
def test_bad_options_are_one_line_errors(
    scenes: Path, tmp_path: Path, overrides: list[str], message: str
) -> None:
    base = [f"dataset={scenes}", "format=coco", f"output={tmp_path / 'out'}", "progress=false"]
    with pytest.raises(UsageError, match=message) as caught:
        run_export(compose_config("export", [*base, *overrides]))
    assert "\n" not in str(caught.value)


def test_a_non_empty_output_needs_force(scenes: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        export(scenes, tmp_path, "coco")
    export(scenes, tmp_path, "coco", "force=true", "images=false")
    assert (tmp_path / "annotations.json").is_file() and not any((tmp_path / "images").iterdir())


def test_a_damaged_record_is_a_one_line_error(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "sa_000000.tar", "w") as tar:
        for name, data in (("sa_1.jpg", b"jpg"), ("sa_1.json", b'{"annotations": []}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UsageError, match="sa_1: not an SA-1B image record") as caught:
        export(tmp_path, tmp_path / "out", "coco")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out" / "annotations.json").exists()


# generate input=<coco json> ------------------------------------------------------------


def test_a_coco_file_lists_its_images(scenes: Path, tmp_path: Path) -> None:
    export(scenes, tmp_path / "coco", "coco")
    sources = list_sources(str(tmp_path / "coco" / "annotations.json"))
    assert [Path(s.source).name for s in sources] == [
        "sa_1.jpg",
        "sa_2.jpg",
        "sa_3.jpg",
        "sa_4.jpg",
    ]
    assert sources[0].read_bytes()[:2] == b"\xff\xd8"  # the copied JPEG
    listing = {"images": [{"id": 1, "file_name": "gone.jpg"}, {"id": 2, "file_name": "/abs/b.jpg"}]}
    (tmp_path / "list.json").write_text(json.dumps(listing))
    sources = list_sources(str(tmp_path / "list.json"))
    assert [s.source for s in sources] == ["/abs/b.jpg", str(tmp_path / "gone.jpg")]
    with pytest.raises(OSError):  # read when decoded: the job's error row
        sources[1].read_bytes()
    (tmp_path / "other.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="is not a COCO file"):
        list_sources(str(tmp_path / "other.json"))
