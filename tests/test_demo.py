"""The README's demo job writes SA-1B JSON with real generator output for every sample."""

from __future__ import annotations

import json

from jobs import demo
from stages.automatic.rle import coco_decode


def test_demo_writes_sa1b_json_for_each_sample(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "OUTPUT", tmp_path)
    demo.main()
    records = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("*.json")}
    assert set(records) == {p.stem for p in demo.SAMPLES.glob("*.jpg")}
    for record in records.values():
        assert record["annotations"], "the demo must produce masks"
        first = record["annotations"][0]
        mask = coco_decode(first["segmentation"])
        assert mask.shape == (record["image"]["height"], record["image"]["width"])
        assert mask.sum() == first["area"]
    assert len(list(tmp_path.glob("*_masks.png"))) == len(records)
    assert str(tmp_path) in capsys.readouterr().out
