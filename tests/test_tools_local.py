"""Offline engines: image k-NN over a drawn gallery (CNN, colour-layout views, the cascade between them,
query straightening), index rebuilds, BM25 text search with extractive summaries, the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmsearch_r1.data.questions import PerturbConfig, perturb_image
from mmsearch_r1.tools.__main__ import main as cli_main
from mmsearch_r1.tools.embed import (
    FEATURES_VERSION,
    EfficientNetLite0,
    PixelEmbedder,
    get_embedder,
    hsv_histogram,
    lite0_weights_path,
)
from mmsearch_r1.tools.layout import (
    LayoutViews,
    gallery_views,
    layout_vector,
    query_views,
    straighten,
    trim_busy_border,
)
from mmsearch_r1.tools.local import (
    LocalImageEngine,
    LocalTextEngine,
    build_image_index,
    build_text_index,
    extractive_summary,
    reduce_index,
    split_sentences,
    tokenize,
)
from mmsearch_r1.tools.types import ImageHit, ImageSearchEngine, SearchError, TextHit, TextSearchEngine

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 220, 20)}
SHAPES = ("circle", "square", "stripes")


def draw(colour: str, shape: str, size: int = 96) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    c = COLOURS[colour]
    if shape == "circle":
        d.ellipse((15, 15, size - 15, size - 15), fill=c)
    elif shape == "square":
        d.rectangle((10, 10, size - 10, size - 10), fill=c)
    else:
        for y in range(0, size, 24):
            d.rectangle((0, y, size, y + 11), fill=c)
    return im


@pytest.fixture(scope="module")
def gallery():
    return [
        {"image": draw(c, s), "title": f"{c} {s}", "url": f"test://{c}/{s}", "text": f"A {c} {s}."}
        for c in COLOURS
        for s in SHAPES
    ]


@pytest.fixture(scope="module")
def image_index(tmp_path_factory, gallery):
    return build_image_index(gallery, tmp_path_factory.mktemp("img"), embedder="pixel", show_progress=False)


CORPUS = [
    {"title": "Eiffel Tower", "url": "w://eiffel", "text": "The Eiffel Tower is a lattice tower in Paris. "
     "It is 330 metres tall. It was designed by the company of Gustave Eiffel. Tourists visit it daily."},
    {"title": "Giant panda", "url": "w://panda", "text": "The giant panda is a bear native to China. "
     "Its diet is almost entirely bamboo. Pandas are black and white."},
    {"title": "Andorra", "url": "w://andorra", "text": "Andorra is a small country in the Pyrenees. "
     "Its capital is Andorra la Vella. Catalan is the official language."},
    {"title": "Mount Everest", "url": "w://everest", "text": "Mount Everest is the highest mountain above "
     "sea level. It stands 8849 metres high on the border of Nepal and China."},
] + [{"title": f"Filler {i}", "url": f"w://f{i}", "text": f"Filler page number {i} about nothing in particular."}
     for i in range(20)]  # fmt: skip


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    return build_text_index(CORPUS, tmp_path_factory.mktemp("txt"), show_progress=False)


def test_image_search_finds_exact_and_perturbed_query(image_index, gallery):
    eng = LocalImageEngine.load(image_index)
    assert isinstance(eng, ImageSearchEngine)
    hits = eng.search_image(draw("blue", "stripes"), k=3)
    assert len(hits) == 3 and all(isinstance(h, ImageHit) for h in hits)
    assert hits[0].title == "blue stripes" and hits[0].url == "test://blue/stripes"
    assert hits[0].thumbnail is not None and hits[0].thumbnail.size[0] <= 256
    assert hits[0].score >= hits[1].score >= hits[2].score
    # an upscaled, slightly cropped copy still finds its source
    q = draw("red", "circle").resize((150, 150)).crop((2, 2, 148, 148))
    assert eng.search_image(q, k=1)[0].title == "red circle"


def test_image_search_k_larger_than_gallery_and_async(image_index, gallery):
    eng = LocalImageEngine.load(image_index)
    hits = asyncio.run(eng.asearch_image(draw("green", "square"), k=100))
    assert len(hits) == len(gallery) and hits[0].title == "green square"


def test_large_gallery_is_projected_without_changing_the_ranking(tmp_path, gallery, image_index):
    exact = LocalImageEngine.load(image_index)
    small = build_image_index(
        gallery, tmp_path, embedder="pixel", show_progress=False, exact_below=5, reduced_dim=16
    )
    red = LocalImageEngine.load(small)
    r = min(16, len(gallery))  # a 12-image gallery spans at most 12 dimensions
    assert red.emb.shape == (len(gallery), r) and red.proj.shape == (320, r)
    for c in COLOURS:
        q = draw(c, "square").resize((120, 120))
        assert [h.title for h in red.search_image(q, k=3)] == [h.title for h in exact.search_image(q, k=3)]
    assert reduce_index(small, 8) == small and LocalImageEngine.load(small).proj.shape == (
        320,
        r,
    )  # idempotent


def test_image_index_rejects_bad_records(tmp_path):
    with pytest.raises(ValueError, match="'image' and 'title'"):
        build_image_index([{"title": ""}], tmp_path, embedder="pixel", show_progress=False)
    with pytest.raises(ValueError, match="empty gallery"):
        build_image_index([], tmp_path, embedder="pixel", show_progress=False)
    with pytest.raises(FileNotFoundError, match="build_image_index"):
        LocalImageEngine.load(tmp_path / "nothing")


def test_pixel_embedder_is_deterministic_and_normalised():
    e = PixelEmbedder()
    a = e.embed([draw("red", "circle"), draw("red", "circle")])
    assert a.shape == (2, 320) and np.allclose(a[0], a[1])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    h = hsv_histogram(draw("yellow", "square"))
    assert h.shape == (128,) and abs(h.sum() - 1) < 1e-5
    with pytest.raises(ValueError, match="unknown image embedder"):
        get_embedder("clip")


def test_efficientnet_lite0_loads_packaged_weights_strictly():
    import torch

    model = EfficientNetLite0()
    sd = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    # TF "SAME" padding: 224 -> 7x7 final map; odd sizes work too
    with torch.inference_mode():
        assert model.eval().feature_map(torch.zeros(1, 3, 224, 224)).shape == (1, 1280, 7, 7)
        assert model.feature_map(torch.zeros(1, 3, 97, 130)).shape == (1, 1280, 4, 5)


def test_efficientnet_embedder_ranks_same_drawing_first(tmp_path, gallery):
    small = gallery[:6]
    idx = build_image_index(small, tmp_path, embedder="effnet-lite0", show_progress=False)
    eng = LocalImageEngine.load(idx)
    q = draw("red", "square", size=200)
    hits = eng.search_image(q, k=2)
    assert hits[0].title == "red square"
    assert eng.emb.shape == (6, 5120 + 128)
    assert eng.views.shape == (6, 28, 432) and eng.score_weights == (0.1, 1.0)
    meta = json.loads((idx / "meta.json").read_text())
    assert meta["features_version"] == FEATURES_VERSION and meta["views"] == 28


# -- colour-layout views ----------------------------------------------------------------------------
PALETTE = [(206, 17, 38), (255, 255, 255), (0, 56, 147), (0, 122, 61), (252, 209, 22), (20, 20, 20)]
TRIPLES = list(itertools.permutations(range(6), 3))


def flag(i: int) -> Image.Image:
    """Flag-like drawing number i: three stripes (colours from i // 4, vertical when i // 2 is odd), and
    for odd i a disc in the middle (so flags 2k and 2k + 1 differ only by it)."""
    ia, ib, ic = TRIPLES[(i // 4 * 7) % len(TRIPLES)]
    im = Image.new("RGB", (180, 120), PALETTE[ia])
    d = ImageDraw.Draw(im)
    if (i // 2) % 2:
        d.rectangle((60, 0, 119, 119), fill=PALETTE[ib])
        d.rectangle((120, 0, 179, 119), fill=PALETTE[ic])
    else:
        d.rectangle((0, 40, 179, 79), fill=PALETTE[ib])
        d.rectangle((0, 80, 179, 119), fill=PALETTE[ic])
    if i % 2:
        d.ellipse((70, 40, 110, 80), fill=PALETTE[(ib + 3) % 6])
    return im


def on_fill(im: Image.Image, deg: float, fill=(90, 200, 120), pad: int = 0) -> Image.Image:
    out = im.rotate(deg, Image.BILINEAR, expand=True, fillcolor=fill)
    if pad:
        canvas = Image.new("RGB", (out.width + 2 * pad, out.height + 2 * pad), fill)
        canvas.paste(out, (pad, pad))
        out = canvas
    return out


def cos(a: Image.Image, b: Image.Image) -> float:
    return float(layout_vector(a) @ layout_vector(b))


@pytest.mark.parametrize("deg", [-9.0, -4.0, 6.0, 10.0])
def test_straighten_undoes_rotation_on_a_uniform_fill(deg):
    src = flag(1)
    photo = on_fill(src, deg, pad=12)
    assert cos(photo, src) < 0.8  # the raw photo is a poor match
    s = straighten(photo)
    assert s is not None and abs(s.width - 180) <= 4 and abs(s.height - 120) <= 4
    assert cos(s, src) > 0.97


def test_straighten_and_trim_refuse_photos_without_a_fill_or_a_noisy_border():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    assert straighten(noise) is None
    assert straighten(flag(2)) is None  # corners of different colours: nothing to straighten
    assert trim_busy_border(flag(2)) is None
    assert len(query_views(flag(2))) == 1


def test_trim_busy_border_finds_a_picture_pasted_on_noise():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)  # ~5 px cells, as in pool queries
    canvas = Image.fromarray(small).resize((240, 160), Image.BILINEAR)
    canvas.paste(flag(4), (25, 20))
    t = trim_busy_border(canvas)
    assert t is not None and abs(t.width - 180) <= 4 and abs(t.height - 120) <= 4
    assert cos(t, flag(4)) > 0.97


def test_gallery_views_are_the_image_and_grids_of_crops():
    views = gallery_views(flag(0), fracs=(0.9,))
    assert len(views) == 10 and views[0].size == (180, 120)
    assert {v.size for v in views[1:]} == {(162, 108)}
    lv = LayoutViews(size=8, fracs=(0.9, 0.8))
    g = lv.gallery([flag(0), flag(1)])
    assert g.shape == (2, 19, 192) and np.allclose(np.linalg.norm(g, axis=-1), 1, atol=1e-5)
    assert 1 <= lv.query(on_fill(flag(0), 5)).shape[0] <= 4
    with pytest.raises(ValueError, match="crop fractions"):
        LayoutViews(fracs=(1.5,))


@pytest.fixture(scope="module")
def flag_gallery():
    return [{"image": flag(i), "title": f"flag {i}", "url": f"test://flag/{i}"} for i in range(40)]


def test_layout_views_find_perturbed_flags_where_plain_pixels_fail(flag_gallery, tmp_path):
    """Query images made like the question pool's (crop, rotation on a random fill, jitter, blur,
    JPEG; half of them pasted on a noisy or plain canvas)."""
    eng = LocalImageEngine.load(
        build_image_index(flag_gallery, tmp_path / "l", embedder="layout", show_progress=False)
    )
    assert eng.score_weights == (0.0, 1.0) and eng.views.shape == (40, 28, 432)
    queries = [
        (i, perturb_image(flag(i), np.random.default_rng(100 + i), PerturbConfig(background_prob=bg)))
        for bg in (0.0, 1.0)
        for i in range(40)
    ]
    assert [eng.search_image(q, k=1)[0].title for _, q in queries] == [f"flag {i}" for i, _ in queries]
    plain = LocalImageEngine.load(
        build_image_index(flag_gallery, tmp_path / "p", embedder="pixel", show_progress=False)
    )
    assert sum(plain.search_image(q, k=1)[0].title == f"flag {i}" for i, q in queries) < len(queries)


def test_cascade_skips_the_cnn_only_when_views_decide(tmp_path):
    gallery = [{"image": flag(i), "title": f"flag {i}", "url": ""} for i in range(6)]
    eng = LocalImageEngine.load(build_image_index(gallery, tmp_path, show_progress=False))
    q = perturb_image(flag(3), np.random.default_rng(0), PerturbConfig(background_prob=0.0))
    eng.cascade = False
    full = eng.rank(q, k=6)
    eng.cascade = True
    calls = []
    embed = eng.embedder.embed
    eng.embedder.embed = lambda ims: calls.append(1) or embed(ims)
    fast = eng.rank(q, k=6)
    assert fast[0][0] == full[0][0] == 3
    lay = eng.score_weights[1] * (eng.views.reshape(-1, 432) @ eng.embedder.views.query(q).T).reshape(
        6, -1
    ).max(1)
    second, first = np.sort(lay)[-2:]
    assert bool(calls) == (first - second <= eng.score_weights[0])
    if calls:  # a query the views leave in doubt runs the CNN
        assert fast == full
    eng.embedder.embed = lambda ims: calls.append(1) or embed(ims)
    blank = Image.new("RGB", (60, 40), (200, 200, 200))  # no layout at all: views cannot decide
    eng.rank(blank, k=1)
    assert calls


def test_index_build_swaps_in_whole_and_keeps_the_old_index_on_failure(tmp_path, gallery):
    out = tmp_path / "idx"
    build_image_index(gallery, out, embedder="pixel", show_progress=False)
    with pytest.raises(FileNotFoundError):
        build_image_index([{"image": str(tmp_path / "missing.png"), "title": "x"}], out, embedder="pixel",
                          show_progress=False)  # fmt: skip
    assert len(LocalImageEngine.load(out).records) == len(gallery)
    build_image_index(gallery[:3], out, embedder="layout", show_progress=False)
    eng = LocalImageEngine.load(out)
    assert len(eng.records) == 3 and eng.views is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no side folders left


def test_world_index_is_rebuilt_when_its_features_are_stale(tmp_path, monkeypatch, gallery):
    from mmsearch_r1.tools import engines

    class FakeWorld:
        def search_gallery(self):
            return gallery[:3]

        def search_corpus(self):
            return CORPUS[:3]

    builds = []
    monkeypatch.setattr(
        "mmsearch_r1.data.world.build.build_world", lambda *a, **k: builds.append(1) or FakeWorld()
    )
    engines.world_indexes(tmp_path)
    meta = tmp_path / "image" / "meta.json"
    assert len(builds) == 1 and json.loads(meta.read_text())["features_version"] == FEATURES_VERSION
    engines.world_indexes(tmp_path)
    assert len(builds) == 1  # fresh: kept
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"features_version": "2"}))
    (tmp_path / "image" / "views.npy").unlink()  # what a version-2 index looks like
    old = LocalImageEngine.load(tmp_path / "image")
    assert old.views is None and old.score_weights == (1.0, 0.0)  # still usable: CNN only
    engines.world_indexes(tmp_path)
    assert len(builds) == 2 and json.loads(meta.read_text())["features_version"] == FEATURES_VERSION
    assert LocalImageEngine.load(tmp_path / "image").views.shape == (3, 28, 432)


def test_text_search_bm25_and_summary(text_index):
    eng = LocalTextEngine.load(text_index)
    assert isinstance(eng, TextSearchEngine)
    hits = eng.search_text("How tall is the Eiffel Tower?", k=3)
    assert all(isinstance(h, TextHit) for h in hits)
    assert hits[0].title == "Eiffel Tower" and hits[0].url == "w://eiffel"
    assert "330 metres" in hits[0].summary and hits[0].summary.startswith("The Eiffel Tower")
    assert eng.search_text("capital of Andorra", k=1)[0].summary.count("Andorra la Vella") == 1
    assert asyncio.run(eng.asearch_text("panda bamboo diet", k=2))[0].title == "Giant panda"


def test_text_search_edge_cases(text_index, tmp_path):
    eng = LocalTextEngine.load(text_index)
    assert eng.search_text("zzzqqq unknownword", k=5) == []
    assert eng.search_text("the of and", k=5) == []  # stopwords only
    assert len(eng.search_text("filler page", k=50)) == 20
    with pytest.raises(SearchError, match="empty"):
        eng.search_text("   ", k=3)
    with pytest.raises(FileNotFoundError, match="build_text_index"):
        LocalTextEngine.load(tmp_path)
    with pytest.raises(ValueError, match="empty corpus"):
        build_text_index([], tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="mode"):
        LocalTextEngine.load(text_index, mode="magic")


def test_sentences_do_not_end_at_abbreviations():
    text = "The capital of Grenada is St. George's. Also known as: U.S. Virgin Islands. Mt. Fuji is high."
    assert split_sentences(text) == [
        "The capital of Grenada is St. George's.",
        "Also known as: U.S. Virgin Islands.",
        "Mt. Fuji is high.",
    ]
    assert "St. George's" in extractive_summary("Grenada is an island. " + text, "capital of Grenada")


def test_extractive_summary_prefers_query_sentences_in_page_order():
    text = "Alpha is a city. It has a river. Its mayor is Bob Smith. The weather is mild. Bob likes tea."
    s = extractive_summary(text, "who is the mayor of Alpha", max_sentences=2)
    assert s == "Alpha is a city. Its mayor is Bob Smith."
    assert extractive_summary("", "x") == ""
    long = extractive_summary("word " * 500 + ".", "word", max_chars=50)
    assert len(long) <= 50 and long.endswith("…")
    assert tokenize("The Capital of FRANCE?") == ["capital", "france"]


def test_cli_text_and_image(text_index, image_index, tmp_path, capsys):
    root = text_index.parent / "cli_index"
    root.mkdir(exist_ok=True)
    for name, src in (("text", text_index), ("image", image_index)):
        if not (root / name).exists():
            (root / name).symlink_to(src)
    assert (
        cli_main(["text", "Mount Everest metres high", "--index-dir", str(root), "--k", "2", "--json"]) == 0
    )
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["title"] == "Mount Everest" and "8849" in rows[0]["summary"]
    path = tmp_path / "q.png"
    draw("yellow", "circle").save(path)
    assert cli_main(["image", str(path), "--index-dir", str(root), "--k", "1"]) == 0
    assert "yellow circle" in capsys.readouterr().out
    assert cli_main(["text", "x", "--index-dir", str(tmp_path / "none")]) == 2
    assert "build" in capsys.readouterr().err


@pytest.mark.slow
def test_dense_and_hybrid_modes_cache_embeddings(tmp_path):
    idx = build_text_index(CORPUS, tmp_path, show_progress=False)
    hyb = LocalTextEngine.load(idx, mode="hybrid")
    assert hyb.search_text("Eiffel Tower height", k=2)[0].title == "Eiffel Tower"
    assert (idx / "dense.f16").exists() and 0 < int(np.load(idx / "dense_mask.u8").sum()) < len(CORPUS)
    dense = LocalTextEngine.load(idx, mode="dense")
    assert dense.search_text("what do pandas eat", k=1)[0].title == "Giant panda"
    assert int(np.load(idx / "dense_mask.u8").sum()) == len(CORPUS)
