"""The synthetic compositional world: scene graphs, a renderer and a caption grammar (ARCHITECTURE §5)."""

from datamodules.world.render import render_scene
from datamodules.world.scene import Obj, Scene, World

__all__ = ["Obj", "Scene", "World", "render_scene"]
