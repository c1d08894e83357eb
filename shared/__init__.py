"""The shared-memory arena: a declarative layout and the segment that holds it."""

from .arena import Arena, list_segments, remove_stale, stale_segments
from .layout import CACHE_LINE, Field, Layout

__all__ = ["Arena", "CACHE_LINE", "Field", "Layout", "list_segments", "remove_stale", "stale_segments"]
