"""The offline world: entities with facts, flags, outlines and articles that the local engines search.

What it does: ``build`` builds (or loads) the world into ``data/world/`` from ``sources`` (countries,
flags, outlines) and ``aliases`` (accepted answer names); ``python -m mmsearch_r1.data.world
fetch-flags|build`` runs it from a shell. What it does not: no questions (``data.questions``), no search
indexes (``mmsearch_r1.tools``), no network access besides the optional flag download.
"""
