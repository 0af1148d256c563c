"""``media.image``: resize, thumbnail or convert one image artifact with Pillow.

Limits are checked before pixels are decoded: Pillow reads an image's size from its
header, so a small file that claims 100 000 x 100 000 pixels (a decompression bomb) is
refused by ``SHIFTFLOW_MEDIA_MAX_PIXELS`` without allocating anything. The output's size
is checked too, before it is drawn.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from shiftflow.kernel.artifacts import location_of
from shiftflow.kernel.errors import LimitExceeded, ToolError
from shiftflow.kernel.tools.base import ARTIFACT_INPUT, ARTIFACT_OUTPUT, Tool, ToolContext

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "gif": "GIF"}
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
_FROM_PIL = {v: k for k, v in FORMATS.items()}
_ORIENTATION = 0x0112  # the EXIF tag


def _pixels_limit(width: int, height: int, limit: int, what: str) -> None:
    if width * height > limit:
        raise LimitExceeded(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of {limit} (SHIFTFLOW_MEDIA_MAX_PIXELS)"
        )


def _target_size(params: dict[str, Any], size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    want_w, want_h = int(params.get("width") or 0), int(params.get("height") or 0)
    if params["operation"] == "convert":
        return size
    if not want_w and not want_h:
        raise ToolError(f"with: {params['operation']} needs width, height or both")
    if params["operation"] == "thumbnail":  # fit inside the box, never enlarge
        scale = min((want_w or width) / width, (want_h or height) / height, 1.0)
        return max(1, round(width * scale)), max(1, round(height * scale))
    if want_w and want_h:
        return want_w, want_h
    if want_w:
        return want_w, max(1, round(height * want_w / width))
    return max(1, round(width * want_h / height)), want_h


def process(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Run one image operation (the ``media.image`` tool's function).

    Returns:
        ``{"width", "height", "format", "artifact"}`` of the new image.

    Raises:
        LimitExceeded: input or output over the pixel limit.
        ToolError: the input is not an image Pillow reads, or bad sizes.
    """
    source = params["input"]
    data = ctx.artifacts.get(location_of(source))
    try:
        with warnings.catch_warnings():
            # Pillow warns (our filterwarnings makes that an error in tests) for big images:
            # our own limit below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise LimitExceeded(f"with.input: {exc}") from None
    except UnidentifiedImageError:
        raise ToolError("with.input: not an image format Pillow can read") from None
    with opened as image:
        _pixels_limit(image.width, image.height, ctx.limits.max_pixels, "with.input")
        source_format = _FROM_PIL.get(image.format or "", "png")
        fmt = params.get("format") or source_format
        orientation = image.getexif().get(_ORIENTATION, 1)
        # Sizes are of the picture as displayed: orientations 5 to 8 turn it a quarter.
        shown = (image.height, image.width) if orientation in (5, 6, 7, 8) else image.size
        size = _target_size(params, shown)
        _pixels_limit(size[0], size[1], ctx.limits.max_pixels, "the output")
        try:
            picture: Image.Image = image
            if orientation != 1:  # phone photos: honour the orientation tag
                picture = ImageOps.exif_transpose(image)
            if size != picture.size:
                # reducing_gap: shrink by whole factors first (cheap), then LANCZOS the rest,
                # as Image.thumbnail does: less CPU than plain LANCZOS
                # (docs/benchmarks.md#outside-calls).
                picture = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
            if fmt == "jpeg" and picture.mode not in ("RGB", "L"):
                rgba = picture.convert("RGBA")
                flat = Image.new("RGB", picture.size, "white")
                flat.paste(rgba, mask=rgba.getchannel("A"))
                picture = flat
            out = io.BytesIO()
            options: dict[str, Any] = {}
            if fmt in ("jpeg", "webp"):
                options["quality"] = params.get("quality", 85)
            picture.save(out, FORMATS[fmt], **options)
        except (OSError, ValueError) as exc:  # truncated or corrupt data shows up on decode
            raise ToolError(f"with.input: cannot decode the image: {exc}") from None
    stem = (params.get("name") or (source.get("name") if isinstance(source, dict) else None)
            or location_of(source).rsplit("/", 1)[-1]).rsplit(".", 1)[0]
    ref = ctx.artifacts.put(out.getvalue(), f"{stem}.{'jpg' if fmt == 'jpeg' else fmt}", _MIME[fmt])
    return {"width": size[0], "height": size[1], "format": fmt, "artifact": ref.to_dict()}


TOOL = Tool(
    name="media.image",
    description="Resize, thumbnail or convert an image artifact (PNG, JPEG, WebP, GIF) into a new artifact.",
    category="media",
    queue="tools.media",
    effect="repeatable",
    params_schema={
        "type": "object",
        "required": ["input", "operation"],
        "additionalProperties": False,
        "properties": {
            "input": ARTIFACT_INPUT,
            "operation": {"enum": ["resize", "thumbnail", "convert"]},
            "width": {"type": "integer", "minimum": 1, "maximum": 65_535},
            "height": {"type": "integer", "minimum": 1, "maximum": 65_535},
            "format": {"enum": sorted(FORMATS)},
            "quality": {"type": "integer", "minimum": 1, "maximum": 100},
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
        },
    },
    result_schema={
        "type": "object",
        "required": ["width", "height", "format", "artifact"],
        "properties": {"width": {"type": "integer"}, "height": {"type": "integer"},
                       "format": {"enum": sorted(FORMATS)}, "artifact": ARTIFACT_OUTPUT},
    },
    run=process,
)
