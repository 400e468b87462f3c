"""ReasonSeg reader on small folders written in LISA's exact format (jpg + LabelMe json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llmseg_model.data.reasonseg import ReasonSegDataset, rasterize_shapes


def write_pair(folder: Path, name: str, size=(40, 30), texts=("the red cup",), is_sentence=False, shapes=(), exif_orientation=None):
    """<name>.jpg (width x height = size) + <name>.json as LISA's ReasonSeg ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8))
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(folder / f"{name}.jpg", exif=exif)
    else:
        image.save(folder / f"{name}.jpg")
    anno = {
        "text": list(texts),
        "is_sentence": is_sentence,
        "shapes": [
            {"label": label, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}
            for label, points in shapes
        ],
        "imagePath": f"{name}.jpg",
        "imageData": None,
        "imageHeight": size[1],
        "imageWidth": size[0],
    }
    (folder / f"{name}.json").write_text(json.dumps(anno))


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_reads_samples_texts_and_masks(tmp_path):
    write_pair(
        tmp_path,
        "a",
        texts=["cup", "mug"],
        shapes=[("target", rect(2, 3, 10, 8)), ("ignore", rect(20, 20, 25, 24)), ("flag", rect(0, 0, 39, 29))],
    )
    write_pair(tmp_path, "b", texts=["Something I could drink from."], is_sentence=True, shapes=[("target", rect(5, 5, 6, 6))])
    data = ReasonSegDataset(tmp_path)
    assert len(data) == 2
    a, b = data[0], data[1]
    assert a.image_id == "a" and a.source == "reasonseg"
    # Texts as written; the phrase flag makes the model ask "What is cup in this image? ..."
    assert a.texts == ["cup", "mug"] and a.phrase
    assert b.texts == ["Something I could drink from."] and not b.phrase
    assert a.load_image().shape == (30, 40, 3) and a.load_image().dtype == np.uint8
    mask = a.load_mask()
    assert mask.shape == (30, 40) and mask.dtype == np.uint8
    expected = np.zeros((30, 40), np.uint8)
    expected[3:9, 2:11] = 1  # polygon outline included, as cv2.polylines + fillPoly draw it
    expected[20:25, 20:26] = 255
    np.testing.assert_array_equal(mask, expected)  # the "flag" shape is skipped
    assert [data.group(0), data.group(1)] == ["short", "long"]
    assert len(ReasonSegDataset(tmp_path, query_type="long")) == 1
    assert ReasonSegDataset(tmp_path, query_type="short")[0].image_id == "a"


def test_smaller_polygons_are_drawn_last():
    # LISA draws shapes largest first: an ignore hole inside a target stays ignore, and a target
    # inside a larger ignore region stays target, whatever the order in the file.
    shapes = [
        {"label": "ignore", "points": rect(4, 4, 5, 5)},
        {"label": "target", "points": rect(0, 0, 9, 9)},
        {"label": "ignore", "points": rect(10, 0, 19, 9)},
        {"label": "target", "points": rect(14, 4, 15, 5)},
    ]
    mask = rasterize_shapes(shapes, 10, 20)
    assert mask[4, 4] == 255 and mask[0, 0] == 1
    assert mask[4, 14] == 1 and mask[0, 10] == 255


def test_points_are_truncated_like_lisa():
    mask = rasterize_shapes([{"label": "target", "points": [[1.9, 1.9], [3.9, 1.2], [3.7, 3.99], [1.2, 3.5]]}], 6, 6)
    expected = np.zeros((6, 6), np.uint8)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(mask, expected)


def test_triangle_outline_is_drawn_like_lisa():
    """cv2.polylines + cv2.fillPoly: LISA's mask of this triangle has 16 pixels (PIL's polygon
    fill drew 13)."""
    mask = rasterize_shapes([{"label": "target", "points": [[0, 0], [5, 1], [3, 4]]}], 5, 7)
    assert int(mask.sum()) == 16
    assert mask[0, 0] == 1 and mask[4, 3] == 1 and mask[1, 5] == 1  # vertices and outline included


def test_equal_areas_follow_lisas_sort_order():
    """Equal areas: shapes are drawn in np.argsort(areas)[::-1] order, so with two equal shapes the
    first in the file is drawn last and wins their overlap."""
    target, ignore = {"label": "target", "points": rect(0, 0, 5, 5)}, {"label": "ignore", "points": rect(3, 3, 8, 8)}
    assert rasterize_shapes([target, ignore], 10, 10)[4, 4] == 1
    assert rasterize_shapes([ignore, target], 10, 10)[4, 4] == 255


def test_two_point_shapes_are_lines():
    mask = rasterize_shapes([{"label": "target", "points": [[1, 2], [6, 2]]}], 5, 8)
    expected = np.zeros((5, 8), np.uint8)
    expected[2, 1:7] = 1
    np.testing.assert_array_equal(mask, expected)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 40x30 with orientation 6 (rotate 90): LabelMe and cv2 see a 30x40 image.
    write_pair(tmp_path, "r", size=(40, 30), shapes=[("target", rect(1, 30, 5, 35))], exif_orientation=6)
    sample = ReasonSegDataset(tmp_path)[0]
    assert sample.load_image().shape == (40, 30, 3)
    mask = sample.load_mask()
    assert mask.shape == (40, 30) and mask[32, 3] == 1


def test_cp1252_annotation(tmp_path):
    write_pair(tmp_path, "c", shapes=[("target", rect(1, 1, 2, 2))])
    path = tmp_path / "c.json"
    path.write_bytes(path.read_text().replace("the red cup", "caf\u00e9").replace('"cup"', '"x"').encode("cp1252"))
    anno = ReasonSegDataset(tmp_path)
    assert anno[0].texts == ["caf\u00e9"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("text"), "missing field 'text'"),
        (lambda a: a.update(text=[]), "non-empty list"),
        (lambda a: a.update(is_sentence="yes"), "is_sentence"),
        (lambda a: a["shapes"][0].pop("points"), "points"),
        (lambda a: a["shapes"][0].update(points=[[1, 2, 3]]), r"\[x, y\]"),
    ],
)
def test_bad_annotation_is_a_clear_error(tmp_path, change, message):
    write_pair(tmp_path, "a", shapes=[("target", rect(1, 1, 2, 2))])
    anno = json.loads((tmp_path / "a.json").read_text())
    change(anno)
    (tmp_path / "a.json").write_text(json.dumps(anno))
    with pytest.raises(ValueError, match=message):
        ReasonSegDataset(tmp_path)


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ReasonSegDataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no <name>.json"):
        ReasonSegDataset(tmp_path)
    write_pair(tmp_path, "a", shapes=[])
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(ValueError, match="no image beside it"):
        ReasonSegDataset(tmp_path)
    with pytest.raises(ValueError, match="query_type"):
        ReasonSegDataset(tmp_path, query_type="medium")
