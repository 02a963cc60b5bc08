"""The sandbox world: a small, deterministic stand-in for "a base LLM, a user, and a proxy reward model".

``build_world(dir)`` trains everything from a seed; ``load_world(dir)`` reads it back;
``default_world()`` builds the default world once into a cache and reuses it. The gold utility is
documented in ``stackalign.worlds.text.GOLD_DOC`` and in each world's README.md; the pairwise (possibly
intransitive) gold preference for SLHF in ``stackalign.worlds.preference.PREFERENCE_DOC``.
"""

from stackalign.worlds.preference import PREFERENCE_DOC, gold_preference
from stackalign.worlds.text import GOLD_DOC, gold_judge, gold_utility
from stackalign.worlds.world import World, build_world, default_cache_root, default_world, load_world

__all__ = [
    "GOLD_DOC",
    "PREFERENCE_DOC",
    "World",
    "build_world",
    "default_cache_root",
    "default_world",
    "gold_judge",
    "gold_preference",
    "gold_utility",
    "load_world",
]
