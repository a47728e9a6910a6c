"""Instructions for the planar-arm task: training templates and held-out paraphrases.

Every instruction names exactly one colour from ``COLOURS``; ``parse_colour`` recovers it
(the world uses it to know which target an instruction asks for). The held-out
paraphrases share no template with the training set; evaluation uses them to check that
the policy follows the colour word rather than memorised sentences.
"""

from __future__ import annotations

import re

import numpy as np

from hlrp_ros.sim.world import COLOURS

TRAIN_TEMPLATES: tuple[str, ...] = (
    "reach the {c} target",
    "move to the {c} target",
    "go to the {c} disc",
    "touch the {c} circle",
    "point at the {c} target",
    "move the arm to the {c} one",
    "put the end effector on the {c} target",
    "{c}",
    "reach {c}",
    "go to {c}",
)

HELDOUT_TEMPLATES: tuple[str, ...] = (
    "please reach for the {c} spot",
    "could you move over the {c} marker",
    "the {c} disc, please",
    "place the tip on the {c} circle now",
    "head to the {c} goal",
    "i want the arm at the {c} target",
)

SPLITS = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}

_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)


def make_instruction(colour: str, rng: np.random.Generator, split: str = "train") -> str:
    """A random instruction for ``colour`` from the ``split`` ("train" or "heldout") templates."""
    templates = SPLITS[split]
    return templates[int(rng.integers(len(templates)))].format(c=colour)


def parse_colour(text: str) -> str | None:
    """The colour an instruction names (the last one if several), or None."""
    found = _COLOUR_RE.findall(text or "")
    return found[-1].lower() if found else None
