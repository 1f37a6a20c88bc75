"""Score plastic skin and false skin tones in generated portraits against the person's real photos.

A heuristic, offline and CPU only: it finds the face, measures skin texture and skin colour there,
and scores each generated image relative to the reference (training) photos, calibrated on the
references themselves, leave-one-out. Scores move the right way when skin really gets smoother or
its colour really drifts; they are not a perceptual study.

Usage:
    python3 evals/skin_realism_eval.py --generated /workspace/sweep_results \\
        --reference /workspace/training_images --json /workspace/skin_realism.json
    # Training photos are JPEG but generated images PNG? Re-encode both sets identically first:
    python3 evals/skin_realism_eval.py --generated /workspace/sweep_results \\
        --reference /workspace/training_images --reencode-jpeg 90
    # Tiny CPU run (needs at least 3 reference photos), here on the shared test photos:
    python3 evals/skin_realism_eval.py --generated ../shared/faces/photos \\
        --reference ../shared/faces/photos --no-progress

Exit codes: 0 evaluation completed (scores are information, not a pass/fail), 2 usage or input
error (missing or empty folder, fewer than 3 usable reference photos, no readable generated image).
Inputs: folders are searched recursively (.jpg .jpeg .png .webp .bmp .tif .tiff, any case), EXIF
orientation is applied, non-ASCII paths work; unreadable files, dangling symbolic links and
degenerate images (refused from the header before decoding: a side under 32 px, an aspect ratio
beyond 1:20, above 64 MP) are listed in the table and under "errors" in the JSON and counted,
without stopping the run. --json is checked before any image is read (exit 2 naming the flag).

Method (every constant below is also in the JSON under "method"):
1. Region. Faces are found with OpenCV's bundled Haar cascade (haarcascade_frontalface_alt2.xml,
   no download) on a grey copy shrunk by a whole factor to a shorter side of >= 96 px (faces
   >= 24 px there), and only if that finds none, >= 320 px (faces >= 24 px); of several faces the
   most confident (highest cascade level weight) wins. Its box is resized to FACE_WIDTH = 160 px
   (in float: whole-factor block averaging, then INTER_AREA), so images of any resolution are
   measured at the same face scale. A face narrower than 160 px is enlarged bilinearly and cannot
   show fine texture (a warning says so). Inside an ellipse inscribed in the box (centre 0.5,
   0.55; half-axes 0.36, 0.45 of it):
   - texture pixels: skin by a YCrCb range (Cr 133-173, Cb 77-127, Y >= 40 and >= 0.6 x the
     median luma of the ellipse), eroded 2 px so eyes, brows, beard, nostrils and hairline edges
     stay out;
   - colour pixels: every pixel with Lab L* in [max(10, 0.5 x median L*), 98], with no colour
     rule, because a colour rule would throw away exactly the cast or grey skin to be caught.
   Fewer than 400 texture pixels: the eroded colour pixels are used for texture too. No face
   found: the whole image, resized to 320 px on its longer side, is used with the skin range for
   both, and the image is flagged face_found = false.
2. Texture, on luma Y (0-255) at the fixed face width, over the texture pixels:
   - laplacian_variance: variance of the 3x3 Laplacian (the spec's sharpness/detail measure;
     depends on contrast);
   - noise_relative: Immerkaer's noise estimate, sigma = 1.4826 * median|K * Y| / 6 with
     K = [[1,-2,1],[-2,4,-2],[1,-2,1]], divided by the mean skin luma (independent of exposure);
   - hf_energy_share: sum (Y - G1 * Y)^2 / sum (Y - G3 * Y)^2, G_s a Gaussian of sigma s px: the
     share of the finest band in the detail energy (independent of contrast; of scale too, since
     the face width is fixed).
   JPEG TRAP: JPEG compression removes exactly this fine detail, so a compressed photo reads as
   smoothed skin, and phone/camera noise in JPEG references raises their texture above clean PNG
   generations. Compare like with like: --reencode-jpeg Q re-encodes every image of both sets to
   JPEG quality Q in memory before measuring (choose Q at or below the references' quality, 90
   is a fair default for camera photos). More texture than the references does not lower
   texture_score (it targets plastic skin); over-sharpening shows in the raw figures only.
3. Colour: the colour pixels' Lab (a*, b*) histogram, 32 x 32 bins of 3 units over [-24, 72),
   values outside clamped to the edge bins, smoothed with a Gaussian of 1 bin, normalised. The
   reference distribution Q is the mean of the references' histograms; the distance is the
   Hellinger distance d = sqrt(1 - sum sqrt(P * Q)) in [0, 1].
4. Scores. With v_k = ln(metric_k + 1e-6) for the three texture metrics and, over the references,
   c_k = median v_k and s_k = max(1.4826 * MAD v_k, 0.10):
       t = mean_k (v_k - c_k) / s_k                              (texture deviation)
   Leave-one-out calibration: each reference i gets t_i (c, s from the other references) and d_i
   (Hellinger to the mean histogram of the other references); then
       m_T = median t_i, s_T = max(1.4826 * MAD t_i, 0.5)
       m_C = median d_i, s_C = max(1.4826 * MAD d_i, 0.03)
   and with L(x) = 1 / (1 + exp(-x)), A = 1.2, B = 3.0:
       texture_score           = L(A * (t - m_T) / s_T + B)
       color_naturalness_score = L(-A * (d - m_C) / s_C + B)
       overall_realism_score   = sqrt(texture_score * color_naturalness_score)
   so a generated image as textured and as natural in colour as a typical reference scores 0.95,
   2.5 reference spreads worse scores 0.5, 5 spreads worse 0.05. Every score is in [0, 1].
   The references' own leave-one-out scores are reported under references.leave_one_out.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import sys
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

# Copied from evals/face_similarity_eval.py:IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# 64 megapixels: far above any SDXL/Flux output, far below what exhausts memory when decoded.
# Copied from evals/face_similarity_eval.py:MAX_IMAGE_PIXELS
MAX_IMAGE_PIXELS = 64_000_000


# Copied from evals/face_similarity_eval.py:ImageLoadError
class ImageLoadError(Exception):
    """An image file that cannot be used; the message says why."""


# Copied from evals/face_similarity_eval.py:list_images
def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, extensions in any case, in a stable order."""
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


# Copied from evals/face_similarity_eval.py:load_image
def load_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS, min_side: int = 32,
               max_aspect: float = 20.0) -> np.ndarray:
    """Decode `path` to an 8-bit BGR array (H, W, 3), EXIF orientation applied.

    Reads the bytes through pathlib so non-ASCII paths work on Windows too. Grayscale, palette,
    RGBA (composited on white) and 16-bit images are converted. Raises ImageLoadError with the
    reason for a file that is not a usable image, or whose header (read before any pixel is
    decoded, so nothing large is allocated) gives a side under `min_side` px, an aspect ratio
    beyond 1:`max_aspect` or more than `max_pixels` pixels.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ImageLoadError(f"cannot read file: {error.strerror or error}") from error
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # from the header: Image.open decodes no pixels
            if width * height > max_pixels:
                raise ImageLoadError(
                    f"image is {width}x{height} = {width * height / 1e6:.0f} MP, above the "
                    f"{max_pixels / 1e6:.0f} MP limit; downscale it first"
                )
            if min(width, height) < min_side:
                raise ImageLoadError(f"image is {width}x{height} px: a side under {min_side} px "
                                     "cannot hold a face")
            if max(width, height) > max_aspect * min(width, height):
                raise ImageLoadError(f"image is {width}x{height} px: aspect ratio beyond "
                                     f"1:{max_aspect:g} (a banner or strip, not a portrait)")
            if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation; skips a copy when upright
                image = ImageOps.exif_transpose(image)
            rgb = _to_rgb8(image)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError as error:  # its message is just a BytesIO repr
        raise ImageLoadError("not a readable image (unknown format or broken file)") from error
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageLoadError(f"not a readable image ({type(error).__name__}: {error})") from error
    # Channel by channel: several times faster than np.ascontiguousarray(rgb[:, :, ::-1]).
    bgr = np.empty(rgb.shape, dtype=np.uint8)
    bgr[:, :, 0], bgr[:, :, 1], bgr[:, :, 2] = rgb[:, :, 2], rgb[:, :, 1], rgb[:, :, 0]
    return bgr


# Copied from evals/face_similarity_eval.py:dangling_links
def dangling_links(folder: Path) -> list[Path]:
    """Symbolic links under `folder` with an image extension whose target is missing.

    list_images() skips them (they are not files); the evals list them as error rows instead of
    letting an image silently drop out of the figures.
    """
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_symlink() and not path.exists()
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


# Copied from evals/face_similarity_eval.py:unreadable_reason
def unreadable_reason(path: Path, error: OSError) -> str:
    """The error-row text for a file that cannot be opened (a dangling link says where it led)."""
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"dangling symbolic link (its target {target} does not exist)"
    return f"cannot read file: {error.strerror or error}"


# Copied from evals/face_similarity_eval.py:_to_rgb8
def _to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL mode to an 8-bit RGB array; wide integer and float modes are rescaled, not clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.max(initial=0) <= 1.0 else 255.0
        elif image.mode.startswith("I;16") or values.max(initial=0) > 255:
            top = 65535.0  # a 16-bit image is 16-bit even when dark (max <= 255)
        else:
            top = 255.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.stack([gray, gray, gray], axis=-1)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if image.mode == "RGB":
        return np.asarray(image)
    return np.asarray(image.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Method constants (all reported under "method" in the result)
CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
# (least shorter side of the grey copy in px, smallest face in px, cascade scale step); the second
# pass runs only when the first finds nothing.
DETECTION_PASSES = ((96, 24, 1.2), (320, 24, 1.1))
DETECTION_MIN_NEIGHBORS = 3
FACE_WIDTH = 160
NO_FACE_SIDE = 320
ELLIPSE = (0.5, 0.55, 0.36, 0.45)  # centre x, centre y, half-width, half-height, box fractions
SKIN_CR = (133.0, 173.0)
SKIN_CB = (77.0, 127.0)
SKIN_MIN_Y = 40.0
SKIN_Y_MEDIAN_FRACTION = 0.6  # texture pixels are also >= this x the median luma in the ellipse
SKIN_ERODE_PX = 2
MIN_TEXTURE_PIXELS = 400
COLOR_L_RANGE = (10.0, 98.0)
COLOR_L_MEDIAN_FRACTION = 0.5
FINE_SIGMA = 1.0
COARSE_SIGMA = 3.0
IMMERKAER_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
HIST_LOW = -24.0
HIST_BIN = 3.0
HIST_BINS = 32
HIST_SMOOTH_BINS = 1.0
TEXTURE_METRICS = ("laplacian_variance", "noise_relative", "hf_energy_share")
LOG_EPSILON = 1e-6
METRIC_SPREAD_FLOOR = 0.10
TEXTURE_SPREAD_FLOOR = 0.5
COLOR_SPREAD_FLOOR = 0.03
SCORE_SLOPE = 1.2
SCORE_OFFSET = 3.0
MIN_REFERENCES = 3
MAD_TO_SIGMA = 1.4826
LARGE_CROP_VALUES = 12_000_000  # above this, block-average without a float copy of the crop

# Measurements of files already seen in this process, keyed by (file identity, size, mtime, JPEG
# quality); bounded so memory stays flat however many images one process evaluates.
_MEASUREMENTS: OrderedDict = OrderedDict()
_MEASUREMENT_CACHE_SIZE = 2048
_MEASUREMENTS_LOCK = threading.Lock()
_THREAD_STATE = threading.local()
# Files measured at once: decoding (Pillow) and measuring (OpenCV) release the GIL, so while one
# file is measured the next one decodes; two keeps memory at two images in flight.
MEASURE_WORKERS = 2
_REFERENCE_MODELS: OrderedDict = OrderedDict()
_REFERENCE_MODEL_CACHE_SIZE = 8


class InputError(Exception):
    """A usage or input problem (exit code 2); the message is one line saying what to do."""


def method_constants() -> dict:
    """The constants of the method, as reported under "method"."""
    return {
        "detector": f"OpenCV Haar cascade {CASCADE_FILE} (bundled with opencv-python)",
        "detection_passes": [
            {"min_side_px": side, "min_face_px": face, "scale_factor": step}
            for side, face, step in DETECTION_PASSES],
        "detection_min_neighbors": DETECTION_MIN_NEIGHBORS,
        "face_width_px": FACE_WIDTH,
        "no_face_side_px": NO_FACE_SIDE,
        "face_ellipse": {"cx": ELLIPSE[0], "cy": ELLIPSE[1], "rx": ELLIPSE[2], "ry": ELLIPSE[3]},
        "skin_range_ycrcb": {"cr": list(SKIN_CR), "cb": list(SKIN_CB), "y_min": SKIN_MIN_Y,
                             "y_min_median_fraction": SKIN_Y_MEDIAN_FRACTION},
        "skin_erode_px": SKIN_ERODE_PX,
        "color_l_range": list(COLOR_L_RANGE),
        "color_l_median_fraction": COLOR_L_MEDIAN_FRACTION,
        "texture_metrics": list(TEXTURE_METRICS),
        "hf_sigmas_px": [FINE_SIGMA, COARSE_SIGMA],
        "color_space": "CIE Lab a*b*",
        "color_histogram": {"low": HIST_LOW, "bin": HIST_BIN, "bins": HIST_BINS,
                            "smooth_sigma_bins": HIST_SMOOTH_BINS},
        "color_distance": "hellinger",
        "metric_spread_floor": METRIC_SPREAD_FLOOR,
        "texture_spread_floor": TEXTURE_SPREAD_FLOOR,
        "color_spread_floor": COLOR_SPREAD_FLOOR,
        "score_slope": SCORE_SLOPE,
        "score_offset": SCORE_OFFSET,
        "overall": "sqrt(texture_score * color_naturalness_score)",
        "min_references": MIN_REFERENCES,
    }


# ---------------------------------------------------------------------------------------------
# Measurement of one image


def _cascade() -> cv2.CascadeClassifier:
    """The bundled frontal-face cascade, read from memory so non-ASCII install paths work.

    One per thread: evaluate() measures two files at once, and a CascadeClassifier must not be
    shared between threads.
    """
    cascade = getattr(_THREAD_STATE, "cascade", None)
    if cascade is None:
        path = Path(cv2.data.haarcascades) / CASCADE_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"OpenCV's bundled face cascade {path} is missing ({error}); "
                             "reinstall opencv-python") from error
        storage = cv2.FileStorage(text, cv2.FILE_STORAGE_READ | cv2.FILE_STORAGE_MEMORY)
        cascade = cv2.CascadeClassifier()
        if not cascade.read(storage.getFirstTopLevelNode()) or cascade.empty():
            raise InputError(f"cannot load OpenCV's face cascade {path}; reinstall opencv-python")
        _THREAD_STATE.cascade = cascade
    return cascade


def detect_face(gray: np.ndarray) -> tuple[int, int, int, int] | None:
    """The most confident frontal face in an 8-bit grey image as (x, y, w, h), or None.

    Each pass shrinks the image by a whole factor (fast, exact area averaging) so that its shorter
    side is at least the pass's size, and looks for faces of at least the pass's minimum. Of
    several faces the one with the highest cascade level weight wins: on these photos that was
    stable under blur, rescaling and colour changes, where "largest" sometimes took a false face.
    """
    height, width = gray.shape[:2]
    cascade = _cascade()
    for min_side, min_face, step in DETECTION_PASSES:
        factor = max(1, min(height, width) // min_side)
        if factor > 1:
            small_w, small_h = width // factor, height // factor
            small = cv2.resize(gray[:small_h * factor, :small_w * factor], (small_w, small_h),
                               interpolation=cv2.INTER_AREA)
        else:
            small = gray
        if min(small.shape[:2]) < min_face:
            continue
        faces, _, weights = cascade.detectMultiScale3(
            cv2.equalizeHist(small), scaleFactor=step, minNeighbors=DETECTION_MIN_NEIGHBORS,
            minSize=(min_face, min_face), outputRejectLevels=True)
        if len(faces):
            best = faces[int(np.argmax(np.asarray(weights).reshape(-1)))]
            x, y, w, h = (int(v) * factor for v in best)
            x0, y0 = max(0, x), max(0, y)
            x1, y1 = min(width, x + w), min(height, y + h)
            if x1 - x0 >= 8 and y1 - y0 >= 8:
                return x0, y0, x1 - x0, y1 - y0
    return None


@functools.lru_cache(maxsize=16)
def _ellipse_mask(height: int, width: int) -> np.ndarray:
    """The face ellipse for a region of this size (cached: read-only, shared)."""
    cx, cy, rx, ry = ELLIPSE
    yy, xx = np.ogrid[:height, :width]
    mask = (((xx + 0.5) / width - cx) / rx) ** 2 + (((yy + 0.5) / height - cy) / ry) ** 2 <= 1.0
    mask.setflags(write=False)
    return mask


def _region(bgr: np.ndarray, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """The face box (or the whole image) as float32 BGR in [0, 1] at the fixed measuring scale."""
    if box is not None:
        x, y, w, h = box
        crop = bgr[y:y + h, x:x + w]
        size = (FACE_WIDTH, max(1, round(h * FACE_WIDTH / w)))
    else:
        crop = bgr
        h, w = bgr.shape[:2]
        scale = NO_FACE_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    factor = crop.shape[1] // size[0]
    if factor >= 2:
        # Average whole factor x factor blocks first (exact area averaging, fast), in float.
        rows, cols = crop.shape[0] // factor, crop.shape[1] // factor
        crop = crop[:rows * factor, :cols * factor]
        if crop.size <= LARGE_CROP_VALUES:
            crop = cv2.resize(crop.astype(np.float32), (cols, rows), interpolation=cv2.INTER_AREA)
        else:  # numpy reduces the uint8 view in buffered chunks: no full-size float copy
            crop = crop.reshape(rows, factor, cols, factor, 3).mean(axis=(1, 3), dtype=np.float32)
    else:
        crop = crop.astype(np.float32)
    # INTER_AREA to shrink; to enlarge it acts like nearest-neighbour (blocky, false texture),
    # so a face narrower than the fixed width is enlarged bilinearly instead.
    interpolation = cv2.INTER_AREA if size[0] <= crop.shape[1] else cv2.INTER_LINEAR
    region = cv2.resize(crop, size, interpolation=interpolation)
    region *= np.float32(1 / 255)
    return region


def _histogram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised, smoothed 2-D histogram of Lab (a*, b*) values (see the module docstring)."""
    ia = np.clip(((a - HIST_LOW) / HIST_BIN).astype(np.int32), 0, HIST_BINS - 1)
    ib = np.clip(((b - HIST_LOW) / HIST_BIN).astype(np.int32), 0, HIST_BINS - 1)
    counts = np.bincount(ia * HIST_BINS + ib, minlength=HIST_BINS * HIST_BINS)
    hist = counts.reshape(HIST_BINS, HIST_BINS).astype(np.float32)
    hist = cv2.GaussianBlur(hist, (0, 0), HIST_SMOOTH_BINS, borderType=cv2.BORDER_CONSTANT)
    total = float(hist.sum())
    return hist / total if total > 0 else hist


def hellinger(p: np.ndarray, q: np.ndarray) -> float:
    """Hellinger distance between two normalised histograms, in [0, 1]."""
    overlap = float(np.sqrt(p.astype(np.float64) * q.astype(np.float64)).sum())
    return math.sqrt(max(0.0, 1.0 - overlap))


def _masks(ycc: np.ndarray, luma: np.ndarray, lightness: np.ndarray,
           face: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(skin, texture pixels, colour pixels, kind) as boolean masks; see the module docstring."""
    low = (SKIN_MIN_Y / 255, SKIN_CR[0] / 255, SKIN_CB[0] / 255)
    high = (2.0, SKIN_CR[1] / 255, SKIN_CB[1] / 255)
    skin = cv2.inRange(ycc, low, high) > 0
    height, width = luma.shape
    if face:
        inside = _ellipse_mask(height, width)
        skin &= inside
        if skin.any():
            skin &= luma >= SKIN_Y_MEDIAN_FRACTION * float(np.median(luma[inside]))
        floor = max(COLOR_L_RANGE[0],
                    COLOR_L_MEDIAN_FRACTION * float(np.median(lightness[inside])))
        color_mask = inside & (lightness >= floor) & (lightness <= COLOR_L_RANGE[1])
        kind = "face_skin"
    else:
        color_mask = skin.copy()
        kind = "image_skin"
    kernel = np.ones((3, 3), np.uint8)
    texture_mask = cv2.erode(skin.view(np.uint8), kernel, iterations=SKIN_ERODE_PX) > 0
    if int(texture_mask.sum()) < MIN_TEXTURE_PIXELS:
        # Too little skin by colour (odd light, heavy cast, no skin in view): fall back to the
        # colour pixels (face ellipse, or the whole image), eroded likewise.
        if int(color_mask.sum()) < MIN_TEXTURE_PIXELS:
            color_mask = (lightness >= COLOR_L_RANGE[0]) & (lightness <= COLOR_L_RANGE[1])
            if face:
                color_mask &= _ellipse_mask(height, width)
            if int(color_mask.sum()) < MIN_TEXTURE_PIXELS:
                color_mask = np.ones((height, width), dtype=bool)
        texture_mask = cv2.erode(color_mask.view(np.uint8), kernel, iterations=SKIN_ERODE_PX) > 0
        if int(texture_mask.sum()) < 16:
            texture_mask = color_mask
        kind += "+fallback"
    elif int(color_mask.sum()) < MIN_TEXTURE_PIXELS:
        color_mask = skin if skin.any() else texture_mask
    return skin, texture_mask, color_mask, kind


def texture_metrics(luma: np.ndarray, mask: np.ndarray) -> dict:
    """The raw texture measures of a luma image (0-255, float32) over a boolean mask."""
    laplacian = cv2.Laplacian(luma, cv2.CV_32F, ksize=1)[mask]
    residual = cv2.filter2D(luma, cv2.CV_32F, IMMERKAER_KERNEL)[mask]
    fine = (luma - cv2.GaussianBlur(luma, (0, 0), FINE_SIGMA))[mask]
    coarse = (luma - cv2.GaussianBlur(luma, (0, 0), COARSE_SIGMA))[mask]
    mean_luma = float(luma[mask].mean())
    noise_sigma = MAD_TO_SIGMA * float(np.median(np.abs(residual))) / 6.0
    coarse_energy = float(np.dot(coarse, coarse))
    return {
        "mean_luma": mean_luma,
        "laplacian_variance": float(laplacian.var()),
        "noise_sigma": noise_sigma,
        "noise_relative": noise_sigma / max(mean_luma, 1.0),
        "hf_energy_share": float(np.dot(fine, fine)) / coarse_energy if coarse_energy > 0 else 0.0,
    }


def measure_image(bgr: np.ndarray) -> dict:
    """Raw texture and colour measurements of one BGR uint8 image.

    Returns {"face_found", "raw": {...}, "hist": (32, 32) float32}; see the module docstring.
    """
    height, width = bgr.shape[:2]
    box = detect_face(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    region = _region(bgr, box)
    ycc = cv2.cvtColor(region, cv2.COLOR_BGR2YCrCb)
    luma = ycc[:, :, 0] * np.float32(255)
    lab = cv2.cvtColor(region, cv2.COLOR_BGR2Lab)
    skin, texture_mask, color_mask, kind = _masks(ycc, luma, lab[:, :, 0], box is not None)
    a = lab[:, :, 1][color_mask]
    b = lab[:, :, 2][color_mask]
    raw = {
        "image_size": [int(width), int(height)],
        "face_box": [int(v) for v in box] if box is not None else None,
        "face_width_px": int(box[2]) if box is not None else None,
        "face_upsampled": bool(box is not None and box[2] < FACE_WIDTH),
        "mask": kind,
        "texture_pixels": int(texture_mask.sum()),
        "skin_fraction": float(skin.mean()),
        **texture_metrics(luma, texture_mask),
        "color_pixels": int(a.size),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_chroma": float(np.hypot(a, b).mean()),
    }
    return {"face_found": box is not None, "raw": raw, "hist": _histogram(a, b)}


def _reencode(bgr: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageLoadError(f"cannot re-encode as JPEG quality {quality}")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def measure_file(path: Path, reencode_jpeg_quality: int | None = None) -> dict:
    """measure_image() of a file, cached in memory within this process. Raises ImageLoadError."""
    path = Path(path)
    try:
        stat = path.stat()
        # The file's identity: hard links to one file share it; the path where there is no inode.
        identity = (stat.st_dev, stat.st_ino) if stat.st_ino else str(path.resolve())
        key = (identity, stat.st_size, stat.st_mtime_ns, reencode_jpeg_quality)
    except OSError as error:
        raise ImageLoadError(unreadable_reason(path, error)) from error
    with _MEASUREMENTS_LOCK:
        cached = _MEASUREMENTS.get(key)
        if cached is not None:
            _MEASUREMENTS.move_to_end(key)
            return cached
    bgr = load_image(path)
    if reencode_jpeg_quality is not None:
        bgr = _reencode(bgr, reencode_jpeg_quality)
    measurement = measure_image(bgr)
    measurement["key"] = key
    with _MEASUREMENTS_LOCK:
        _MEASUREMENTS[key] = measurement
        while len(_MEASUREMENTS) > _MEASUREMENT_CACHE_SIZE:
            _MEASUREMENTS.popitem(last=False)
    return measurement


def measure_files(paths: list[Path], reencode_jpeg_quality: int | None = None):
    """Yield (path, measurement or ImageLoadError) for each path, in order.

    MEASURE_WORKERS files are in flight at once, so decoding overlaps measuring.
    """
    def attempt(path: Path):
        try:
            return measure_file(path, reencode_jpeg_quality)
        except ImageLoadError as error:
            return error

    with ThreadPoolExecutor(max_workers=MEASURE_WORKERS) as pool:
        yield from zip(paths, pool.map(attempt, paths))


# ---------------------------------------------------------------------------------------------
# Reference model and scores


def _logistic(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _texture_vector(raw: dict) -> np.ndarray:
    return np.log(np.array([raw[name] for name in TEXTURE_METRICS], dtype=np.float64) + LOG_EPSILON)


def _centre_spread(values: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    centre = np.median(values, axis=0)
    spread = np.maximum(MAD_TO_SIGMA * np.median(np.abs(values - centre), axis=0), floor)
    return centre, spread


def build_reference_model(measurements: list[dict]) -> dict:
    """Texture centre/spread, mean colour histogram and the leave-one-out calibration."""
    count = len(measurements)
    if count < MIN_REFERENCES:
        raise InputError(f"need at least {MIN_REFERENCES} usable reference photos for the "
                         f"leave-one-out calibration, found {count}")
    vectors = np.stack([_texture_vector(m["raw"]) for m in measurements])
    hists = np.stack([m["hist"] for m in measurements]).astype(np.float64)
    hist_total = hists.sum(axis=0)
    loo_t, loo_d = [], []
    for i in range(count):
        others = np.delete(vectors, i, axis=0)
        centre, spread = _centre_spread(others, METRIC_SPREAD_FLOOR)
        loo_t.append(float(np.mean((vectors[i] - centre) / spread)))
        loo_d.append(hellinger(hists[i], (hist_total - hists[i]) / (count - 1)))
    loo_t_arr, loo_d_arr = np.array(loo_t), np.array(loo_d)
    centre, spread = _centre_spread(vectors, METRIC_SPREAD_FLOOR)
    m_t, s_t = _centre_spread(loo_t_arr, TEXTURE_SPREAD_FLOOR)
    m_c, s_c = _centre_spread(loo_d_arr, COLOR_SPREAD_FLOOR)
    model = {
        "count": count,
        "centre": centre, "spread": spread, "hist": hist_total / count,
        "m_t": float(m_t), "s_t": float(s_t), "m_c": float(m_c), "s_c": float(s_c),
        "loo_t": loo_t, "loo_d": loo_d,
    }
    loo_scores = [_scores(t, d, model) for t, d in zip(loo_t, loo_d)]
    model["loo_scores"] = loo_scores
    return model


def _scores(t: float, d: float, model: dict) -> dict:
    texture = _logistic(SCORE_SLOPE * (t - model["m_t"]) / model["s_t"] + SCORE_OFFSET)
    color = _logistic(-SCORE_SLOPE * (d - model["m_c"]) / model["s_c"] + SCORE_OFFSET)
    return {"texture_score": texture, "color_naturalness_score": color,
            "overall_realism_score": math.sqrt(texture * color)}


def score_measurement(measurement: dict, model: dict) -> dict:
    """Scores and raw metrics of one measured image against a reference model."""
    t = float(np.mean((_texture_vector(measurement["raw"]) - model["centre"]) / model["spread"]))
    d = hellinger(measurement["hist"], model["hist"])
    raw = dict(measurement["raw"])
    raw["texture_deviation"] = t
    raw["hellinger_distance"] = d
    return {**_scores(t, d, model), "raw": raw}


def reference_model_for(measurements: list[dict]) -> dict:
    """build_reference_model(), cached in memory per reference set within this process."""
    key = tuple(m["key"] for m in measurements)
    model = _REFERENCE_MODELS.get(key)
    if model is None:
        model = build_reference_model(measurements)
        _REFERENCE_MODELS[key] = model
        while len(_REFERENCE_MODELS) > _REFERENCE_MODEL_CACHE_SIZE:
            _REFERENCE_MODELS.popitem(last=False)
    return model


# ---------------------------------------------------------------------------------------------
# Evaluation


def _images_in(folder, role: str) -> tuple[Path, list[Path]]:
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{role} folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"{role} folder {folder} is not a folder")
    images = list_images(folder) + dangling_links(folder)  # a dangling link is an error row
    if not images:
        raise InputError(f"{role} folder {folder} holds no images (searched recursively for "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    return folder, sorted(images, key=lambda path: path.relative_to(folder).as_posix())


def _progress(items, description: str, show: bool, total: int | None = None):
    if not show:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit="img", total=total, file=sys.stderr, leave=False)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def evaluate(generated_dir, reference_dir, *, reencode_jpeg_quality=None,
             show_progress=True) -> dict:
    """Score every image under generated_dir against the photos under reference_dir.

    Raises InputError for exit-2 situations. The returned dict is what --json writes; see the
    module docstring for the method.
    """
    if reencode_jpeg_quality is not None and not 1 <= int(reencode_jpeg_quality) <= 100:
        raise InputError(f"JPEG quality must be 1-100, got {reencode_jpeg_quality}")
    quality = int(reencode_jpeg_quality) if reencode_jpeg_quality is not None else None
    generated_dir, generated_paths = _images_in(generated_dir, "generated")
    reference_dir, reference_paths = _images_in(reference_dir, "reference")
    warnings: list[str] = []

    used_paths, reference_measurements, skipped = [], [], []
    for path, outcome in _progress(measure_files(reference_paths, quality), "references",
                                   show_progress, len(reference_paths)):
        if isinstance(outcome, ImageLoadError):
            skipped.append({"path": path.relative_to(reference_dir).as_posix(),
                            "reason": str(outcome)})
        else:
            reference_measurements.append(outcome)
            used_paths.append(path)
    if len(reference_measurements) < MIN_REFERENCES:
        detail = f"; unreadable: {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
        raise InputError(
            f"reference folder {reference_dir} has {len(reference_measurements)} usable photo(s), "
            f"need at least {MIN_REFERENCES} for the leave-one-out calibration{detail}")
    model = reference_model_for(reference_measurements)
    for item in skipped:
        warnings.append(f"reference {item['path']} skipped: {item['reason']}")
    no_face_refs = sum(not m["face_found"] for m in reference_measurements)
    if no_face_refs:
        warnings.append(f"{no_face_refs} of {len(reference_measurements)} reference photos had no "
                        "face found; their whole-image skin pixels were used")

    images, errors = [], []
    for path, measurement in _progress(measure_files(generated_paths, quality), "generated",
                                       show_progress, len(generated_paths)):
        relative = path.relative_to(generated_dir).as_posix()
        if isinstance(measurement, ImageLoadError):
            images.append({"path": relative, "face_found": False, "texture_score": None,
                           "color_naturalness_score": None, "overall_realism_score": None,
                           "raw": None, "error": str(measurement)})
            errors.append({"path": relative, "error": str(measurement)})
            continue
        scored = score_measurement(measurement, model)
        images.append({"path": relative, "face_found": measurement["face_found"],
                       "texture_score": scored["texture_score"],
                       "color_naturalness_score": scored["color_naturalness_score"],
                       "overall_realism_score": scored["overall_realism_score"],
                       "raw": scored["raw"], "error": None})
    scored_rows = [row for row in images if row["error"] is None]
    if not scored_rows:
        raise InputError(f"none of the {len(images)} images in generated folder {generated_dir} "
                         f"could be read; first: {errors[0]['path']}: {errors[0]['error']}")

    for item in errors:
        warnings.append(f"generated {item['path']} not scored: {item['error']}")
    no_face = [row["path"] for row in scored_rows if not row["face_found"]]
    if no_face:
        warnings.append(f"no face found in {len(no_face)} generated image(s) (e.g. {no_face[0]}); "
                        "whole-image skin pixels were scored instead")
    small = [row["path"] for row in scored_rows if row["raw"]["face_upsampled"]]
    small += [used.relative_to(reference_dir).as_posix() for used, m in
              zip(used_paths, reference_measurements) if m["raw"]["face_upsampled"]]
    if small:
        warnings.append(f"{len(small)} image(s) have a face narrower than {FACE_WIDTH} px "
                        f"(e.g. {small[0]}): fine texture cannot be measured there and reads as "
                        "smooth skin")
    if quality is None:
        jpeg = {".jpg", ".jpeg"}
        ref_jpeg = sum(p.suffix.lower() in jpeg for p in used_paths) / len(used_paths)
        gen_jpeg = (sum(Path(row["path"]).suffix.lower() in jpeg for row in scored_rows)
                    / len(scored_rows))
        if abs(ref_jpeg - gen_jpeg) >= 0.5:
            warnings.append(
                f"{ref_jpeg:.0%} of references but {gen_jpeg:.0%} of generated images are JPEG: "
                "compression changes texture like smoothing does; consider --reencode-jpeg 90")

    loo = model["loo_scores"]
    summary = {
        "images": len(images),
        "scored": len(scored_rows),
        "errors": len(errors),
        "faces_found": sum(row["face_found"] for row in scored_rows),
        "texture_score": _mean([row["texture_score"] for row in scored_rows]),
        "color_naturalness_score": _mean([row["color_naturalness_score"] for row in scored_rows]),
        "overall_realism_score": _mean([row["overall_realism_score"] for row in scored_rows]),
    }
    return {
        "generated_dir": str(generated_dir),
        "reference_dir": str(reference_dir),
        "method": {**method_constants(), "reencode_jpeg_quality": quality},
        "images": images,
        "references": {
            "count": model["count"],
            "files": len(reference_paths),
            "skipped": skipped,
            "faces_found": len(reference_measurements) - no_face_refs,
            "leave_one_out": {
                "texture_score_mean": _mean([s["texture_score"] for s in loo]),
                "color_naturalness_score_mean": _mean([s["color_naturalness_score"] for s in loo]),
                "overall_realism_score_mean": _mean([s["overall_realism_score"] for s in loo]),
                "per_reference": [
                    {"path": path.relative_to(reference_dir).as_posix(), **scores,
                     "texture_deviation": t, "hellinger_distance": d}
                    for path, scores, t, d in zip(used_paths, loo, model["loo_t"], model["loo_d"])
                ],
            },
            "calibration": {
                "texture_metric_median_log": dict(zip(TEXTURE_METRICS, model["centre"].tolist())),
                "texture_metric_spread_log": dict(zip(TEXTURE_METRICS, model["spread"].tolist())),
                "m_t": model["m_t"], "s_t": model["s_t"], "m_c": model["m_c"], "s_c": model["s_c"],
            },
        },
        "errors": errors,
        "summary": summary,
        "warnings": warnings,
    }


# ---------------------------------------------------------------------------------------------
# Command line


def format_table(result: dict) -> str:
    """Per-image table and summary, as printed on stdout."""
    rows = result["images"]
    width = max([len("image")] + [len(row["path"]) for row in rows])
    lines = [f"{'image':<{width}}  face  texture  colour  overall"]
    for row in rows:
        if row["error"] is not None:
            lines.append(f"{row['path']:<{width}}  ERROR: {row['error']}")
            continue
        lines.append(f"{row['path']:<{width}}  {'yes' if row['face_found'] else 'no ':<4}  "
                     f"{row['texture_score']:7.3f}  {row['color_naturalness_score']:6.3f}  "
                     f"{row['overall_realism_score']:7.3f}")
    summary = result["summary"]
    loo = result["references"]["leave_one_out"]
    lines += [
        "",
        f"images {summary['images']}  scored {summary['scored']}  errors {summary['errors']}  "
        f"faces found {summary['faces_found']}",
        f"mean texture_score {summary['texture_score']:.3f}  "
        f"color_naturalness_score {summary['color_naturalness_score']:.3f}  "
        f"overall_realism_score {summary['overall_realism_score']:.3f}",
        f"references {result['references']['count']} (leave-one-out means: texture "
        f"{loo['texture_score_mean']:.3f}, colour {loo['color_naturalness_score_mean']:.3f}, "
        f"overall {loo['overall_realism_score_mean']:.3f})",
    ]
    return "\n".join(lines)


# Copied from evals/scorecard.py:output_path_problem
def output_path_problem(path: Path, in_place: bool = False) -> str | None:
    """Why a file cannot be written at `path`, or None: checked before any work is done.

    `path` must not be a folder or a dangling link; the nearest existing folder above it must be
    a folder in which a file can be created (probed with a temporary file: permission bits do not
    tell the truth to root or on a read-only mount). With `in_place` (a file appended to, not
    replaced) an existing file must also open for appending. Nothing is created or changed.
    """
    path = Path(path)
    if path.is_dir():
        return "is a folder; give a file path"
    if path.is_symlink() and not path.exists():
        return "is a dangling symbolic link"
    if path.exists():
        if not path.is_file():
            return "exists and is not a regular file"
        if in_place:
            try:
                with open(path, "ab"):
                    pass
            except OSError as error:
                return f"cannot be written ({error.strerror or error})"
    folder = path.parent
    while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        return f"no file can be created in {folder} ({error.strerror or error})"
    return None


# Copied from evals/scorecard.py:write_atomic
def write_atomic(path: Path, text: str) -> None:
    """Write a text file via a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", type=Path, required=True,
                        help="folder of generated images, searched recursively (required)")
    parser.add_argument("--reference", type=Path, required=True,
                        help="folder of the person's real photos, at least 3 (required)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the full result as JSON to this file (default: none)")
    parser.add_argument("--reencode-jpeg", type=int, default=None, metavar="QUALITY",
                        help="re-encode every image of both sets as JPEG at this quality (1-100) "
                             "in memory before measuring, so compression affects both alike "
                             "(default: off)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr (default: shown)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reencode_jpeg is not None and not 1 <= args.reencode_jpeg <= 100:
        parser.error(f"--reencode-jpeg must be 1-100, got {args.reencode_jpeg}")
    if args.json is not None:
        problem = output_path_problem(args.json)
        if problem is not None:  # found before any image is measured
            parser.error(f"--json {args.json}: {problem}")
    try:
        result = evaluate(args.generated, args.reference, reencode_jpeg_quality=args.reencode_jpeg,
                          show_progress=not args.no_progress)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(format_table(result))
    if args.json is not None:
        write_atomic(args.json, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
