"""Search-balanced curation: labelling rule, ratio sampling, and the rollout-callable contract."""

from __future__ import annotations

import pytest
from PIL import Image

from mmsearch_r1.data.curation import (
    CurationConfig,
    Outcome,
    balanced_sample,
    curate,
    label_outcomes,
    simulated_rollout_fn,
)
from mmsearch_r1.data.schema import rows_to_dataset

R, W = Outcome(True), Outcome(False)
IMG_R, TXT_R, MIX_R = Outcome(True, ("image",)), Outcome(True, ("text",)), Outcome(True, ("image", "text"))
IMG_W = Outcome(False, ("image",))


def test_outcome_search_type():
    assert R.search_type is None and IMG_R.search_type == "image" and MIX_R.search_type == "mixed"
    assert Outcome(True, ("text", "text")).search_type == "text"


@pytest.mark.parametrize(
    ("no_search", "with_search", "expected"),
    [
        ([W, W], [W, IMG_W], ("dropped", None)),
        ([W, R], [IMG_W, IMG_W], ("search_free", None)),
        ([W, W], [R, IMG_W], ("search_free", None)),  # answered directly although search was allowed
        ([W, W], [IMG_R, IMG_W], ("search_required", "image")),
        ([W, W], [TXT_R, MIX_R, MIX_R], ("search_required", "mixed")),
        ([W, W], [TXT_R, IMG_R], ("search_required", "image")),  # ties: image < text < mixed
    ],
)
def test_label_outcomes(no_search, with_search, expected):
    assert label_outcomes(no_search, with_search) == expected


def test_balanced_sample_hits_ratio():
    labels = {f"f{i}": "search_free" for i in range(100)} | {f"r{i}": "search_required" for i in range(100)}
    labels |= {"d": "dropped"}
    keep = balanced_sample(labels, 0.32, seed=0)
    n_free = sum(i.startswith("f") for i in keep)
    assert len(keep) == 147 and n_free == 47 and "d" not in keep
    assert balanced_sample(labels, 0.32, seed=0) == keep
    assert len(balanced_sample(labels, 0.5, n_target=20)) == 20
    assert len(balanced_sample(labels, None)) == 200
    with pytest.raises(ValueError):
        balanced_sample(labels, 1.5)


def _rows(n=6):
    return rows_to_dataset(
        [
            {
                "data_id": f"q{i}",
                "image": Image.new("RGB", (4, 4)),
                "question": f"Q{i}?",
                "answer": "a",
                "aliases": [],
                "category": None,
                "kind": "visual_knowledge",
                "source": "t",
            }
            for i in range(n)
        ]  # fmt: skip
    )


# A deterministic policy: q0 never right; q1 right without search; q2, q3 right only with image search;
# q4 right only with image+text; q5 right only with text.
PLAN = {
    "q0": ([W], [IMG_W]),
    "q1": ([R], [R]),
    "q2": ([W], [IMG_R]),
    "q3": ([W], [IMG_R]),
    "q4": ([W], [MIX_R]),
    "q5": ([W], [TXT_R]),
}


def det_rollout(rows, *, allow_search, k):
    return [[PLAN[r["data_id"]][int(allow_search)][0]] * k for r in rows]


def test_curate_labels_drops_and_balances():
    res = curate(_rows(), det_rollout, CurationConfig(k=3, free_ratio=None, batch_size=4))
    assert res.labels == {"q0": "dropped", "q1": "search_free", "q2": "search_required",
                          "q3": "search_required", "q4": "search_required", "q5": "search_required"}  # fmt: skip
    assert res.search_type["q4"] == "mixed" and res.search_type["q5"] == "text"
    ds = res.dataset
    assert "q0" not in ds["data_id"] and len(ds) == 5
    cat = dict(zip(ds["data_id"], ds["category"], strict=True))
    assert cat["q1"] == "search_free" and cat["q2"] == "search_required"
    assert dict(zip(ds["data_id"], ds["acc_no_search"], strict=True))["q1"] == 1.0
    assert res.stats["search_type"] == {"image": 2, "mixed": 1, "text": 1}
    half = curate(_rows(), det_rollout, CurationConfig(k=2, free_ratio=0.5, min_keep=0))
    assert half.stats["out_search_free"] == half.stats["out_search_required"] == 1
    with pytest.raises(ValueError, match="keeps 2 of 5 labelled rows"):  # 1 free: 0.5 keeps 2 of 5
        curate(_rows(), det_rollout, CurationConfig(k=2, free_ratio=0.5))


def test_balanced_sample_refuses_to_shrink_silently():
    labels = {f"f{i}": "search_free" for i in range(3)} | {f"r{i}": "search_required" for i in range(97)}
    with pytest.raises(
        ValueError, match=r"keeps 9 of 100 .*3 search_free, 97 search_required.*free_ratio=None"
    ):
        balanced_sample(labels, 0.32)
    only_req = {f"r{i}": "search_required" for i in range(10)}
    with pytest.raises(ValueError, match="0 search_free"):
        balanced_sample(only_req, 0.32)
    assert balanced_sample(only_req, 0.0) == sorted(only_req)  # the ratio needs no free rows
    assert len(balanced_sample(labels, 0.32, min_keep=0)) == 9  # explicit opt-out
    assert len(balanced_sample(labels, 0.03)) == 100  # a ratio near the labelled share keeps all
    assert balanced_sample({"d": "dropped"}, 0.32) == []  # nothing labelled: nothing to complain about


def test_rollout_contract_is_checked():
    def short(rows, *, allow_search, k):
        return [[W] * (k - 1) for _ in rows]

    def cheats(rows, *, allow_search, k):
        return [[IMG_R] * k for _ in rows]

    with pytest.raises(ValueError, match="must return"):
        curate(_rows(2), short, CurationConfig(k=2))
    with pytest.raises(ValueError, match="allow_search=False"):
        curate(_rows(2), cheats, CurationConfig(k=2))


def test_simulated_rollout_fn_is_deterministic_and_respects_knowledge():
    rows = [{"data_id": "a", "kind": "visual_knowledge", "entity_id": "country/FR"},
            {"data_id": "b", "kind": "textual_knowledge", "entity_id": "country/TV"}]  # fmt: skip
    fn = simulated_rollout_fn({"country/FR"}, p_known=1.0, p_unknown=0.0, p_search=1.0)
    no, yes = fn(rows, allow_search=False, k=4), fn(rows, allow_search=True, k=4)
    assert all(o.correct and not o.searches for o in no[0]) and not any(o.correct for o in no[1])
    assert all(o.correct and o.searches == ("image", "text") for o in yes[1])
    assert fn(rows, allow_search=True, k=4) == yes


def test_curate_with_the_tiny_policy_through_the_inference_rollout():
    """Any loadable policy plugs in via rollout.curation_rollout_fn; a random tiny one mostly fails."""
    from mmsearch_r1.agent.env import make_env_factory
    from mmsearch_r1.agent.rollout import HFGenerator, RolloutConfig, curation_rollout_fn
    from mmsearch_r1.policy.tiny import build_tiny_policy, vision_token_ids
    from mmsearch_r1.tools.types import Engines, ImageHit, TextHit

    class Img:
        name = "fake-image"

        def search_image(self, image, *, k=5):
            return [ImageHit(title="Flag of Peru", url="world://country/PE/flag", thumbnail=image.copy())]

    class Txt:
        name = "fake-text"

        def search_text(self, query, *, k=5):
            return [TextHit(title="Peru", url="p", summary="Lima is the capital of Peru.")]

    model, processor = build_tiny_policy()
    cfg = RolloutConfig(temperature=1.0, max_new_tokens=4, batch_size=4, progress=False)
    gen = HFGenerator(model, processor, cfg, suppress_tokens=vision_token_ids(processor))
    fn = curation_rollout_fn(processor, gen, make_env_factory(Engines(Img(), Txt())), cfg)
    res = curate(_rows(2), fn, CurationConfig(k=2, free_ratio=0.5, min_keep=0))
    assert set(res.labels) == {"q0", "q1"}
    assert set(res.labels.values()) <= {"dropped", "search_free", "search_required"}
    assert res.stats["n_in"] == 2 and len(res.dataset) == res.stats["n_out"] <= 2
