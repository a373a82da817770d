"""Reading a Cycles render back as pixels (Blender-side tests only: needs bpy)."""

import bpy
import numpy as np


def render_pixels(scene, path, size: int) -> np.ndarray:
    """Render the scene to ``path`` (PNG, as the scene is set up) and return (H, W, 4) floats, row 0 at the top."""
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(path))
    try:
        px = np.empty(size * size * 4, np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(size, size, 4)[::-1]
