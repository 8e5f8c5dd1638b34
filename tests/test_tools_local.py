"""Offline engines: image k-NN over a drawn gallery, BM25 text search with extractive summaries, the CLI."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmsearch_r1.tools.__main__ import main as cli_main
from mmsearch_r1.tools.embed import (
    EfficientNetLite0,
    PixelEmbedder,
    get_embedder,
    hsv_histogram,
    lite0_weights_path,
)
from mmsearch_r1.tools.local import (
    LocalImageEngine,
    LocalTextEngine,
    build_image_index,
    build_text_index,
    extractive_summary,
    reduce_index,
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
