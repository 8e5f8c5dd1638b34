"""The offline world: entities, aliases, images, cache, and the search-engine contents it exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmsearch_r1.data.world.aliases import continent_of, strip_accents
from mmsearch_r1.data.world.build import DEFAULT_ROOT, World, WorldConfig, build_world, render_outline

CONTINENTS = {"Africa", "Asia", "Europe", "North America", "South America", "Oceania"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    # flagpy (PyPI) is always installed, so this works without the npm set-up step.
    return build_world(WorldConfig(root=tmp_path_factory.mktemp("world"), flags="flagpy"))


def test_world_has_many_real_countries_with_images_and_facts(world):
    assert len(world) >= 150
    for e in world.entities:
        assert e.id.startswith("country/") and e.name
        assert world.image_path(e.id, "flag").is_file()
        assert e.facts["capital"] and e.facts["continent"] in CONTINENTS
    assert sum("outline" in e.images for e in world.entities) >= 120
    assert sum(bool(e.wiki_text) for e in world.entities) >= 140
    fr = world.entity("country/FR")
    assert fr.name == "France" and fr.facts["capital"] == "Paris" and fr.facts["continent"] == "Europe"
    assert "France" in fr.wiki_text
    assert world.image("country/FR", "flag").mode == "RGB"


def test_aliases_cover_common_names_and_diacritics(world):
    us = world.entity("country/US")
    assert {"USA", "United States of America"} <= set(us.aliases)
    assert "Washington" in us.facts["capital_aliases"]
    co = world.entity("country/CO")
    assert co.facts["capital"] == "Bogotá" and "Bogota" in co.facts["capital_aliases"]
    assert co.facts["continent"] == "South America"
    assert "Kiev" in world.entity("country/UA").facts["capital_aliases"]
    for e in world.entities:  # no codes or non-Latin scripts as aliases
        assert e.name not in e.aliases
        assert all(a.isascii() or all(ord(c) < 0x250 for c in a) for a in e.aliases), e.aliases


def test_build_is_cached(world, tmp_path):
    again = build_world(WorldConfig(root=world.build_dir.parent, flags="flagpy"))
    assert again.manifest == world.manifest
    assert [e.id for e in again.entities] == [e.id for e in world.entities]


def test_require_outline_has_its_own_cache(world):
    root = world.build_dir.parent
    outlined = build_world(WorldConfig(root=root, flags="flagpy", require_outline=True))
    assert outlined.build_dir != world.build_dir
    assert all("outline" in e.images for e in outlined.entities) and len(outlined) < len(world)
    again = build_world(WorldConfig(root=root, flags="flagpy"))  # not the outline-only world
    assert len(again) == len(world)


def test_flags_are_validated_before_any_cache_lookup(tmp_path):
    with pytest.raises(ValueError, match="'npm', 'flagpy' or 'auto'"):
        WorldConfig(root=tmp_path, flags="svg")
    assert not list(tmp_path.iterdir())


def test_no_alias_rewards_another_country(world):
    """An alias that names a region or a sibling country ("England", "Korea") would reward wrong answers."""
    assert "England" not in world.entity("country/GB").aliases
    assert "Korea" not in world.entity("country/KR").aliases
    owner: dict[str, str] = {}
    for e in world.entities:
        for a in {strip_accents(x).lower() for x in [e.name, *e.aliases]}:
            assert owner.setdefault(a, e.id) == e.id, f"{a!r} names {owner[a]} and {e.id}"


def test_npm_flags_required_but_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch-flags"):
        build_world(WorldConfig(root=tmp_path, flags="npm"))


def test_search_gallery_records(world):
    gallery = world.search_gallery()
    assert len(gallery) == sum(len(e.images) for e in world.entities)
    for rec in gallery[:50]:
        assert set(rec) == {"image", "title", "url", "text"}
        assert Path(rec["image"]).is_file() and rec["text"]
        ent = world.entity(World.entity_of_url(rec["url"]))
        assert ent.name in rec["title"]


def test_search_corpus_has_wiki_and_fact_pages(world):
    corpus = world.search_corpus()
    assert len(corpus) > 10_000
    assert all(set(r) == {"title", "url", "text"} and r["text"] for r in corpus[:500])
    facts = {r["url"]: r for r in corpus if r["url"].startswith("world://")}
    assert "Paris" in facts["world://country/FR/facts"]["text"]
    assert len(world.search_corpus(include_wiki=False)) == len(world)


def test_render_outline():
    square = {
        "features": [{"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}}]
    }
    im = render_outline(square, 64)
    assert im.size == (64, 64) and im.getpixel((32, 32)) != (255, 255, 255)
    assert render_outline({"features": []}) is None


def test_alias_helpers():
    assert strip_accents("Côte d'Ivoire") == "Cote d'Ivoire"
    assert continent_of("Americas", "Latin America and the Caribbean", "South America") == "South America"
    assert continent_of("Americas", "Northern America") == "North America"


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "vendor/svg-country-flags/package/png250px").is_dir(),
    reason="npm flags not fetched (python -m mmsearch_r1.data.world fetch-flags)",
)
def test_npm_world_has_200_countries_without_duplicate_flags():
    w = build_world(WorldConfig())
    assert w.manifest["flags"].startswith("npm:") and len(w) >= 200
    skipped = json.dumps(w.manifest["skipped"])
    assert "same flag as France" in skipped  # French overseas departments fly France's flag
    assert Image.open(w.image_path("country/FR", "flag")).size[0] == 250
