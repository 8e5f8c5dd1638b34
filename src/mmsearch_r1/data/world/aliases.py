"""Hand-written tables for the offline world: answer aliases and a few fact corrections.

What it does: common alternative country names, alternative or former capital names, continent
mapping (countryinfo's "Americas" is split into North/South America), transcontinental countries, and
the Wikipedia title for countries whose name alone does not find their page. These make gold answers
exact-matchable in the forms people and models actually write (e.g. "USA", "Kiev", "Bogota").

What it does not: no I/O; the world builder (``data.world.build``) applies these tables (``country_aliases``
joins them with a countryinfo record). Written by hand because
no installed package carries English exonyms or former capital names.
"""

from __future__ import annotations

import unicodedata


def strip_accents(s: str) -> str:
    """ "Bogotá" -> "Bogota", "Côte d'Ivoire" -> "Cote d'Ivoire" (drops combining marks only)."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", s) if not unicodedata.combining(ch))


COUNTRY_ALIASES: dict[str, list[str]] = {
    "US": ["USA", "US", "U.S.", "U.S.A.", "America", "United States of America"],
    "GB": ["UK", "U.K.", "Britain", "Great Britain"],  # not "England": a part, not the country
    "RU": ["Russian Federation"],
    "KR": ["South Korea", "Korea, South", "Republic of Korea"],  # not "Korea": ambiguous with KP
    "KP": ["North Korea", "Korea, North", "DPRK"],
    "CZ": ["Czechia", "Czech Republic"],
    "CI": ["Ivory Coast", "Cote d'Ivoire", "Côte d'Ivoire"],
    "MM": ["Burma"],
    "SZ": ["Eswatini", "Swaziland"],
    "MK": ["North Macedonia", "Macedonia"],
    "CD": ["DR Congo", "DRC", "Congo-Kinshasa", "Democratic Republic of Congo"],
    "CG": ["Congo", "Congo-Brazzaville", "Republic of Congo"],
    "CV": ["Cabo Verde"],
    "TL": ["Timor-Leste", "East Timor"],
    "VA": ["Vatican", "Vatican City", "Holy See"],
    "FM": ["Micronesia"],
    "LA": ["Laos", "Lao PDR"],
    "VN": ["Viet Nam"],
    "NL": ["Holland", "The Netherlands"],
    "GM": ["Gambia"],
    "BS": ["Bahamas"],
    "TR": ["Türkiye", "Turkiye"],
    "AE": ["UAE", "Emirates"],
    "PS": ["State of Palestine"],
    "TW": ["Republic of China"],
    "BA": ["Bosnia"],
    "TT": ["Trinidad"],
    "VC": ["Saint Vincent", "St. Vincent and the Grenadines"],
    "KN": ["St. Kitts and Nevis", "Saint Kitts"],
    "LC": ["St. Lucia"],
    "ST": ["Sao Tome and Principe"],
}
"""ISO alpha-2 -> extra accepted names (added before countryinfo's own altSpellings)."""

CAPITAL_OVERRIDES: dict[str, str] = {
    "VA": "Vatican City",
    "KZ": "Astana",
    "HK": "Hong Kong",
    "PF": "Papeete",
}
"""ISO alpha-2 -> capital, where countryinfo is outdated or awkward."""

CAPITAL_ALIASES: dict[str, list[str]] = {
    "US": ["Washington", "Washington, D.C.", "Washington DC", "Washington D.C."],
    "UA": ["Kiev"],
    "KZ": ["Nur-Sultan", "Akmola"],
    "BO": ["La Paz"],
    "LK": ["Sri Jayawardenepura Kotte", "Kotte"],
    "SZ": ["Mbabane"],
    "ZA": ["Cape Town", "Bloemfontein"],
    "MM": ["Nay Pyi Taw", "Naypyitaw", "Nay Pyi Daw"],
    "IN": ["Delhi"],
    "CN": ["Peking"],
    "TM": ["Ashkhabad", "Ashgabad"],
    "MN": ["Ulan Bator"],
    "KG": ["Frunze"],
    "MH": ["Delap-Uliga-Djarrit", "Majuro"],
    "PS": ["East Jerusalem", "Jerusalem"],
    "YE": ["Sanaa", "Sana"],
    "TO": ["Nukualofa", "Nuku alofa"],
    "TD": ["Ndjamena", "N'Djamena"],
    "NL": ["The Hague"],
    "MY": ["Putrajaya"],
    "CH": ["Berne"],
    "GD": ["Saint George's"],
    "SM": ["San Marino"],
}
"""ISO alpha-2 -> extra accepted capitals (former names, seats of government, spellings)."""

TRANSCONTINENTAL: dict[str, list[str]] = {
    "TR": ["Europe"],
    "RU": ["Asia"],
    "KZ": ["Europe"],
    "GE": ["Europe"],
    "AM": ["Europe"],
    "AZ": ["Europe"],
    "CY": ["Europe"],
    "EG": ["Asia"],
}
"""ISO alpha-2 -> other continents also accepted as the answer."""

EXCLUDED_ISO2: set[str] = {"AN", "CS", "AQ", "UM", "BV", "HM", "TF", "IO", "GS"}
"""Records that are defunct (Netherlands Antilles, Serbia and Montenegro) or uninhabited."""

WIKI_TITLE_OVERRIDES: dict[str, str] = {
    "IE": "Republic of Ireland",
    "GE": "Georgia (country)",
    "CG": "Republic of the Congo",
    "CD": "Democratic Republic of the Congo",
    "GM": "The Gambia",
    "BS": "The Bahamas",
    "US": "United States",
    "CN": "China",
    "TW": "Taiwan",
    "SZ": "Eswatini",
    "CI": "Ivory Coast",
    "CZ": "Czech Republic",
    "MK": "North Macedonia",
    "FM": "Federated States of Micronesia",
    "VA": "Vatican City",
    "TL": "East Timor",
    "PS": "State of Palestine",
    "KR": "South Korea",
    "KP": "North Korea",
}
"""ISO alpha-2 -> Wikipedia title, tried first when matching a country to its summary."""


def continent_of(region: str, subregion: str, intermediate: str = "") -> str:
    """countryinfo region/(intermediate) subregion -> the continent used as gold ("North America", "Europe", ...)."""
    if region == "Americas":
        return "South America" if "South America" in (subregion, intermediate) else "North America"
    return region


def country_aliases(name: str, record: dict) -> list[str]:
    """Accepted names for a countryinfo ``record`` besides ``name``: the hand-written aliases, its
    altSpellings and native name (Latin script only, ISO codes only when listed by hand), then
    accent-stripped forms; de-duplicated, in that order."""
    iso = record.get("ISO") or {}
    codes = {iso.get("alpha2"), iso.get("alpha3")}
    manual_list = COUNTRY_ALIASES.get(iso.get("alpha2"), [])
    out: list[str] = []
    for a in [*manual_list, *(record.get("altSpellings") or []), record.get("nativeName")]:
        a = (a or "").strip()
        manual = a in manual_list
        if not a or (a in codes and not manual) or a == name or not any(ch.isalpha() for ch in a):
            continue
        if not all(ch.isascii() or ("LATIN" in unicodedata.name(ch, "") and ord(ch) < 0x250) for ch in a):
            continue
        out.append(a)
    out += [strip_accents(a) for a in [name, *out]]
    seen, uniq = {name}, []
    for a in out:
        if a not in seen:
            seen.add(a)
            uniq.append(a)
    return uniq
