"""The editor interface. `edit` returns the image changed to match `target_caption` (and no longer
`source_caption`), or None when the editor cannot make that edit (the slot is then masked).

`expensive` editors (diffusion models) are cached by the `image_edit` generator; `identity()` is the part of the
cache key that names the model and every generation parameter.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Any

from PIL import Image

from datamodules.records import Record


class ImageEditor(ABC):
    expensive: bool = False

    @abstractmethod
    def edit(
        self, image: Image.Image, record: Record, source_caption: str, target_caption: str, rng: random.Random
    ) -> Image.Image | None: ...

    def identity(self) -> dict[str, Any]:
        """Model id/revision and generation parameters (part of the cache key)."""
        return {"editor": type(self).__name__}
