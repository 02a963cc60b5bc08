"""The sandbox world: a small, deterministic stand-in for "a base LLM, a user, and a proxy reward model".

``build_world(dir)`` trains everything from a seed; ``load_world(dir)`` reads it back;
``default_world()`` builds the default world once into a cache and reuses it. The gold utility is
documented in ``stackalign.worlds.text.GOLD_DOC`` and in each world's README.md.
"""

from stackalign.worlds.text import GOLD_DOC, gold_judge, gold_utility
from stackalign.worlds.world import World, build_world, default_cache_root, default_world, load_world

__all__ = [
    "GOLD_DOC",
    "World",
    "build_world",
    "default_cache_root",
    "default_world",
    "gold_judge",
    "gold_utility",
    "load_world",
]
