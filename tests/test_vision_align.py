"""Vision alignment: the tower alone learns to read a flag as its one-token caption; the language model is
never trained."""

from __future__ import annotations

import torch
from PIL import Image

from mmsearch_r1.data.world.build import Entity, World
from mmsearch_r1.policy.tiny import build_tiny_policy
from mmsearch_r1.policy.vision_align import VisionAlignConfig, align_vision, caption

COLOURS = {"AA": "red", "BB": "blue", "CC": "green", "DD": "yellow"}


def _world(tmp_path) -> World:
    ents = []
    for code, colour in COLOURS.items():
        path = tmp_path / f"{code}.png"
        Image.new("RGB", (84, 56), colour).save(path)
        ents.append(Entity(f"country/{code}", "country", code, [], {}, None, "", {"flag": path.name}))
    return World(tmp_path, ents, {})


def test_caption_names_known_entities_only():
    assert caption("France", "flag", "blue") == " France"
    assert caption(None, "flag", "red") == " red"
    assert caption(None, "outline", None) == " map"


def test_alignment_trains_the_tower_alone_and_raises_caption_accuracy(tmp_path):
    model, processor = build_tiny_policy(seed=0)
    lm_before = {k: v.clone() for k, v in model.model.language_model.state_dict().items()}
    world = _world(tmp_path)
    cfg = VisionAlignConfig(steps=1, batch_size=4, lr=3e-3, views=("flag",))
    before = align_vision(model, processor, world, {"country/AA"}, cfg)  # one step: about where it starts
    after = align_vision(
        model,
        processor,
        world,
        {"country/AA"},
        VisionAlignConfig(steps=120, batch_size=4, lr=3e-3, views=("flag",)),
    )
    assert after["vision_align_loss"] < before["vision_align_loss"]
    assert after["caption_token_acc_unknown"] > before["caption_token_acc_unknown"]
    assert after["caption_token_acc_unknown"] >= 0.5 and after["caption_token_acc_known"] >= 0.5
    lm_after = model.model.language_model.state_dict()
    assert all(torch.equal(lm_before[k], lm_after[k]) for k in lm_before)  # the language model never trained
