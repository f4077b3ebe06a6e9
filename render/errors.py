"""Errors for people: every refusal names the file, the field path and what was expected."""

from __future__ import annotations


class SceneError(ValueError):
    """A scene (file, dict or procedural parameters) was refused.

    ``str(err)`` is one line: ``<file>: <field path>: <problem>``, e.g.
    ``scenes/x.toml: objects[3].material: unknown material 'wite'; expected one of: red, white``.
    """

    def __init__(self, source: str, field: str, problem: str):
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        super().__init__(where + problem)


class RenderError(ValueError):
    """A render request (settings, resolution, camera) was refused before any work started."""


def field_path(loc) -> str:
    """Format a location tuple ``('objects', 3, 'material')`` as ``objects[3].material``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
