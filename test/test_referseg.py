"""Refer readers on fixture refs(*).p pickles + instances.json: train split only, one query per
sentence, masks from polygons and RLEs, the published split_by choice, and a pickle loader that
runs no code."""

import collections
import pickle

import numpy as np
import pytest
from lisa_fixtures import write_refer
from pycocotools import mask as mask_utils

from llmseg_model.data.referseg import ReferDataset, load_refs


def test_refcoco_train_split_gives_one_query_per_sentence(tmp_path):
    truth = write_refer(tmp_path, "refcoco", "unc")
    data = ReferDataset(tmp_path, "refcoco")
    assert len(data) == 2  # image 2 has only a val ref
    assert data.image_of(0)[:2] == ("coco2014", "COCO_train2014_000000000001")
    group = data[0]
    assert [s.texts for s in group] == [["man on the left"], ["leftmost guy"], ["person in red"]]
    assert all(s.phrase for s in group) and len({s.target for s in group}) == 3
    left, red = group[0].load_mask(), group[2].load_mask()
    np.testing.assert_array_equal(group[1].load_mask(), left)  # two sentences, one object
    assert left[10, 10] == 1 and left[30, 40] == 0
    both_parts = mask_utils.decode(mask_utils.frPyObjects([[30, 10, 50, 10, 50, 30, 30, 30], [0, 40, 10, 40, 10, 47, 0, 47]], 48, 64))
    np.testing.assert_array_equal(red, both_parts.any(axis=2).astype(np.uint8))  # polygons united
    np.testing.assert_array_equal(data[1][0].load_mask(), truth["blob"])  # an RLE target
    assert data[0][0].load_image().shape == (48, 64, 3)


def test_refcocog_reads_umd_by_default_and_other_split_files_on_request(tmp_path):
    write_refer(tmp_path, "refcocog", "umd")
    assert len(ReferDataset(tmp_path, "refcocog")) == 2
    with pytest.raises(FileNotFoundError, match=r"refs\(google\)\.p"):
        ReferDataset(tmp_path, "refcocog", split_by="google")
    write_refer(tmp_path, "refcocog", "google")
    assert ReferDataset(tmp_path, "refcocog", split_by="google").name == "refcocog (google)"


def test_refclef_images_come_from_saiapr(tmp_path):
    truth = write_refer(tmp_path, "refclef", "unc")
    data = ReferDataset(tmp_path, "refclef")
    assert data.image_of(1)[:2] == ("saiapr_tc-12", "26/images/26001")
    np.testing.assert_array_equal(data[1][0].load_mask(), truth["blob"])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_refs_pickles_holding_anything_but_plain_data_are_refused(tmp_path):
    write_refer(tmp_path, "refcoco", "unc")
    path = tmp_path / "refer_seg" / "refcoco" / "refs(unc).p"
    assert load_refs(path)[0]["sentences"][1]["sent"] == "leftmost guy"
    marker = tmp_path / "ran"
    path.write_bytes(pickle.dumps([_Payload(str(marker))], protocol=2))
    with pytest.raises(ValueError, match="refusing"):
        load_refs(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(ValueError, match="refusing"):
        load_refs(path)
    path.write_bytes(pickle.dumps([{"ref_id": 1}]))
    with pytest.raises(ValueError, match="lacks"):
        load_refs(path)
