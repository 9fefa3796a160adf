"""Moved: the World abstraction lives with the worlds (:mod:`worlds.base`, :mod:`worlds.paper`, and
:func:`worlds.load_world`). Kept so that older imports of ``bench.worlds`` still work."""
from worlds import load_world  # noqa: F401
from worlds.base import World  # noqa: F401
