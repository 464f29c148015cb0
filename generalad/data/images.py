"""Robust image and mask decoding.

``read_image`` turns anything Pillow can decode (grey, palette, RGBA, 16-bit, float TIFF, CMYK, EXIF-rotated)
into float32 (H, W, 3) RGB in [0, 1]; every failure a user can cause becomes a one-line ``InputError`` naming
the file. Pixels are decoded fully (``im.load()``) so truncated files fail here, not in a worker later.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from generalad.data.sample import Sample
from generalad.errors import InputError

try:  # libspng: the fast path for 8-bit PNGs; Pillow decodes everything else (and everything without it)
    import pyspng as _spng
except ImportError:  # pragma: no cover - an install without the wheel still decodes every PNG, slower
    _spng = None

ImageSource = str | Path | Sample | np.ndarray

# Everything a decoder can throw on a bad file; all of them mean "the user's file is broken".
_DECODE_ERRORS = (
    OSError,  # includes PIL.UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # Pillow raises it for broken PNG chunks
    ValueError,
    EOFError,
    TypeError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SPNG_FORMATS = {0: "L", 2: "RGB", 6: "RGB"}  # PNG colour type → output; RGBA's alpha is dropped, as below
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _require_file(path: Path, kind: str = "image") -> None:
    if not path.exists():
        raise InputError(f"{kind} not found: {path}")
    if not path.is_file():
        raise InputError(f"{kind} is not a file: {path}")


def _decode(path: Path, kind: str = "image", draft: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode and EXIF-orient one file; InputError naming the path on any failure.

    ``draft`` (h, w): JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still gives at least
    that size — up to 64× fewer pixels through the decoder when the working size is far below the file's.
    """
    _require_file(path, kind)
    try:
        with Image.open(path) as im:
            if draft is not None and im.format == "JPEG":
                im.draft(im.mode if im.mode in ("RGB", "L") else "RGB", (int(draft[1]), int(draft[0])))
            im.load()  # forces the whole pixel stream through the decoder: catches truncation
            return ImageOps.exif_transpose(im)  # a decoded copy, independent of the closed file
    except _DECODE_ERRORS as err:
        if isinstance(err, Image.UnidentifiedImageError):
            raise InputError(f"cannot decode {kind} {path}: not a recognised image format") from err
        raise InputError(f"cannot decode {kind} {path}: {_one_line(err)}") from err


def _spng_decode(path: Path) -> np.ndarray | None:
    """8-bit grey / RGB / RGBA PNGs through libspng: uint8 (H, W) or (H, W, 3); None = let Pillow decode it.

    Measured on a 900² MVTec PNG: about half of Pillow's decode time, the same pixels (tests/data/
    test_images.py compares both on every colour type). Left to Pillow: other bit depths, palette and
    grey-alpha images (pyspng 0.1.3 mis-decodes 16-bit grey and refuses grey-alpha), PNGs with an eXIf chunk
    (orientation), images beyond Pillow's decompression-bomb limit (so that check still applies), and
    files libspng cannot decode (Pillow then raises its usual one-line error, e.g. "image file is truncated").
    """
    if _spng is None:
        return None
    _require_file(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InputError(f"cannot decode image {path}: {_one_line(err)}") from err
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if depth != 8 or colour not in _SPNG_FORMATS or width * height > (Image.MAX_IMAGE_PIXELS or 0):
        return None
    idat = data.find(b"IDAT")
    if b"eXIf" in data[: idat if idat > 0 else len(data)]:
        return None
    try:
        return _spng.load(data, format=_SPNG_FORMATS[colour])
    except RuntimeError:  # truncated or corrupt: Pillow decodes it again and words the error as for any file
        return None


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _integer_16bit(values: np.ndarray, where: str) -> np.ndarray:
    """Scale 16-bit data by 65535 explicitly (never by the image's own max, which would hide contrast)."""
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise InputError(f"cannot read image {where}: integer pixel values outside the 16-bit range")
    return values.astype(np.float32) / np.float32(65535.0)


def _float_unit(values: np.ndarray, where: str) -> np.ndarray:
    """Float pixels are taken as already in [0, 1]; anything else is refused rather than silently clipped."""
    values = values.astype(np.float32)
    if not np.isfinite(values).all():
        raise InputError(f"cannot read image {where}: float pixels contain NaN or infinity")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        lo, hi = float(values.min()), float(values.max())
        raise InputError(f"cannot read image {where}: float pixels span [{lo:g}, {hi:g}], expected [0, 1]")
    return values


def _pil_to_rgb(im: Image.Image, where: str) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_integer_16bit(np.asarray(im), where))
    if mode == "I":  # Pillow's mode for some 16-bit PNGs / integer TIFFs
        return _grey_to_rgb(_integer_16bit(np.asarray(im, dtype=np.int64), where))
    if mode == "F":  # float TIFF
        return _grey_to_rgb(_float_unit(np.asarray(im), where))
    if mode in ("1", "L", "LA", "La"):
        grey = np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
        return _grey_to_rgb(grey)
    # RGBA / PA: the alpha channel is DROPPED (as for LA above), not composited on black. This matches
    # PIL's convert("RGB"), OpenCV's IMREAD_COLOR and anomalib, so scores agree with peers.
    # P (palette) maps through its palette; CMYK and YCbCr go through Pillow's converters.
    try:
        rgb = im if mode == "RGB" else im.convert("RGB")
    except ValueError as err:
        raise InputError(f"cannot read image {where}: unsupported colour mode {mode}") from err
    return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def _array_to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    """In-memory pixels (H, W) or (H, W, 1|3|4) → float32 RGB in [0, 1]; alpha dropped as for files."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[:, :, :1] if arr.shape[2] == 1 else arr[:, :, :3]
    elif arr.ndim != 2:
        raise InputError(f"cannot read image {where}: array shape {arr.shape} is not (H, W) or (H, W, 3)")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / np.float32(255.0)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif arr.dtype == np.uint16:
        out = _integer_16bit(arr, where)
    elif np.issubdtype(arr.dtype, np.floating):
        out = _float_unit(arr, where)
    else:
        raise InputError(f"cannot read image {where}: unsupported array dtype {arr.dtype}")
    if out.ndim == 2:
        return _grey_to_rgb(out)
    return np.ascontiguousarray(np.broadcast_to(out, (*out.shape[:2], 3)))


def read_image(source: ImageSource, *, draft: tuple[int, int] | None = None) -> np.ndarray:
    """Decode ``source`` (path, Sample or array) into float32 (H, W, 3) RGB in [0, 1].

    ``draft`` (h, w): let JPEG files decode at a reduced DCT scale no smaller than that (see ``_decode``);
    other formats and arrays are unaffected. The pixels differ slightly from a full decode + resize.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "<in-memory array>")
    if isinstance(source, Sample):
        if source.array is not None:
            return _array_to_rgb(source.array, source.path)
        source = source.path
    path = Path(source)
    fast = _spng_decode(path) if path.suffix.lower() == ".png" else None
    if fast is not None:
        return _array_to_rgb(fast, str(path))
    return _pil_to_rgb(_decode(path, draft=draft), str(path))


def _header_hw(path: Path) -> tuple[int, int]:
    """(H, W) after EXIF orientation, from the header only."""
    _require_file(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            # PngImageFile.getexif() decodes the pixels when no eXIf chunk precedes IDAT; skip it then
            # (writers put eXIf before IDAT, and a PNG without one has no orientation to apply).
            if im.format == "PNG" and "exif" not in im.info:
                return height, width
            orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS as err:
        raise InputError(f"cannot decode image {path}: {_one_line(err)}") from err
    return (width, height) if orientation in _TRANSPOSED_ORIENTATIONS else (height, width)


def image_hw(sample: Sample | str | Path) -> tuple[int, int]:
    """(H, W) of the image as ``read_image`` will return it; reads the header only."""
    if isinstance(sample, Sample):
        if sample.array is not None:
            return int(sample.array.shape[0]), int(sample.array.shape[1])
        sample = sample.path
    return _header_hw(Path(sample))


def _mask_values(im: Image.Image, where: str) -> np.ndarray:
    """Per-pixel mask intensity as a 2-D array (colour masks: the max over R, G, B)."""
    if im.mode == "P":
        # Palette masks store class indices (VisA-style labels); the index, not its colour, is the label.
        return np.asarray(im)
    if im.mode in ("LA", "La"):
        return np.asarray(im.getchannel("L"))
    if im.mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        return np.asarray(im)[:, :, :3].max(axis=2)
    if im.mode in ("1", "L", "I", "F", *_SIXTEEN_BIT_MODES):
        return np.asarray(im)
    try:
        return np.asarray(im.convert("L"))
    except ValueError as err:
        raise InputError(f"cannot read mask {where}: unsupported colour mode {im.mode}") from err


def read_mask(
    sample: Sample, image_hw: tuple[int, int] | None = None, *, threshold: float = 0
) -> np.ndarray:
    """bool (H, W): the OR of all ``sample.mask_paths`` binarised ``> threshold``; zeros without masks.

    ``image_hw`` is the size of the sample's image (read from its header when omitted). A mask of another
    size is an error naming both files — masks are never silently resized here. ``threshold=127`` suits
    anti-aliased masks (docs/PROTOCOLS.md §1); the default 0 is the standard ``> 0`` rule.
    """
    hw = image_hw if image_hw is not None else _hw_of(sample)
    out = np.zeros(hw, dtype=bool)
    for mask_path in sample.mask_paths:
        out |= read_mask_values(mask_path, hw, image=sample.path) > threshold
    return out


def read_mask_values(path: str | Path, image_hw: tuple[int, int] | None = None, *, image: str = "") -> np.ndarray:
    """One mask file's raw per-pixel values, (H, W), before any binarisation (colour masks: the max over
    R, G, B; palette masks: the index). MVTec LOCO stores one defect per file, its pixels carrying the
    defect's ``pixel_value``. With ``image_hw`` a mask of another size is an error naming the file and
    ``image`` (the image's path)."""
    path = Path(path)
    values = _mask_values(_decode(path, "mask"), str(path))
    if image_hw is not None and values.shape != tuple(image_hw):
        h, w = image_hw
        raise InputError(f"mask {path} is {values.shape[1]}x{values.shape[0]} but image {image or '?'} is {w}x{h}")
    return values


_hw_of = image_hw  # read_mask's parameter shadows the function name (the contract fixes both names)


def content_hash(sample: Sample | str | Path | np.ndarray) -> str:
    """sha256 hex digest of the file bytes, or of dtype + shape + bytes for in-memory pixels."""
    array = sample if isinstance(sample, np.ndarray) else getattr(sample, "array", None)
    digest = hashlib.sha256()
    if array is not None:
        arr = np.ascontiguousarray(array)
        digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        digest.update(arr.tobytes())
        return digest.hexdigest()
    path = Path(sample.path if isinstance(sample, Sample) else sample)
    _require_file(path, "file")
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise InputError(f"cannot read file {path}: {_one_line(err)}") from err
    return digest.hexdigest()
