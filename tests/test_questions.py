"""The question pool: kinds, answers, knowledge boundary, perturbed images, seeded disjoint splits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmsearch_r1.data.questions import (
    KINDS,
    TEMPLATES,
    PerturbConfig,
    QuestionConfig,
    build_pool,
    dominant_colour,
    image_search_recall,
    known_by_population,
    known_random,
    perturb_image,
    pool_counts,
    recall_by_view,
    split_entities,
)
from mmsearch_r1.data.world.build import World, WorldConfig, build_world
from mmsearch_r1.protocol.rewards import exact_match
from mmsearch_r1.tools.types import ImageHit


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(WorldConfig(root=tmp_path_factory.mktemp("world"), flags="flagpy"))


@pytest.fixture(scope="module")
def known(world):
    return known_by_population(world, 15)


@pytest.fixture(scope="module")
def pool(world, known):
    return build_pool(world, QuestionConfig(seed=3, max_entities=40, known=known))


def test_pool_has_all_kinds_and_valid_rows(pool):
    all_rows = [r for s in pool for r in pool[s]]
    assert {r["kind"] for r in all_rows} == set(KINDS)
    ids = [r["data_id"] for r in all_rows]
    assert len(ids) == len(set(ids))
    for r in all_rows[:80]:
        assert r["answer"].strip() and r["question"].strip()
        assert TEMPLATES[r["template"]][0] == r["kind"]
        assert r["image"].mode == "RGB" and max(r["image"].size) <= 192
        assert r["answer"] not in r["aliases"]


def test_test_entities_never_appear_in_training(pool):
    ents = {s: set(pool[s]["entity_id"]) for s in pool}
    assert ents["train"] and ents["test"]
    assert not ents["train"] & ents["test"] and not ents["train"] & ents["validation"]
    assert not ents["validation"] & ents["test"]


def test_category_follows_knowledge_boundary(pool, known):
    for s in pool:
        for r in pool[s]:
            expected = r["kind"] == "search_free" or r["entity_id"] in known
            assert r["known"] == (r["entity_id"] in known)
            assert r["category"] == ("search_free" if expected else "search_required")


def test_answers_are_exact_matchable_with_aliases(world):
    pool = build_pool(world, QuestionConfig(max_entities=None, templates=("flag_country", "flag_capital")))
    rows = {r["data_id"]: r for s in pool for r in pool[s]}
    us = rows["world_flag_country_us"]
    assert exact_match("USA", [us["answer"], *us["aliases"]])
    co = rows["world_flag_capital_co"]
    assert exact_match("Bogota", [co["answer"], *co["aliases"]])
    assert not exact_match("Paris", [co["answer"], *co["aliases"]])


def test_query_images_are_perturbed_not_gallery_copies(world, pool):
    r = pool["test"][0]
    view = TEMPLATES[r["template"]][1]
    clean = np.asarray(world.image(r["entity_id"], view).resize(r["image"].size), dtype=np.float32)
    assert np.abs(clean - np.asarray(r["image"], dtype=np.float32)).mean() > 3


def test_pool_is_deterministic_and_seeded(world, pool, known):
    again = build_pool(world, QuestionConfig(seed=3, max_entities=40, known=known))
    assert again["test"]["data_id"] == pool["test"]["data_id"]
    a, b = io.BytesIO(), io.BytesIO()
    pool["test"][0]["image"].save(a, "PNG")
    again["test"][0]["image"].save(b, "PNG")
    assert a.getvalue() == b.getvalue()
    other = split_entities([e.id for e in world.entities], seed=4)
    assert other != split_entities([e.id for e in world.entities], seed=3)


def test_split_entities_fractions():
    ids = [f"e{i}" for i in range(100)]
    split = split_entities(ids, (0.6, 0.1, 0.3), seed=0)
    counts = {s: list(split.values()).count(s) for s in ("train", "validation", "test")}
    assert counts == {"train": 60, "validation": 10, "test": 30}
    with pytest.raises(ValueError, match="sum"):
        split_entities(ids, (0.5, 0.1, 0.1))


def test_known_sets(world):
    top = known_by_population(world, 10)
    assert "country/CN" in top and len(top) == 10
    rnd = known_random(world, 0.5, seed=1)
    assert len(rnd) == round(0.5 * len(world)) and rnd == known_random(world, 0.5, seed=1)


def test_dominant_colour():
    red = Image.new("RGB", (60, 40), (200, 20, 30))
    assert dominant_colour(red) == "red"
    tri = Image.new("RGB", (90, 60), "white")
    tri.paste((0, 60, 170), (0, 0, 30, 60))
    tri.paste((220, 30, 40), (60, 0, 90, 60))
    assert dominant_colour(tri) is None  # three equal bands: no clear answer, no question


def test_perturb_image_size_and_seed():
    im = Image.new("RGB", (250, 160), (10, 120, 60))
    cfg = PerturbConfig(max_side=128)
    a = perturb_image(im, np.random.default_rng(0), cfg)
    b = perturb_image(im, np.random.default_rng(0), cfg)
    assert max(a.size) == 128 and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_unknown_template_is_rejected(world):
    with pytest.raises(ValueError, match="unknown templates"):
        build_pool(world, QuestionConfig(templates=("nope",)))


def test_image_search_recall_and_counts(pool):
    class Engine:  # returns a fixed country first, then an unrelated page
        answer = ""

        def search_image(self, image, *, k=5):
            return [ImageHit(title="x", url=World.url(self.answer, "flag")), ImageHit(title="y", url="z")][:k]

    ds = pool["test"].select(range(5))
    eng = Engine()
    for i, r in enumerate(ds):  # an engine that is always right has recall 1
        eng.answer = r["entity_id"]
        assert image_search_recall(ds.select([i]), eng)["recall@1"] == 1.0
    eng.answer = "country/XX"
    assert image_search_recall(ds, eng) == {"recall@1": 0.0, "recall@5": 0.0, "n": 5}
    rows = pool_counts(pool)
    assert sum(r["n"] for r in rows) == sum(len(pool[s]) for s in pool)


def test_colour_answers_hold_for_the_perturbed_query_image(world):
    """Harsh backgrounds change the dominant colour: such rows are dropped, the rest answer the query image."""
    templates = ("flag_colour",)
    mild = build_pool(world, QuestionConfig(templates=templates))
    harsh_cfg = PerturbConfig(background_prob=1.0, background_scale=(0.45, 0.55), saturation=0.0)
    harsh = build_pool(world, QuestionConfig(templates=templates, perturb=harsh_cfg))
    harsh_rows = [r for s in harsh for r in harsh[s]]
    for r in harsh_rows:
        assert dominant_colour(r["image"]) == r["answer"], r["data_id"]
    assert 0 < len(harsh_rows) < sum(len(mild[s]) for s in mild)


def test_recall_by_view_scores_visual_rows_per_view(pool):
    rows = pool["test"]
    by_pixels = {r["image"].tobytes(): r for r in rows}

    class Engine:  # right on flag queries, wrong on outline queries
        def search_image(self, image, *, k=5):
            r = by_pixels[image.tobytes()]
            return (
                [ImageHit(title="x", url=World.url(r["entity_id"], "flag"))]
                if "flag" in r["template"]
                else []
            )

    visual = [r for r in rows if r["template"] in ("flag_country", "outline_country")]
    n_flag = sum(r["template"] == "flag_country" for r in visual)
    out = recall_by_view(rows, Engine(), ks=(1,))
    assert out["all"] == {"recall@1": n_flag / len(visual), "n": len(visual)}  # text rows are not queries
    assert out["flag"] == {"recall@1": 1.0, "n": n_flag}
    assert out["outline"] == {"recall@1": 0.0, "n": len(visual) - n_flag}


# --------------------------------------------------------------------------- wordings


def test_every_template_has_many_varied_wordings_led_by_its_own_text():
    from mmsearch_r1.data.wordings import WORDINGS

    assert set(WORDINGS) == set(TEMPLATES)
    for template, texts in WORDINGS.items():
        assert texts[0] == TEMPLATES[template][2] and len(texts) >= 10 and len(set(texts)) == len(texts)
        if "{name}" in texts[0]:
            assert all("{name}" in t for t in texts), template
        # not one frame with synonyms swapped: many different openings, and no two wordings nearly the same
        assert len({t.split()[0].strip("{}").lower() for t in texts}) >= 6, template
        words = [set(t.lower().replace("?", "").replace(".", "").split()) for t in texts]
        for i in range(len(words)):
            for j in range(i + 1, len(words)):
                overlap = len(words[i] & words[j]) / len(words[i] | words[j])
                assert overlap < 0.75, (template, texts[i], texts[j])


def test_wording_split_is_seeded_disjoint_and_keeps_the_template_text_in_training():
    from mmsearch_r1.data.wordings import WORDINGS, split_wordings

    split = split_wordings(0)
    for template, parts in split.items():
        train, held = set(parts["train"]), set(parts["heldout"])
        assert 0 in train and not train & held and train | held == set(range(len(WORDINGS[template])))
        assert len(held) == 4  # a third of 12
    assert split_wordings(0) == split and split_wordings(1) != split


def test_heldout_wordings_ask_the_same_rows_in_other_words(world, pool, known):
    from datasets import Image as Image_

    from mmsearch_r1.data.wordings import split_wordings, wording_of

    cfg = dict(seed=0, max_entities=12, known=known)
    held = build_pool(world, QuestionConfig(wordings="heldout", **cfg))
    base = build_pool(world, QuestionConfig(**cfg))
    held_ids = split_wordings(0)
    for split in ("train", "test"):
        a, b = (
            base[split].cast_column("image", Image_(decode=False)),
            held[split].cast_column("image", Image_(decode=False)),
        )
        assert len(a) == len(b) and set(b["wording"]) <= set(range(1, 12))
        for ra, rb in zip(a, b, strict=True):
            assert rb["data_id"] == f"{ra['data_id']}_w{rb['wording']}"
            assert (ra["answer"], ra["entity_id"], ra["image"]["bytes"]) == (
                rb["answer"],
                rb["entity_id"],
                rb["image"]["bytes"],
            )
            assert rb["wording"] in held_ids[rb["template"]]["heldout"] and rb["question"] != ra["question"]
    trained = build_pool(world, QuestionConfig(wordings="train", wordings_per_row=3, **cfg))["train"]
    assert len(trained) == 3 * len(base["train"])
    assert all(r["wording"] in held_ids[r["template"]]["train"] for r in trained)
    assert trained[0]["question"] == wording_of(
        trained[0]["template"], trained[0]["wording"], world.entity(trained[0]["entity_id"]).name
    )
    with pytest.raises(ValueError, match="wordings must be"):
        build_pool(world, QuestionConfig(wordings="paraphrased", **cfg))
