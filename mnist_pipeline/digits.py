"""Turn a photo or scan of one handwritten digit into what an MNIST model expects, the way MNIST
itself was made (LeCun et al.): a white digit on black, its bounding box scaled (aspect ratio
kept, antialiased) so the longest side is 20 px, placed in a 28x28 field so that its centre of
mass is at pixel (14, 14). In MNIST's own test set every image's centre of mass lies within
0.5 px of (14, 14) (row, column indices), and every digit's bounding box is 20 px on its longer side.

Pure NumPy and Pillow: no TensorFlow, no Prefect, so `mnist-pipeline predict` can prepare its
inputs before (or without) importing Keras.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

FIELD = 28  # MNIST image side
BOX = 20  # longest side of the digit's bounding box in MNIST
CENTRE = 14.0  # where MNIST puts the centre of mass (row and column index)
# Ink below this fraction of the strongest stroke is paper, shadow or JPEG ringing. 0.2 was the
# best of 0.05-0.4 on MNIST test digits re-rendered as dark-on-light JPEGs.
NOISE_FLOOR = 0.2
MIN_CONTRAST = 0.08  # an image whose ink spans less than this (of full scale) holds no digit
BORDER = 0.04  # fraction of each side read as background to decide the polarity
# The most pixels decoded (a digit needs 28 x 28): a phone's photo (12-50 MP, a JPEG) is decoded
# at 1/2-1/8 scale by JPEG's own DCT scaling to fit, any other image above it is refused before
# decoding. Pillow's own limit (89 MP, an error only at twice that) lets a 55 KB PNG take GBs.
MAX_PIXELS = 16_000_000
MIN_SIDE = 8  # the smallest digit images in use (scikit-learn's digits are 8 x 8); less is a dot, not a digit


def load_digit(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """A 28x28 float32 array in [0, 1], white digit on black, preprocessed as MNIST was.

    `source` is a path or the encoded bytes of a PNG, JPEG or any image Pillow reads; `name`
    labels the image in errors (default: the path as given, or "image" for bytes).
    Raises ValueError, one line naming the image, when it is unreadable or holds no digit."""
    label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "image")
    gray = _decode_gray(source, label)
    ink = _ink(gray)
    if ink.max() < MIN_CONTRAST:
        raise ValueError(f"{label} is blank: no digit found (give an image of one digit, dark on "
                         "light or light on dark)")
    return _centre_by_mass(_scale_to_box(_crop_to_digit(ink)))


def _decode_gray(source: str | Path | bytes, label: str) -> np.ndarray:
    """Decoded, upright (EXIF orientation), transparency flattened onto white; grey levels in
    [0, 1] with 1 = white. Refused before decoding when larger than MAX_PIXELS (Image.open reads
    only the header; a JPEG is first offered a smaller scale). Pillow's warnings (its own, far
    higher, bomb limit; odd EXIF) are not ours to print. Only a regular file is read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from mnist_pipeline.files import NotARegularFile, open_regular

    try:
        stream = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else open_regular(source)
    except FileNotFoundError:
        raise ValueError(f"{label}: no such file") from None
    except NotARegularFile as exc:
        raise ValueError(f"{label} is {exc.strerror}; give an image file") from None
    except OSError as exc:
        raise ValueError(f"{label} cannot be opened: {exc.strerror or exc}") from None
    with stream, warnings.catch_warnings(action="ignore"):
        try:
            img = Image.open(stream)
            if img.format == "JPEG" and img.width * img.height > MAX_PIXELS:
                scale = 2 ** math.ceil(math.log2(math.sqrt(img.width * img.height / MAX_PIXELS)))
                img.draft(None, (img.width // scale, img.height // scale))  # at most 1/8
            size = img.size
            if size[0] * size[1] <= MAX_PIXELS:
                img.load()
                img = ImageOps.exif_transpose(img)
        except Image.DecompressionBombError:  # too large even to open: twice Pillow's own limit
            size = None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ValueError(f"{label} is not an image Pillow can read (give a PNG or JPEG)") from None
    if size is None or size[0] * size[1] > MAX_PIXELS:
        dimensions = f"{size[0]:,} x {size[1]:,} pixels, " if size else ""
        raise ValueError(f"{label} is {dimensions}more than the {MAX_PIXELS:,} pixels a digit image may have; "
                         "crop or shrink it")
    if min(size) < MIN_SIDE:
        raise ValueError(f"{label} is {size[0]} x {size[1]} pixels, too small to hold a digit (at least "
                         f"{MIN_SIDE} x {MIN_SIDE})")
    return _to_gray(img)


def _to_gray(img) -> np.ndarray:
    from PIL import Image

    if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # 16/32-bit grey: scale by its range
        values = np.asarray(img, dtype=np.float32)
        return np.clip(values / (65535.0 if values.max(initial=0) > 255 else 255.0), 0, 1)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if not has_alpha:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    rgba = img.convert("RGBA")
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    gray = np.asarray(on_white.convert("L"), dtype=np.float32) / 255.0
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    if np.ptp(gray) < MIN_CONTRAST <= np.ptp(alpha):
        # A white digit on a transparent background vanishes on white: its shape is the alpha.
        return 1.0 - alpha
    return gray


def _ink(gray: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] (1 = strongest stroke, 0 = background): inverted when the background is
    light, decided from the border, where the background is, not from the mean (a bold digit
    on white can be darker on average than a thin one on black)."""
    h, w = gray.shape
    b = max(1, round(BORDER * min(h, w)))
    border = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
    background = float(np.median(border))
    ink = 1.0 - gray if background > 0.5 else gray.copy()
    ink -= 1.0 - background if background > 0.5 else background  # the paper's own grey is not ink
    np.clip(ink, 0.0, None, out=ink)
    return ink


def _crop_to_digit(ink: np.ndarray) -> np.ndarray:
    """The bounding box of the ink, after zeroing what is faint relative to the strongest stroke
    (paper texture, shadows, JPEG artefacts would otherwise widen the box), rescaled to max 1."""
    ink = np.where(ink >= NOISE_FLOOR * ink.max(), ink, 0.0)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return crop / crop.max()


def _scale_to_box(digit: np.ndarray) -> np.ndarray:
    """Longest side to 20 px, aspect ratio kept, antialiased (Lanczos on float grey levels)."""
    from PIL import Image

    h, w = digit.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow: (width, height)
    resized = np.asarray(Image.fromarray(digit.astype(np.float32), mode="F").resize(size, Image.LANCZOS))
    resized = np.clip(resized, 0.0, 1.0)  # Lanczos rings slightly below 0 and above 1
    return resized / resized.max() if resized.max() > 0 else resized


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    """(row, column) of the grey-level centre of mass, in pixel indices."""
    total = float(image.sum())
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / total), float((cols * image).sum() / total)


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Paste into a 28x28 field, shifted by whole pixels so the centre of mass lands within
    half a pixel of (14, 14), as in MNIST; anything shifted past the edge is cut off."""
    cy, cx = centre_of_mass(digit)
    top, left = int(np.floor(CENTRE - cy + 0.5)), int(np.floor(CENTRE - cx + 0.5))
    h, w = digit.shape
    field = np.zeros((FIELD, FIELD), np.float32)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(FIELD, top + h), min(FIELD, left + w)
    field[r0:r1, c0:c1] = digit[r0 - top:r1 - top, c0 - left:c1 - left]
    return field
