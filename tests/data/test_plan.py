"""src/data/plan.py: the plan as a type, its entries kept as written, its topology checked once."""
import json
import pickle

import pytest

from src.data.plan import Plan
from src.data.preprocessed import load_plan
from src.errors import UserError
from tests.data.preprocessed_fixture import make_plan, make_preprocessed_folder


@pytest.fixture
def pre(tmp_path):
    make_preprocessed_folder(tmp_path)
    return tmp_path


def test_plan_identity_follows_the_voxel_deciding_entries_only(pre):
    plan = load_plan(pre)
    identity = plan.identity
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).identity == identity
    assert plan.replace(patch_size=[8, 8, 8], labels={"background": 0, "kidney": 1}).identity == identity
    assert plan.replace(target_spacing=[3.0, 1.6, 1.7]).identity != identity
    assert plan.replace(intensity=dict(plan.intensity, std=51.0)).identity != identity
    assert plan.replace(normalization="ct_clip_scale", clip_window=[-1.0, 1.0]).identity != identity


def test_a_plan_keeps_its_entries_and_their_order_and_never_changes_in_place(pre):
    written = json.loads((pre / "plans.json").read_text())
    plan = load_plan(pre)
    assert plan.to_json() == written and list(plan.to_json()) == list(written)
    plan.write(pre / "copy.json")
    assert json.loads((pre / "copy.json").read_text()) == written
    changed = plan.replace(patch_size=[8, 8, 8], note="extra")
    assert plan.patch_size == written["patch_size"] and changed.patch_size == [8, 8, 8]
    assert list(changed.to_json())[-1] == "note" and changed.get("note") == "extra"
    source = make_plan(["a"])
    from_dict = Plan.from_json(source)
    source["patch_size"][0] = 99
    assert from_dict.patch_size[0] != 99
    assert pickle.loads(pickle.dumps(from_dict)) == from_dict


def test_typed_entries(pre):
    plan = load_plan(pre)
    assert plan.num_channels == 1 and plan.num_classes == 3 and plan.labels["tumor"] == 2
    assert plan.strides[0] == [1, 1, 1] and len(plan.conv_kernel_sizes) == len(plan.strides)
    assert plan.normalization == "ct" and plan.clip_window is None and plan.tasks is None
    older = {key: value for key, value in plan.to_json().items() if key != "num_channels"}
    assert Plan.from_json(older).num_channels == 1


def test_an_incomplete_or_malformed_topology_is_one_user_error():
    with pytest.raises(UserError, match="patch_size"):
        Plan.from_json({"strides": [[1, 1, 1]]})
    with pytest.raises(UserError, match="3 values"):
        Plan.from_json(dict(make_plan(["a"]), patch_size=[16, 16]))
    with pytest.raises(UserError, match="JSON object"):
        Plan.from_json([1, 2])
