"""Many wordings of every question template, split into training and held-out wordings.

What it does: `WORDINGS` gives each template of `mmsearch_r1.data.questions.TEMPLATES` twelve phrasings
written for this project: the template's own text first, then eleven that change the word order, the
vocabulary and the sentence form (an imperative, a statement to complete, a question led by the fact or
by the image), so that a policy cannot answer by recognising one sentence. `split_wordings` draws, with a
seed, which wordings are held out (a third, never the template's own text), as entities are split:
warm start, curation and RL may use only the training wordings; evaluation reports held-out wordings
apart. `wording_of` returns the text of one wording for an entity.

What it does not: no rows or images (`mmsearch_r1.data.questions.build_pool` instantiates them).
"""

from __future__ import annotations

import numpy as np

WORDINGS: dict[str, tuple[str, ...]] = {
    "flag_colour": (
        "Which colour covers the largest part of this flag?",
        "What is the main colour of the flag in the picture?",
        "Name the colour that takes up most of this flag.",
        "Most of this flag is painted in which colour?",
        "Looking at the image, which colour dominates the flag?",
        "Tell me the predominant colour of the flag shown here.",
        "This flag is mostly one colour. Which one?",
        "Of all the colours on this banner, which fills the most area?",
        "Identify the colour that makes up the bulk of the flag pictured.",
        "In the image, the largest area of the flag is what colour?",
        "Give the single colour that covers more of this flag than any other.",
        "What colour would you say this flag mainly is?",
    ),
    "flag_country": (
        "Which country's flag is shown in the image?",
        "Whose national flag is this?",
        "Name the country this flag belongs to.",
        "This flag represents which nation?",
        "Identify the country from its flag in the picture.",
        "The picture shows a national flag. Of which country?",
        "Tell me which state flies this flag.",
        "To which country does the pictured banner belong?",
        "Looking at this flag, what country is it?",
        "Can you say which nation uses the flag in this image?",
        "What nation is represented by the flag above?",
        "Guess the country: whose flag is pictured?",
    ),
    "outline_country": (
        "Which country has the outline shown on this map?",
        "Name the country whose borders are drawn here.",
        "This map shows the shape of which country?",
        "Identify the nation from the silhouette on the map.",
        "The outline in the image belongs to what country?",
        "Whose territory is traced on this map?",
        "Tell me which country has this shape.",
        "Looking at the map, which nation is outlined?",
        "What country do these borders describe?",
        "From its outline alone, which country is this?",
        "The shaded shape on the map is which state?",
        "Can you name the country drawn in this picture?",
    ),
    "flag_capital": (
        "What is the capital city of the country whose flag is shown?",
        "Name the capital of the nation that flies this flag.",
        "This flag belongs to a country. What is its capital?",
        "Which city is the seat of government of the country with this flag?",
        "Tell me the capital of the country this flag represents.",
        "The country whose flag you see here has which capital city?",
        "Identify the flag's country, then give its capital.",
        "In which city does the government of this flag's nation sit?",
        "What city serves as capital for the state that uses this flag?",
        "Looking at the flag, what is that country's capital?",
        "Give the capital city of the nation pictured by its flag.",
        "Which capital goes with the country of this flag?",
    ),
    "flag_continent": (
        "On which continent is the country whose flag is shown?",
        "Name the continent of the country that flies this flag.",
        "This flag belongs to a country on which continent?",
        "Tell me where in the world, by continent, the nation with this flag lies.",
        "The country whose flag is pictured is part of which continent?",
        "Which continent is home to the country this flag represents?",
        "Identify the flag's country, then give its continent.",
        "Looking at the flag, on what continent is that nation?",
        "In which continent would you find the state that uses this flag?",
        "Give the continent of the country pictured by its flag.",
        "What continent does the country of this flag belong to?",
        "Where is this flag's country located: which continent?",
    ),
    "outline_capital": (
        "What is the capital city of the country outlined on this map?",
        "Name the capital of the country whose borders are drawn here.",
        "This map outlines a country. What is its capital?",
        "Which city is the seat of government of the nation shown on the map?",
        "Tell me the capital of the country with this shape.",
        "The country traced in the image has which capital city?",
        "Identify the outlined country, then give its capital.",
        "In which city does the government of the mapped nation sit?",
        "What city serves as capital for the state drawn here?",
        "Looking at the outline, what is that country's capital?",
        "Give the capital city of the country whose silhouette is shown.",
        "Which capital belongs to the country on this map?",
    ),
    "capital_of": (
        "What is the capital city of {name}?",
        "Name the capital of {name}.",
        "{name} has which city as its capital?",
        "Which city is the seat of government of {name}?",
        "Tell me the capital of {name}.",
        "In which city does the government of {name} sit?",
        "Where is the government of {name} based? Name the city.",
        "Give the capital city of {name}.",
        "What city serves as the capital for {name}?",
        "If you travel to the capital of {name}, which city do you visit?",
        "Which city is {name}'s capital?",
        "For the country {name}, what is the capital?",
    ),
    "continent_of": (
        "On which continent is {name}?",
        "Name the continent where {name} lies.",
        "{name} is part of which continent?",
        "Which continent is home to {name}?",
        "Tell me the continent of {name}.",
        "In which continent would you find {name}?",
        "The country {name} is located on what continent?",
        "Give the continent that {name} belongs to.",
        "What continent does {name} belong to?",
        "If you travel to {name}, which continent are you on?",
        "Which continent is {name}'s home?",
        "For the country {name}, what is the continent?",
    ),
}  # fmt: skip
"""Phrasings per template, index 0 being the template's own text (``TEMPLATES[t][2]``)."""
HELDOUT_FRACTION = 1 / 3
"""Share of each template's wordings held out from training (rounded; never the template's own text)."""


def split_wordings(
    seed: int = 0, fraction: float = HELDOUT_FRACTION
) -> dict[str, dict[str, tuple[int, ...]]]:
    """``{template: {"train": indices, "heldout": indices}}`` into `WORDINGS` (seeded per template; index 0,
    the template's own text, always trains)."""
    out = {}
    for i, (template, texts) in enumerate(sorted(WORDINGS.items())):
        rest = np.random.default_rng([seed, i]).permutation(np.arange(1, len(texts))).tolist()
        n_held = int(round(fraction * len(texts)))
        out[template] = {"train": tuple(sorted([0, *rest[n_held:]])), "heldout": tuple(sorted(rest[:n_held]))}
    return out


def wording_of(template: str, index: int, name: str = "") -> str:
    """The text of wording ``index`` of ``template`` for the entity called ``name``."""
    try:
        return WORDINGS[template][index].format(name=name)
    except (KeyError, IndexError) as err:
        raise ValueError(
            f"no wording {index} for template {template!r}; templates: {sorted(WORDINGS)}, "
            f"indices 0..{len(WORDINGS.get(template, ())) - 1}"
        ) from err
