"""PIL renderer of scene graphs (supersampled, so small shapes stay distinguishable at 48 px), drawn at the
requested size directly (the training loader passes the model's input size: no resampling afterwards)."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from datamodules.world.scene import COLORS, Scene

BACKGROUND = (25, 25, 25)


def supersample(size: int) -> int:
    """Drawing scale before the box-filter downsample: 4x at 48 px (small shapes stay distinguishable), 2x from
    96 px up (anti-aliased edges at a quarter of the drawing cost: 0.8 vs 2.2 ms per 224 px image)."""
    return 4 if size < 96 else 2


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    return None


def render_scene(scene: Scene, size: int = 48) -> Image.Image:
    """Renders `scene` to an RGB image of `size`×`size` pixels."""
    big = size * supersample(size)
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, r = o.x * big, o.y * big, o.radius * big
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            h = 0.85 * r
            draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
        elif o.shape == "cross":
            w = 0.33 * r
            draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
            draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
        else:
            pts = _polygon(o.shape, cx, cy, r)
            if pts is None:
                raise ValueError(f"no renderer for shape {o.shape!r}")
            draw.polygon(pts, fill=fill)
    # Image.reduce is PIL's integer-factor box filter: the same pixels as resize(BOX) here, ~4x faster (0.18 vs
    # 0.79 ms for 448 -> 224 px; the downsample was a third of a hard-negative sample's loader time).
    return img.reduce(big // size)
