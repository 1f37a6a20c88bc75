"""Identity similarity of generated faces to a person's training photos: per image and PASS/FAIL.

For every image in --generated, find the face (the largest one, or with --face-policy best the
one most like the reference), embed it, and compare it with the faces in --reference (the
person's training photos). Embeddings are L2-normalised and compared by cosine similarity.

Usage:
  # The pod run (insightface buffalo_l, GPU when it really runs):
  python3 evals/face_similarity_eval.py --generated /workspace/sweep_results \\
      --reference /workspace/training_images --threshold 0.60 --json /workspace/face_sim.json
  # Force the GPU (a silent fallback to CPU becomes an error that names the likely cause):
  python3 evals/face_similarity_eval.py --generated OUT --reference REF --device cuda
  # A local or oddly nested pack folder (antelopev2/antelopev2 is found too):
  python3 evals/face_similarity_eval.py --generated OUT --reference REF \\
      --model-pack ~/packs/antelopev2
  # On the pod, fetch a missing pack with insightface's own downloader (opt-in; default offline):
  python3 evals/face_similarity_eval.py --generated OUT --reference REF --download-pack
  # Tiny CPU run, fully offline (dlib backend, models from face-recognition-models; ~15 s;
  # exit 1, since the crops show other people than the photos):
  python3 evals/face_similarity_eval.py --backend dlib --no-cache \\
      --generated ../shared/faces/crops --reference ../shared/faces/photos
  # Identity against held-out photos, memorisation against the training photos:
  python3 evals/face_similarity_eval.py --generated OUT --reference HELD_OUT --training TRAIN

Exit codes: 0 PASS, 1 FAIL, 2 usage or input error (missing/empty folder, no generated image
readable at all, no usable reference face, missing or broken model pack, --device cuda without a
working CUDA provider).
Stdout: one row per generated image, then the summary. Progress and warnings: stderr.

What PASS means: mean >= threshold and detection_rate >= --min-detection-rate, where `mean` is
the mean similarity to the reference centroid over ALL generated images, an image without a
face (or an unreadable one) counting 0; `mean_detected` averages only images with a face.
median/min/max use the same counting as `mean`. An image passes when its face's similarity to
the centroid (mean of the normalised reference embeddings, renormalised) reaches the threshold.

Backends and thresholds (numbers from different backends are never comparable):
- insightface (default): an insightface model pack (buffalo_l by default) read from
  ~/.insightface/models/NAME, or a folder given to --model-pack. Nothing is downloaded by
  default: a missing pack is an input error that names both ways out, --download-pack
  (insightface's own downloader, insightface.utils.storage.download, fetches NAME.zip from the
  insightface model zoo into ~/.insightface/models/NAME) or unzipping the pack there by hand.
  FaceAnalysis is always given the resolved folder, so it never downloads on its own. Loading
  goes through insightface's FaceAnalysis/model_zoo (SCRFD detector, ArcFace recogniser,
  5-point norm_crop alignment).
  Default threshold 0.60 (ArcFace cosine). The ONNX Runtime providers that the sessions actually
  use (session.get_providers()) are reported.
- dlib: dlib-bin with the models shipped in face-recognition-models (HOG frontal face detector,
  shape_predictor_5_face_landmarks, dlib_face_recognition_resnet_model_v1; 5-point alignment
  via dlib's face chips). CPU, offline. Default threshold 0.92 on its own (compressed) scale.

dlib threshold calibration (cosine of L2-normalised dlib descriptors, this script's detection
and alignment; run on ../shared/faces/crops only, 25 tight TV-frame crops of 5 people x 5, so
that the CI test on ../shared/faces/photos uses photos the threshold never saw):
  method: every crop, held out, against the centroid of the other 4 crops of its person (25
  same-person scores) and against the centroid of each other person's 5 crops (100
  different-person scores); the threshold is the midpoint of the gap, rounded to 2 decimals.
  same person:      min 0.9494, mean 0.9695
  different person: max 0.8995, mean 0.8662
  midpoint 0.9244 -> default 0.92. Cross-check: dlib's documented same-person rule (Euclidean
  distance < 0.6 between raw descriptors, whose norm is about 1.43) is cosine ~0.91.
  Held-out check on photos/ (never used to tune): same person min 0.9420, different
  person max 0.8805.

Faces: detection retries before "no face": dlib runs HOG, then upsampled HOG, then the image
padded by 25%, then padded by 50% and shrunk; insightface runs SCRFD at 640, at 320, padded by
25% at 640, padded by 50% at 320. Tight crops need the padding. Large images are downscaled
for detection (alignment and embedding use the full-resolution pixels). Each row reports how
many faces the image had and which attempt found them.

References: the largest face of each reference image; references without a face are listed and
skipped (none left is exit 2). The reference ceiling is each reference against the centroid of
the others (leave-one-out); its mean is `ceiling`, and identity_ratio = mean / ceiling. A
reference whose leave-one-out score is below the threshold, or (4+ references) more than three
robust standard deviations below the median, is reported as an outlier (wrong person or bad photo).

Inputs: recursive, .jpg .jpeg .png .webp .bmp .tif .tiff in any case; EXIF orientation applied;
grayscale, RGBA and 16-bit images converted. Refused from the image header, before any pixel is
decoded: above 64 MP, a side under 32 px, an aspect ratio beyond 1:20. Refused and unreadable
files and dangling symbolic links are error rows, counted (as images without a face) and the
run goes on. A generated image that is byte- or pixel-identical to a reference (a training
photo copied or re-encoded into the sweep) is flagged (identical_to_reference), excluded from
every figure, and named in a warning.

Beyond identity (the LoRA judge; the scorecard groups these per config):
- Memorisation. Training photos: --training, default the --reference photos. For each
  generated face, the nearest training photo and its similarity. The copy bar is
  copy_similarity = 1 - 0.5 x (1 - s), s the similarity of the two most alike distinct training
  photos: a face closer to one training photo than half the distance that separates any two of
  them is a copy of it (half: a margin against the noise of a few photos; on dlib and the
  shared photos, re-encoded training photos score 0.998+, other photos of the person at most
  0.975 against a bar of 0.984-0.987). A whole image within 12 of 64 bits of a training
  photo's perceptual hash is a copy too (pHash as imagehash.phash computes it, of the image
  reduced to 128 px; re-encoded and shifted copies differ by 0-6 bits, different photos and
  mirror images by 20+). Training photos that are near-duplicates of each other are not a
  distinct pair. Per image: nearest_training(_similarity), phash_distance, copy, copy_of,
  copy_reason ("face", "whole image", both, or "identical file"); summary copy_rate.
- Rigidity. spread = mean pairwise identity distance (1 - cosine) of the generated faces,
  against the distinct training photos' own (reference_spread); spread_ratio below 0.35 is
  rigid (one face whatever the seed: on the shared photos 8 re-encoded copies of one photo
  score 0.01, 8 different pictures of the person 1.0). The scorecard measures it per config
  and prompt, across seeds.
- Pose: yaw, pitch, roll per face (degrees; yaw > 0: the face turned to the subject's left,
  its nose toward the image's right; pitch > 0: looking up; roll > 0: tilted clockwise in the
  image; a mirrored image negates yaw and roll). 68 iBUG landmarks (dlib:
  shape_predictor_68_face_landmarks.dat from face-recognition-models; insightface: the pack's
  1k3d68.onnx landmark_3d_68 model, as in buffalo_l) fitted by cv2.solvePnP to a generic 3-D
  face (nose tip, chin, outer eye corners, mouth corners), a pinhole camera whose focal length
  is the image's longer side. A pack without the landmark model measures no pose (null, and a
  warning). Yaw is near 0 on frontal photos and changes sign on a mirrored copy; pitch rests on
  a generic face and is rougher (about +-10 degrees). The pose summary gives identity for
  frontal (|yaw| < 15) and turned faces and its slope per 10 degrees of |yaw|.
- map: the first two principal components of every reference, training and generated face
  embedding (one PCA), for the scorecard's identity map.

Cache: embeddings (with poses and the perceptual hash) are stored per file content (SHA-256) +
backend + model file fingerprint + detection settings + pose and hash methods + face mode, as
.npz files read with allow_pickle=False, in the user cache folder (XDG_CACHE_HOME or ~/.cache
on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows; subfolder
face_similarity_eval) unless --cache-dir or --no-cache. A corrupt entry is
ignored and rebuilt. Re-running with the same references does not recompute them. A cache
folder that cannot be written is one warning; its entries are still read. --json is checked
before any image is read (exit 2 naming the flag).

The image-input helpers below are shared by copy with evals/skin_realism_eval.py; keep the copies
identical (tests/test_copies.py checks them).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# 64 megapixels: far above any SDXL/Flux output, far below what exhausts memory when decoded.
MAX_IMAGE_PIXELS = 64_000_000


# The one recipe that leaves onnxruntime-gpu alone in the environment (README.md, requirements-pod.txt).
ONNXRUNTIME_FIX = ("pip uninstall -y onnxruntime && "
                   "pip install --force-reinstall --no-deps onnxruntime-gpu=={version}")


class ImageLoadError(Exception):
    """An image file that cannot be used; the message says why."""


def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, extensions in any case, in a stable order."""
    found = [
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    ]
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


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


def unreadable_reason(path: Path, error: OSError) -> str:
    """The error-row text for a file that cannot be opened (a dangling link says where it led)."""
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"dangling symbolic link (its target {target} does not exist)"
    return f"cannot read file: {error.strerror or error}"


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


# ----------------------------------------------------------------------------------------------
# Constants and small types
# ----------------------------------------------------------------------------------------------

BACKENDS = ("insightface", "dlib")
DEVICES = ("auto", "cpu", "cuda")
FACE_POLICIES = ("largest", "best")
DEFAULT_MODEL_PACK = "buffalo_l"
# Calibrated defaults; see "dlib threshold calibration" in the module docstring.
DEFAULT_THRESHOLDS = {"insightface": 0.60, "dlib": 0.92}
DEFAULT_MIN_DETECTION_RATE = 0.8
# Below this a dlib threshold is surely meant for another scale (different people score ~0.85).
DLIB_IMPLAUSIBLE_THRESHOLD = 0.85
CACHE_VERSION = 1
# Memorisation (module docstring): a face is a copy of a training photo when its distance to it
# (1 - cosine) is below this fraction of the distance between the two most alike distinct
# training photos; a whole image is a near-duplicate of one when their perceptual hashes differ
# in at most PHASH_MAX_DISTANCE of 64 bits.
COPY_DISTANCE_FRACTION = 0.5
PHASH_MAX_DISTANCE = 12
# The image is first reduced to PHASH_SIDE x PHASH_SIDE (cv2 INTER_AREA, 1-2 ms) and then hashed:
# the hash shrinks it to 32 x 32 anyway, and a LANCZOS pass over a full 1024 px image costs
# ~20 ms.
PHASH_SIDE = 128
PHASH_METHOD = f"phash-64@{PHASH_SIDE}"
# Rigidity: generated faces whose mean pairwise distance is below this fraction of the
# training photos' own are "rigid" (mode collapse: one face, whatever the seed).
RIGID_SPREAD_RATIO = 0.35
# Pose: |yaw| below this many degrees is frontal.
FRONTAL_YAW = 15.0
POSE_METHOD = "pnp-generic6-v1"
POSE_CONVENTION = ("degrees; yaw > 0: the face turned to the subject's left (its nose toward "
                   "the image's right), pitch > 0: looking up, roll > 0: the head tilted "
                   "clockwise in the image; a mirrored image has yaw and roll negated")
# 68-point iBUG landmarks (dlib's shape_predictor_68_face_landmarks and insightface's
# landmark_3d_68 use the same order) fitted by PnP: nose tip, chin, the outer corners of the
# eyes and the corners of the mouth (image-left first) ...
POSE_LANDMARKS = (30, 8, 36, 45, 48, 54)
# ... on a generic face in millimetres, camera axes (x to the image's right, y down, z away
# from the camera), nose tip at the origin: the widely used six-point head model.
POSE_MODEL = np.array([(0.0, 0.0, 0.0), (0.0, 63.6, 12.5), (-43.3, -32.7, 26.0),
                       (43.3, -32.7, 26.0), (-28.9, 28.9, 24.1), (28.9, 28.9, 24.1)])
CACHE_APP_NAME = "face_similarity_eval"
INSIGHTFACE_ROOT = "~/.insightface"
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml",
                             "onnxruntime-openvino", "onnxruntime-silicon")


class InputError(Exception):
    """A usage or input problem (exit code 2); the message is one clear line."""


@dataclass
class FaceRecord:
    """What the models said about one image: face count and the embedded face(s).

    `embeddings` rows are L2-normalised, ordered largest face first; one row for mode "largest",
    one per face for mode "all". `boxes` are (x1, y1, x2, y2) in original image pixels.
    """

    faces: int
    embeddings: np.ndarray
    boxes: np.ndarray
    detected_by: str | None = None
    # SHA-256 of the decoded pixels (shape + BGR bytes): finds a generated image that is a
    # re-encoded copy of a reference, also when the embedding comes from the cache.
    pixels_sha256: str | None = None
    # (yaw, pitch, roll) in degrees per embedded face, NaN where no pose was measured.
    poses: np.ndarray | None = None
    # Perceptual hash (perceptual_hash(): 64 bits as 16 hex digits) of the whole image, or None.
    phash: str | None = None

    def __post_init__(self) -> None:
        if self.poses is None:
            self.poses = np.full((len(self.embeddings), 3), np.nan, np.float32)

    @classmethod
    def empty(cls, dim: int = 0) -> "FaceRecord":
        return cls(0, np.zeros((0, dim), np.float32), np.zeros((0, 4), np.float32), None)


@dataclass
class Attempt:
    """One detection try: pad the image by `pad` (fraction of its longer side), shrink the
    detection copy by `shrink`, and run the detector with `upsample` (dlib) or `det_size`."""

    name: str
    pad: float = 0.0
    shrink: float = 1.0
    upsample: int = 0
    det_size: tuple[int, int] | None = None

    def as_key(self) -> list:
        return [self.name, self.pad, self.shrink, self.upsample, list(self.det_size or ())]


@dataclass
class RunStats:
    cache_hits: int = 0
    cache_misses: int = 0
    cache_rebuilt: int = 0
    model_calls: int = 0
    model_seconds: float = 0.0
    model_load_seconds: float = 0.0


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.where(norms > 0, vectors / np.where(norms > 0, norms, 1.0), 0.0)


# ----------------------------------------------------------------------------------------------
# Per-face measures beyond identity: pose, perceptual hash, spread, a 2-D map
# ----------------------------------------------------------------------------------------------


def head_pose(points: np.ndarray, center: tuple[float, float], focal: float
              ) -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in degrees (POSE_CONVENTION) from 68 iBUG landmarks, or None.

    `points` are (x, y) image pixels (at least 68 rows, iBUG order); the camera is a pinhole at
    `center` with focal length `focal` px (the image's longer side: about a 50 degree view).
    cv2.solvePnP fits POSE_MODEL to the six POSE_LANDMARKS, starting from a frontal face at the
    depth the eye distance implies (so it converges to the face that looks at the camera, not
    its mirror image behind it). The angles are read from the fitted face's normal (yaw, pitch)
    and its eye line (roll), which has no gimbal ambiguity. A fit that fails, or that turns the
    face away from the camera, is None.
    """
    import cv2

    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[0] < 68 or points.shape[1] < 2 \
            or not np.all(np.isfinite(points[:68, :2])):
        return None
    image_points = np.ascontiguousarray(points[list(POSE_LANDMARKS), :2])
    cx, cy = float(center[0]), float(center[1])
    camera = np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])
    eyes = float(np.linalg.norm(image_points[3] - image_points[2]))
    if not focal > 0 or eyes < 2.0:
        return None
    depth = focal * float(POSE_MODEL[3, 0] - POSE_MODEL[2, 0]) / eyes
    rvec = np.zeros((3, 1))
    tvec = np.array([[(image_points[0, 0] - cx) * depth / focal],
                     [(image_points[0, 1] - cy) * depth / focal], [depth]])
    try:
        ok, rvec, tvec = cv2.solvePnP(POSE_MODEL, image_points, camera, None, rvec, tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    except cv2.error:
        return None
    if not ok or not np.all(np.isfinite(rvec)):
        return None
    rotation = cv2.Rodrigues(rvec)[0]
    normal = rotation @ np.array([0.0, 0.0, -1.0])  # out of the face, toward a frontal camera
    if normal[2] >= 0:
        return None
    across = rotation @ np.array([1.0, 0.0, 0.0])  # the eye line, image-left to image-right
    yaw = math.degrees(math.atan2(normal[0], -normal[2]))
    pitch = math.degrees(math.atan2(-normal[1], math.hypot(normal[0], normal[2])))
    roll = math.degrees(math.atan2(across[1], across[0]))
    return yaw, pitch, roll


def _dct_matrix(size: int) -> np.ndarray:
    """The unnormalised DCT-II as a matrix (scipy.fftpack.dct's default): 2 cos(pi k (2n+1) / 2N)."""
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


_DCT32 = _dct_matrix(32)


def perceptual_hash(bgr: np.ndarray) -> str:
    """The 64-bit perceptual hash (pHash) of the whole image, 16 hex digits.

    The image is reduced to PHASH_SIDE px square (cv2 INTER_AREA), then hashed as
    imagehash.phash does (PIL's "L" luma, LANCZOS to 32 x 32, a 2-D DCT-II, the top-left 8 x 8
    coefficients against their median, bits row by row): tests check the two agree bit for bit.
    The DCT is a 32 x 32 matrix product here, so neither imagehash nor scipy is needed (importing
    scipy.fftpack alone costs ~0.3 s).
    """
    import cv2

    small = cv2.resize(bgr, (PHASH_SIDE, PHASH_SIDE), interpolation=cv2.INTER_AREA)
    gray = Image.fromarray(_swap_red_blue(small)).convert("L").resize(
        (32, 32), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8]
    bits = "".join("1" if bit else "0" for bit in (low > np.median(low)).ravel())
    return f"{int(bits, 2):016x}"


def hash_distance(first: str, second: str) -> int:
    """Bits that differ between two perceptual hashes of the same length (hex)."""
    return bin(int(first, 16) ^ int(second, 16)).count("1")


def _products(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """first @ second.T. Small products go through einsum: a BLAS matrix product wakes its
    worker threads, which then spin and take CPU from the rest of the run on a small machine
    (measured: ~0.3 s of a 3.5 s warm scorecard run on 2 busy cores); large ones through BLAS."""
    if first.shape[0] * second.shape[0] * first.shape[1] <= 20_000_000:
        return np.einsum("ik,jk->ij", first, second)
    return first @ second.T


def spread_per_face(embeddings: np.ndarray) -> np.ndarray | None:
    """Each face's mean identity distance (1 - cosine) to the other faces of the set; their mean
    is the set's mean pairwise distance. None for fewer than two faces."""
    vectors = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    count = len(vectors)
    if count < 2:
        return None
    similarity = _products(vectors, vectors)
    return (count - 1 - (similarity.sum(axis=1) - np.diag(similarity))) / (count - 1)


def pose_summary(yaws, similarities) -> dict:
    """How identity holds away from frontal: faces with a pose, yaw spread, the mean similarity
    of frontal (|yaw| < FRONTAL_YAW) and turned faces, and the least-squares slope of similarity
    on |yaw| per 10 degrees (3+ faces whose |yaw| spans 5+ degrees)."""
    pairs = [(float(yaw), float(sim)) for yaw, sim in zip(yaws, similarities)
             if yaw is not None and sim is not None and math.isfinite(yaw)
             and math.isfinite(sim)]
    result = {"faces_with_pose": len(pairs), "yaw_mean": None, "yaw_std": None,
              "frontal_faces": 0, "frontal_similarity": None, "turned_faces": 0,
              "turned_similarity": None, "similarity_per_10_degrees": None}
    if not pairs:
        return result
    yaw = np.array([pair[0] for pair in pairs])
    sim = np.array([pair[1] for pair in pairs])
    frontal = np.abs(yaw) < FRONTAL_YAW
    result.update(yaw_mean=_round(yaw.mean()), yaw_std=_round(yaw.std()),
                  frontal_faces=int(frontal.sum()), turned_faces=int((~frontal).sum()),
                  frontal_similarity=_round(sim[frontal].mean()) if frontal.any() else None,
                  turned_similarity=_round(sim[~frontal].mean()) if (~frontal).any() else None)
    turn = np.abs(yaw)
    if len(pairs) >= 3 and turn.max() - turn.min() >= 5.0:
        centred = turn - turn.mean()  # least squares, closed form (no LAPACK call)
        slope = float((centred * (sim - sim.mean())).sum() / (centred * centred).sum())
        result["similarity_per_10_degrees"] = _round(10.0 * slope)
    return result


def embedding_map(embeddings: np.ndarray) -> np.ndarray:
    """2-D coordinates of L2-normalised embeddings: their first two principal components, each
    axis signed so that its largest loading is positive (a stable picture run to run). Fewer
    than 2 rows, or a missing component, give zeros where undefined.

    The components come from the eigenvectors of the smaller of the Gram (rows x rows) and the
    covariance (dims x dims) matrix: the same axes as an SVD, at a fraction of its cost (a
    threaded SVD of 56 x 128 took ~70 ms on a busy 2-core machine, this ~1 ms).
    """
    vectors = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    coordinates = np.zeros((len(vectors), 2))
    if len(vectors) < 2:
        return coordinates
    centred = vectors - vectors.mean(axis=0)
    gram = len(centred) <= centred.shape[1]
    values, vectors_ = np.linalg.eigh(_products(centred, centred) if gram
                                      else _products(centred.T, centred.T))
    for axis, index in enumerate(np.argsort(values)[::-1][:2]):
        if values[index] <= 1e-12:
            continue
        component = (centred.T @ vectors_[:, index]) if gram else vectors_[:, index]
        component = component / np.linalg.norm(component)
        if component[np.argmax(np.abs(component))] < 0:
            component = -component
        coordinates[:, axis] = centred @ component
    return coordinates


def _pad_image(image: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
    """Black border of `fraction` x the longer side on every edge (tight crops need context)."""
    if fraction <= 0:
        return image, 0
    pad = int(round(max(image.shape[:2]) * fraction))
    padded = np.zeros((image.shape[0] + 2 * pad, image.shape[1] + 2 * pad, 3), dtype=image.dtype)
    padded[pad:pad + image.shape[0], pad:pad + image.shape[1]] = image
    return padded, pad


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    height, width = image.shape[:2]
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    # Bilinear is ~8x cheaper than INTER_AREA and finds the same faces down to 0.4x; stronger
    # shrinks alias, so they average.
    interpolation = cv2.INTER_AREA if scale < 0.4 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _swap_red_blue(image: np.ndarray) -> np.ndarray:
    """BGR <-> RGB as a new contiguous array (channel copies; much faster than [:, :, ::-1])."""
    swapped = np.empty(image.shape, dtype=image.dtype)
    swapped[:, :, 0], swapped[:, :, 1], swapped[:, :, 2] = \
        image[:, :, 2], image[:, :, 1], image[:, :, 0]
    return swapped


def _file_fingerprint(path: Path) -> str:
    """Content fingerprint of a (possibly large) model file: name, size, first and last MiB."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode("utf-8"))
    with open(path, "rb") as stream:
        digest.update(stream.read(1 << 20))
        if size > 2 << 20:
            stream.seek(-(1 << 20), os.SEEK_END)
            digest.update(stream.read(1 << 20))
    return digest.hexdigest()[:16]


def _installed_onnxruntime_distributions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def cuda_fallback_diagnosis() -> str:
    """Why ONNX Runtime runs on CPU although CUDA was asked for: the likely cause and the fix."""
    import onnxruntime

    dists = _installed_onnxruntime_distributions()
    available = onnxruntime.get_available_providers()
    gpu_version = dists.get("onnxruntime-gpu", "1.23.2")
    if "onnxruntime" in dists and "onnxruntime-gpu" in dists:
        return (f"both onnxruntime {dists['onnxruntime']} and onnxruntime-gpu "
                f"{dists['onnxruntime-gpu']} are installed; they share one 'onnxruntime' folder "
                f"and the CPU build wins. Fix (as in requirements-pod.txt): "
                f"{ONNXRUNTIME_FIX.format(version=gpu_version)}")
    if "CUDAExecutionProvider" not in available:
        installed = ", ".join(f"{k} {v}" for k, v in dists.items()) or "no onnxruntime package"
        return (f"this ONNX Runtime has no CUDAExecutionProvider (installed: {installed}; "
                f"available providers: {available}). Fix (as in requirements-pod.txt): "
                f"{ONNXRUNTIME_FIX.format(version=gpu_version)}")
    return ("CUDAExecutionProvider is installed but the session fell back to CPU: usually a "
            "CUDA/cuDNN mismatch (onnxruntime-gpu 1.23 needs CUDA 12.x and cuDNN 9 libraries on "
            "the library path; importing torch first or `pip install nvidia-cudnn-cu12` "
            "provides them) or no visible GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)")


# ----------------------------------------------------------------------------------------------
# Backends: each turns a BGR image into a FaceRecord
# ----------------------------------------------------------------------------------------------


class _Backend:
    name = ""
    model = ""
    device = "cpu"
    providers: list[str] = []
    attempts: list[Attempt] = []
    max_detection_side = 1024
    # Bump when detection/alignment code changes what an embedding is: old cache entries then miss.
    pipeline_version = 1
    # What measures head pose (None: no landmark model, poses stay NaN) and why not.
    pose_method: str | None = None
    pose_unavailable: str | None = None

    def __init__(self) -> None:
        self.stats = RunStats()

    def cache_identity(self) -> dict:
        """Everything besides the image bytes that decides a cache entry (embeddings, poses and
        the perceptual hash)."""
        return {"backend": self.name, "model": self.model, "pipeline": self.pipeline_version,
                "model_fingerprint": self.model_fingerprint,
                "max_detection_side": self.max_detection_side,
                "attempts": [attempt.as_key() for attempt in self.attempts],
                "pose": self.pose_method, "phash": PHASH_METHOD,
                **self.extra_settings()}

    def extra_settings(self) -> dict:
        return {}

    def embed(self, bgr: np.ndarray, mode: str) -> FaceRecord:
        """Detect with retries, embed the largest face (mode "largest") or all faces ("all")."""
        self.stats.model_calls += 1
        for attempt in self.attempts:
            work, pad = _pad_image(bgr, attempt.pad)
            scale = min(1.0, self.max_detection_side / max(work.shape[:2])) * attempt.shrink
            detect_image = _resize(work, scale) if scale != 1.0 else work
            boxes, landmarks = self._detect(detect_image, attempt)
            if len(boxes):
                break
        else:
            return FaceRecord.empty(self.embedding_dim)
        boxes = np.asarray(boxes, dtype=np.float64) / scale
        landmarks = None if landmarks is None else np.asarray(landmarks, np.float64) / scale
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = np.argsort(-areas, kind="stable")
        chosen = order[:1] if mode == "largest" else order
        # The camera of the original photo, in the padded copy's pixels (padding is symmetric).
        frame = (work.shape[1] / 2.0, work.shape[0] / 2.0, float(max(bgr.shape[:2])))
        raw, poses = self._embed_faces(work, boxes[chosen],
                                       None if landmarks is None else landmarks[chosen], frame)
        embeddings = l2_normalize(np.asarray(raw, dtype=np.float64)).astype(np.float32)
        original_boxes = (boxes[chosen] - pad).astype(np.float32)
        pose_rows = np.array([pose if pose is not None else (np.nan, np.nan, np.nan)
                              for pose in poses], dtype=np.float32).reshape(-1, 3)
        return FaceRecord(int(len(boxes)), embeddings, original_boxes, attempt.name,
                          poses=pose_rows)

    def _timed(self, function, *args):
        """Call a model function, adding its time to stats.model_seconds."""
        start = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.stats.model_seconds += time.perf_counter() - start

    embedding_dim = 0

    def _detect(self, image: np.ndarray, attempt: Attempt):
        raise NotImplementedError

    def _embed_faces(self, image: np.ndarray, boxes: np.ndarray, landmarks, frame):
        """(embeddings, poses): one raw embedding and one head_pose() (or None) per box."""
        raise NotImplementedError


class DlibBackend(_Backend):
    """dlib HOG detector + 5-point shape predictor + ResNet descriptor (face-recognition-models).

    Models load on the first image that is not in the cache, so a fully cached run never loads them.
    """

    name = "dlib"
    model = "dlib_face_recognition_resnet_model_v1"
    embedding_dim = 128
    max_detection_side = 1024
    attempts = [
        Attempt("hog"),
        Attempt("hog-upsample", upsample=1),
        Attempt("pad25", pad=0.25),
        Attempt("pad50-shrink", pad=0.5, shrink=0.75),
    ]
    MODEL_FILES = ("shape_predictor_5_face_landmarks.dat",
                   "dlib_face_recognition_resnet_model_v1.dat")
    POSE_FILE = "shape_predictor_68_face_landmarks.dat"

    def __init__(self, device: str = "auto") -> None:
        super().__init__()
        try:
            import dlib
        except ImportError as error:
            raise InputError(f"the dlib backend needs dlib: pip install dlib-bin==20.0.1.post1 "
                             f"({error})") from error
        self._dlib = dlib
        use_cuda = bool(getattr(dlib, "DLIB_USE_CUDA", False))
        if device == "cuda" and not use_cuda:
            raise InputError("--device cuda: this dlib is built without CUDA (dlib-bin wheels are "
                             "CPU only); use --device cpu/auto or --backend insightface")
        self.device = "cuda" if use_cuda and device != "cpu" else "cpu"
        self.providers = [f"dlib {dlib.__version__} ({self.device.upper()})"]
        self.model_dir = self.find_models()
        self.model_fingerprint = "-".join(
            _file_fingerprint(self.model_dir / name) for name in self.MODEL_FILES)
        pose_file = self.model_dir / self.POSE_FILE
        if pose_file.is_file():
            self.pose_method = f"{POSE_METHOD}:dlib68-{_file_fingerprint(pose_file)}"
        else:
            self.pose_unavailable = (f"{pose_file} is missing (face-recognition-models ships "
                                     "it): no head pose; reinstall face-recognition-models==0.3.0")
        self._loaded = False

    @classmethod
    def find_models(cls) -> Path:
        """face_recognition_models/models, found without importing the package (it imports
        pkg_resources, which new setuptools no longer ships)."""
        import importlib.util

        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise InputError("the dlib backend needs the dlib models: pip install "
                             "face-recognition-models==0.3.0")
        folder = Path(list(spec.submodule_search_locations)[0]) / "models"
        missing = [name for name in cls.MODEL_FILES if not (folder / name).is_file()]
        if missing:
            raise InputError(f"dlib model files missing in {folder}: {', '.join(missing)}; "
                             f"reinstall face-recognition-models==0.3.0")
        return folder

    def _load(self) -> None:
        start = time.perf_counter()
        dlib = self._dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(self.model_dir / self.MODEL_FILES[0]))
        self._recognizer = dlib.face_recognition_model_v1(str(self.model_dir / self.MODEL_FILES[1]))
        self._pose_predictor = (dlib.shape_predictor(str(self.model_dir / self.POSE_FILE))
                                if self.pose_method else None)
        self._loaded = True
        self.stats.model_load_seconds += time.perf_counter() - start

    def embed(self, bgr: np.ndarray, mode: str) -> FaceRecord:
        if not self._loaded:
            self._load()
        return super().embed(bgr, mode)

    def _detect(self, image: np.ndarray, attempt: Attempt):
        # dlib wants RGB: only the (downscaled) detection copy and the face crops are converted.
        rects, _scores, _kinds = self._timed(self._detector.run, _swap_red_blue(image),
                                             attempt.upsample, 0.0)
        boxes = [[r.left(), r.top(), r.right() + 1, r.bottom() + 1] for r in rects]
        return boxes, None

    def _embed_faces(self, image: np.ndarray, boxes: np.ndarray, landmarks, frame):
        dlib = self._dlib
        height, width = image.shape[:2]
        embeddings, poses = [], []
        for x1, y1, x2, y2 in boxes:
            # A crop with one face size of margin holds everything the 5 landmarks and the face
            # chip read (descriptors are identical to using the whole image), and is cheap.
            margin = int(round(max(x2 - x1, y2 - y1)))
            cx0, cy0 = max(0, int(x1) - margin), max(0, int(y1) - margin)
            cx1, cy1 = min(width, int(x2) + margin), min(height, int(y2) + margin)
            crop = _swap_red_blue(image[cy0:cy1, cx0:cx1])
            rect = dlib.rectangle(int(round(x1)) - cx0, int(round(y1)) - cy0,
                                  int(round(x2)) - 1 - cx0, int(round(y2)) - 1 - cy0)
            shape = self._timed(self._predictor, crop, rect)
            # 5-point aligned 150x150 face chip (padding 0.25), no jitter.
            descriptor = self._timed(self._recognizer.compute_face_descriptor, crop, shape, 0, 0.25)
            embeddings.append(np.array(descriptor))
            pose = None
            if self._pose_predictor is not None:
                full = self._timed(self._pose_predictor, crop, rect)
                points = np.array([(full.part(i).x + cx0, full.part(i).y + cy0)
                                   for i in range(full.num_parts)], dtype=np.float64)
                pose = head_pose(points, frame[:2], frame[2])
            poses.append(pose)
        return embeddings, poses


def resolve_model_pack(model_pack: str | os.PathLike, download: bool = False
                       ) -> tuple[Path, str]:
    """The folder holding a pack's .onnx files, and the pack's name, or InputError.

    `model_pack` is a folder, or a pack name looked up as ~/.insightface/models/NAME. A pack
    unzipped one level too deep (NAME/NAME/*.onnx) is found too. Nothing is downloaded unless
    `download` (--download-pack): then a missing pack NAME is fetched with insightface's own
    downloader (insightface.utils.storage.download) into ~/.insightface/models/NAME.
    """
    text = str(model_pack)
    direct = Path(text).expanduser()
    looks_like_path = direct.is_absolute() or any(sep in text for sep in ("/", "\\")) \
        or text.startswith(".") or text.startswith("~")
    root = Path(INSIGHTFACE_ROOT).expanduser() / "models"
    candidate = direct if (looks_like_path or direct.is_dir()) else root / text
    name = candidate.name or text
    if not candidate.is_dir():
        if looks_like_path:
            raise InputError(f"--model-pack folder not found: {candidate}")
        if not download:
            url = _pack_download_url(text)
            raise InputError(
                f"insightface model pack '{text}' not found at {candidate} (nothing is downloaded "
                f"by default). Either rerun with --download-pack (insightface's own downloader "
                f"fetches {url} into that folder), or put the pack's .onnx files there yourself "
                f"(unzip {url} there), or pass --model-pack /path/to/pack_folder")
        download_pack(text)
    folder = _folder_with_onnx(candidate)
    if folder is None and download and not looks_like_path:
        download_pack(text, force=True)  # a folder left empty by a broken earlier download
        folder = _folder_with_onnx(candidate)
    if folder is None:
        hint = "" if looks_like_path else (
            "; --download-pack fetches it again with insightface's own downloader")
        raise InputError(f"no .onnx files in {candidate} or one folder below it; the pack's "
                         f".onnx files (detector + recogniser) must sit directly in the "
                         f"folder{hint}")
    return folder.resolve(), name


PACK_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz"
                                 "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def download_pack(name: str, force: bool = False) -> Path:
    """Fetch insightface pack `name` with insightface's own downloader; its folder, or InputError.

    insightface.utils.storage.download("models", NAME, force, root) downloads NAME.zip from the
    insightface model zoo to ROOT/models/NAME.zip and unzips it into ROOT/models/NAME; its
    progress bar goes to stderr and its one stdout line is sent to stderr too (stdout carries
    results). Only run when the user asks (--download-pack).
    """
    if not name or set(name) - PACK_NAME_CHARACTERS or name.startswith("."):
        raise InputError(f"--download-pack: {name!r} is not an insightface pack name "
                         "(letters, digits, '_', '.', '-'), e.g. buffalo_l")
    try:
        from insightface.utils import storage
    except ImportError as error:
        raise InputError(f"--download-pack needs insightface (pip install -r "
                         f"requirements-pod.txt): {error}") from error
    root = Path(INSIGHTFACE_ROOT).expanduser()
    target = root / "models" / name
    url = _pack_download_url(name)
    print(f"downloading insightface pack {name} from {url} into {target} "
          "(insightface.utils.storage.download; --download-pack)", file=sys.stderr, flush=True)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            folder = storage.download("models", name, force=force, root=str(root))
    except Exception as error:  # requests, zipfile and OS errors alike: one clear line
        first_line = (str(error).splitlines() or [""])[0][:300]
        raise InputError(f"--download-pack: insightface's downloader could not fetch {url} into "
                         f"{target} ({type(error).__name__}: {first_line}); check the network, "
                         f"or unzip the pack into {target} yourself") from error
    return Path(folder)


def _pack_download_url(name: str) -> str:
    """Where the installed insightface itself would download pack `name` from."""
    try:
        from insightface.utils import storage
    except Exception:
        return f"{name}.zip from the insightface model zoo"
    if hasattr(storage, "model_zoo_download_url"):  # insightface 2.x
        return storage.model_zoo_download_url(f"{name}.zip")
    return f"{getattr(storage, 'BASE_REPO_URL', 'the insightface model zoo')}/{name}.zip"


def _folder_with_onnx(folder: Path) -> Path | None:
    def has_pack(path: Path) -> bool:
        return any(path.glob("*.onnx")) or any(path.glob("*.json"))

    if any(folder.glob("*.onnx")):
        return folder
    nested = [child for child in sorted(folder.iterdir()) if child.is_dir() and has_pack(child)]
    preferred = [child for child in nested if child.name == folder.name]
    if preferred and any(preferred[0].glob("*.onnx")):
        return preferred[0]
    nested = [child for child in nested if any(child.glob("*.onnx"))]
    return nested[0] if len(nested) == 1 else None


class InsightFaceBackend(_Backend):
    """insightface FaceAnalysis (SCRFD detection + ArcFace recognition) on ONNX Runtime."""

    name = "insightface"
    max_detection_side = 1280
    attempts = [
        Attempt("det640", det_size=(640, 640)),
        Attempt("det320", det_size=(320, 320)),
        Attempt("pad25-det640", pad=0.25, det_size=(640, 640)),
        Attempt("pad50-det320", pad=0.5, det_size=(320, 320)),
    ]
    det_thresh = 0.5

    def __init__(self, model_pack: str | os.PathLike = DEFAULT_MODEL_PACK,
                 device: str = "auto", download_pack: bool = False) -> None:
        super().__init__()
        try:
            import onnxruntime
            from insightface.app import FaceAnalysis
        except ImportError as error:
            raise InputError(f"the insightface backend needs insightface and onnxruntime "
                             f"(pip install -r requirements-pod.txt): {error}") from error
        folder, pack_name = resolve_model_pack(model_pack, download=download_pack)
        self.pack_dir = folder
        available = onnxruntime.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise InputError(f"--device cuda: {cuda_fallback_diagnosis()}")
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        requested = ([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
                     if want_cuda else ["CPUExecutionProvider"])
        start = time.perf_counter()
        try:
            app = FaceAnalysis(name=str(folder),
                               allowed_modules=["detection", "recognition", "landmark_3d_68"],
                               providers=requested)
        except AssertionError as error:
            raise InputError(f"model pack {folder} has no face detector that insightface "
                             f"recognises (an SCRFD .onnx with 6/9/10/15 outputs)") from error
        except Exception as error:  # onnxruntime/onnx raise many types for a broken file
            first_line = (str(error).splitlines() or [""])[0]
            raise InputError(f"cannot load insightface model pack {folder}: "
                             f"{type(error).__name__}: {first_line}") from error
        if "recognition" not in app.models:
            raise InputError(f"model pack {folder} has no recognition model that insightface "
                             f"recognises (an ArcFace .onnx with a square 112+ input)")
        try:
            app.prepare(ctx_id=0 if want_cuda else -1, det_thresh=self.det_thresh,
                        det_size=self.attempts[0].det_size)
        except Exception as error:
            raise InputError(f"cannot prepare insightface models in {folder}: "
                             f"{type(error).__name__}: {error}") from error
        self.stats.model_load_seconds += time.perf_counter() - start
        self.app = app
        self.detector = app.det_model
        self.recognizer = app.models["recognition"]
        # buffalo_l's 1k3d68.onnx: 68 iBUG landmarks per face, fitted by head_pose() like dlib's
        # (one convention for both backends). A pack without it measures no pose.
        self.landmarker = app.models.get("landmark_3d_68")
        if self.landmarker is not None:
            self.pose_method = (f"{POSE_METHOD}:insightface68-"
                                f"{_file_fingerprint(Path(self.landmarker.model_file))}")
        else:
            self.pose_unavailable = (f"model pack {folder} has no 68-point landmark model "
                                     "(buffalo_l's 1k3d68.onnx): no head pose is measured")
        self.embedding_dim = int(self.recognizer.output_shape[-1]) \
            if isinstance(self.recognizer.output_shape[-1], int) else 0
        self.providers = self.session_providers()
        uses_cuda = "CUDAExecutionProvider" in self.providers
        if want_cuda and not uses_cuda:
            if device == "cuda":
                raise InputError(f"--device cuda but the ONNX Runtime sessions run on "
                                 f"{self.providers}: {cuda_fallback_diagnosis()}")
            self.fallback_warning = ("CUDA is installed but the sessions fell back to CPU: "
                                     + cuda_fallback_diagnosis())
        else:
            self.fallback_warning = None
        self.device = "cuda" if uses_cuda else "cpu"
        recognizer_file = Path(self.recognizer.model_file)
        detector_file = Path(self.detector.model_file)
        self.model = f"{pack_name}/{recognizer_file.name}"
        self.model_fingerprint = "-".join(
            _file_fingerprint(path) for path in (detector_file, recognizer_file))

    def session_providers(self) -> list[str]:
        """Providers of the detector and recogniser sessions as ONNX Runtime reports them."""
        sessions = [self.detector.session, self.recognizer.session]
        if getattr(self, "landmarker", None) is not None:
            sessions.append(self.landmarker.session)
        providers: list[str] = []
        for session in sessions:
            for provider in session.get_providers():
                if provider not in providers:
                    providers.append(provider)
        return providers

    def extra_settings(self) -> dict:
        return {"det_thresh": self.det_thresh}

    def _detect(self, image: np.ndarray, attempt: Attempt):
        boxes, landmarks = self._timed(self.detector.detect, image, attempt.det_size)
        if len(boxes) and landmarks is None:
            raise InputError(f"the detector in {self.pack_dir} gives no landmarks; alignment "
                             f"needs an SCRFD model with keypoints (9 or 15 outputs)")
        return boxes[:, :4], landmarks

    def _embed_faces(self, image: np.ndarray, boxes: np.ndarray, landmarks, frame):
        from insightface.app.common import Face

        embeddings, poses = [], []
        for box, points in zip(boxes, landmarks):
            face = Face(bbox=box.astype(np.float32), kps=points.astype(np.float32),
                        det_score=1.0)
            # ArcFaceONNX.get: norm_crop to 112x112 with the 5 points, then the network.
            embeddings.append(np.asarray(self._timed(self.recognizer.get, image, face),
                                         np.float64))
            pose = None
            if self.landmarker is not None:
                # Landmark.get: 68 x 3 points in image pixels (x, y used; its own face.pose,
                # from insightface's mean shape, is not used: one fit for both backends).
                marks = self._timed(self.landmarker.get, image, face)
                pose = head_pose(np.asarray(marks, np.float64)[:, :2], frame[:2], frame[2])
            poses.append(pose)
        return embeddings, poses

    def refresh_providers(self) -> None:
        """Include the per-size detector sessions that SCRFD created while running."""
        providers = list(self.providers)
        for session in getattr(self.detector, "resolution_sessions", {}).values():
            for provider in session.get_providers():
                if provider not in providers:
                    providers.append(provider)
        self.providers = providers


def make_backend(backend: str, model_pack: str | os.PathLike, device: str,
                 download_pack: bool = False) -> _Backend:
    if backend == "dlib":
        return DlibBackend(device=device)
    if backend == "insightface":
        return InsightFaceBackend(model_pack=model_pack, device=device,
                                  download_pack=download_pack)
    raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


# ----------------------------------------------------------------------------------------------
# Embedding cache (.npz, no pickle)
# ----------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The per-user cache folder (the platformdirs convention, without platformdirs)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        root = Path(base) if base else Path.home() / "AppData" / "Local"
        return root / CACHE_APP_NAME / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / CACHE_APP_NAME
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / CACHE_APP_NAME


class EmbeddingCache:
    """One .npz per (image content, backend identity, face mode); best effort, never fatal."""

    def __init__(self, folder: Path, identity: dict, stats: RunStats) -> None:
        self.folder = Path(folder) / f"v{CACHE_VERSION}"
        self.identity = json.dumps(identity, sort_keys=True)
        self.stats = stats
        self.writable = True

    def key(self, content_sha256: str, mode: str) -> str:
        text = f"{CACHE_VERSION}\0{self.identity}\0{mode}\0{content_sha256}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npz"

    def get(self, key: str) -> FaceRecord | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                embeddings = np.asarray(data["embeddings"], dtype=np.float32)
                boxes = np.asarray(data["boxes"], dtype=np.float32)
                poses = np.asarray(data["poses"], dtype=np.float32)
            faces = int(meta["faces"])
            pixels = meta.get("pixels_sha256")
            phash = meta.get("phash")
            if (meta.get("key") != key or embeddings.ndim != 2 or not isinstance(pixels, str)
                    or boxes.shape != (len(embeddings), 4)
                    or poses.shape != (len(embeddings), 3)
                    or faces < len(embeddings) or (faces > 0) != (len(embeddings) > 0)
                    or not np.all(np.isfinite(embeddings))
                    or not (phash is None or (isinstance(phash, str) and phash
                                              and set(phash) <= set("0123456789abcdef")))):
                raise ValueError("inconsistent entry")
            return FaceRecord(faces, embeddings, boxes, meta.get("detected_by"), pixels,
                              poses=poses, phash=phash)
        except Exception:  # a truncated or foreign file: ignore it, the caller rebuilds it
            self.stats.cache_rebuilt += 1
            return None

    def put(self, key: str, record: FaceRecord) -> None:
        if not self.writable:
            return
        path = self._path(key)
        meta = json.dumps({"key": key, "faces": record.faces, "detected_by": record.detected_by,
                           "pixels_sha256": record.pixels_sha256, "phash": record.phash})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
            try:
                with os.fdopen(handle, "wb") as stream:
                    np.savez(stream, embeddings=record.embeddings.astype(np.float32),
                             boxes=record.boxes.astype(np.float32),
                             poses=record.poses.astype(np.float32), meta=np.array(meta))
                os.replace(temp_name, path)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
        except OSError as error:
            self.writable = False
            print(f"warning: embedding cache disabled, cannot write {path.parent}: {error}",
                  file=sys.stderr)

    def check_writable(self) -> str | None:
        """Why the cache folder cannot take new entries (None when it can); reads still work."""
        problem = output_path_problem(self.folder / "00" / "probe.npz")
        if problem is not None:
            self.writable = False
        return problem


# ----------------------------------------------------------------------------------------------
# The evaluation
# ----------------------------------------------------------------------------------------------


class _Progress:
    """tqdm on stderr when available, else a plain counter line; silent when disabled."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled, self.done = total, label, enabled, 0
        self.bar = None
        self.last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=label, file=sys.stderr, unit="img",
                                leave=False, dynamic_ncols=True)
            except ImportError:
                self.bar = None

    def step(self) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last > 2 or self.done == self.total:
            self.last = now
            print(f"{self.label}: {self.done}/{self.total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_folder(folder: Path, flag: str) -> list[Path]:
    if not folder.exists():
        raise InputError(f"{flag} folder not found: {folder}")
    if not folder.is_dir():
        raise InputError(f"{flag} is not a folder: {folder}")
    images = list_images(folder) + dangling_links(folder)  # a dangling link is an error row
    if not images:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS))
        raise InputError(f"{flag} folder has no images ({extensions}, searched recursively): "
                         f"{folder}")
    return sorted(images, key=lambda path: path.relative_to(folder).as_posix())


def pixels_digest(image: np.ndarray) -> str:
    """SHA-256 of a decoded image: its shape and its BGR bytes."""
    digest = hashlib.sha256(f"{image.shape}".encode("ascii"))
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _embed_file(path: Path, backend: _Backend, mode: str, cache: EmbeddingCache | None
                ) -> tuple[FaceRecord | None, str | None, str | None]:
    """(FaceRecord, None, bytes SHA-256) of one file (from the cache when possible), or
    (None, error message, bytes SHA-256 or None)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return None, unreadable_reason(path, error), None
    content = hashlib.sha256(data).hexdigest()
    del data
    key = cache.key(content, mode) if cache is not None else None
    if cache is not None:
        record = cache.get(key)
        if record is not None:
            backend.stats.cache_hits += 1
            return record, None, content
        backend.stats.cache_misses += 1
    try:
        image = load_image(path)
    except ImageLoadError as error:
        return None, str(error), content
    except Exception as error:  # e.g. a malformed EXIF block that PIL trips over: skip the file
        return None, f"not a readable image ({type(error).__name__}: {error})", content
    record = backend.embed(image, mode)
    record.pixels_sha256 = pixels_digest(image)
    record.phash = perceptual_hash(image)
    if cache is not None:
        cache.put(key, record)
    return record, None, content


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _outliers(loo: np.ndarray, threshold: float) -> np.ndarray:
    """References that do not look like the same person as the others (see module docstring)."""
    flagged = loo < threshold
    if len(loo) >= 4:
        median = float(np.median(loo))
        spread = 1.4826 * float(np.median(np.abs(loo - median)))
        spread = max(spread, 0.25 * abs(median - threshold), 1e-6)
        flagged |= loo < median - 3.0 * spread
    return flagged


def _read_photos(files: list[Path], folder: Path, engine: _Backend, cache, label: str,
                 show_progress: bool, errors: list[dict], kind: str) -> list[tuple]:
    """(relative path, FaceRecord or None, error or None, bytes SHA-256) per photo, largest face;
    each unreadable one is also added to `errors` (folder `kind`)."""
    progress = _Progress(len(files), label, show_progress)
    rows = []
    for path in files:
        relative = path.relative_to(folder).as_posix()
        record, error, content = _embed_file(path, engine, "largest", cache)
        progress.step()
        if error is not None:
            errors.append({"path": relative, "folder": kind, "error": error})
        rows.append((relative, record, error, content))
    progress.close()
    return rows


def _pose_of(record: FaceRecord | None, index: int) -> tuple:
    """(yaw, pitch, roll) rounded to 0.1 degree, Nones where not measured."""
    if record is None or record.poses is None or index >= len(record.poses):
        return None, None, None
    values = [float(value) for value in record.poses[index]]
    return tuple(round(value, 1) if math.isfinite(value) else None for value in values)


def _std(values) -> float | None:
    values = [float(value) for value in values if value is not None and math.isfinite(value)]
    return float(np.std(values)) if len(values) >= 2 else None


def training_photos(rows: list[tuple], warn) -> dict:
    """What memorisation and rigidity need from the training photos' rows (see _read_photos):
    their faces, perceptual hashes, near-duplicate pairs, the closest distinct pair, the copy
    bar and the photos' own spread (mean pairwise distance of distinct pairs) and pose spread."""
    paths, vectors, poses, hashes = [], [], [], {}
    for relative, record, error, _ in rows:
        if error is not None or record is None:
            continue
        if record.phash:
            hashes[relative] = record.phash
        if record.faces:
            paths.append(relative)
            vectors.append(record.embeddings[0].astype(np.float64))
            poses.append(_pose_of(record, 0))
    hashed = sorted(hashes)
    near_duplicates = [[a, b, hash_distance(hashes[a], hashes[b])]
                       for i, a in enumerate(hashed) for b in hashed[i + 1:]
                       if hash_distance(hashes[a], hashes[b]) <= PHASH_MAX_DISTANCE]
    duplicate = {(a, b) for a, b, _ in near_duplicates} | {(b, a) for a, b, _ in near_duplicates}
    for a, b, distance in near_duplicates:
        warn(f"training photos {a} and {b} are near-duplicates (perceptual hashes {distance} "
             f"bits apart): one photo twice? They are not a distinct pair for the copy bar")
    matrix = l2_normalize(np.stack(vectors)) if vectors else np.zeros((0, 0))
    pairs = []  # (similarity, a, b) of distinct training faces
    for i in range(len(paths)):
        for j in range(i + 1, len(paths)):
            if (paths[i], paths[j]) not in duplicate:
                pairs.append((float(matrix[i] @ matrix[j]), paths[i], paths[j]))
    closest = max(pairs) if pairs else None
    copy_similarity = (1.0 - COPY_DISTANCE_FRACTION * (1.0 - closest[0])) if closest else None
    if closest is None:
        warn(f"{len(paths)} training face(s) and no distinct pair: a face cannot be judged a "
             "copy by likeness (it needs 2+ distinct training photos with a face); only "
             "near-duplicate whole images are found")
    spread = float(np.mean([1.0 - pair[0] for pair in pairs])) if pairs else None
    return {"paths": paths, "vectors": matrix, "poses": poses, "hashes": hashes,
            "near_duplicates": near_duplicates, "closest": closest,
            "copy_similarity": copy_similarity, "spread": spread,
            "yaw_std": _std(pose[0] for pose in poses),
            "pitch_std": _std(pose[1] for pose in poses)}


def memorisation(vector: np.ndarray | None, phash: str | None, training: dict) -> dict:
    """The nearest training photo of one generated image (by face, and by whole-image hash) and
    whether it is a copy of it (module docstring)."""
    result = {"nearest_training": None, "nearest_training_similarity": None,
              "phash_nearest": None, "phash_distance": None, "copy": False, "copy_of": None,
              "copy_reason": None}
    face_copy = image_copy = False
    if vector is not None and len(training["paths"]):
        similarities = training["vectors"] @ np.asarray(vector, dtype=np.float64)
        nearest = int(np.argmax(similarities))
        result["nearest_training"] = training["paths"][nearest]
        result["nearest_training_similarity"] = _round(similarities[nearest])
        bar = training["copy_similarity"]
        face_copy = bar is not None and float(similarities[nearest]) >= bar
    if phash and training["hashes"]:
        distance, nearest_path = min((hash_distance(phash, other), path)
                                     for path, other in training["hashes"].items())
        result["phash_nearest"], result["phash_distance"] = nearest_path, distance
        image_copy = distance <= PHASH_MAX_DISTANCE
    if face_copy or image_copy:
        result["copy"] = True
        result["copy_of"] = result["nearest_training"] if face_copy else result["phash_nearest"]
        result["copy_reason"] = ("face and whole image" if face_copy and image_copy
                                 else "face" if face_copy else "whole image")
    return result


def evaluate(generated_dir, reference_dir, *, threshold=None, backend="insightface",
             model_pack=DEFAULT_MODEL_PACK, device="auto", face_policy="largest",
             min_detection_rate=DEFAULT_MIN_DETECTION_RATE, cache_dir=None, use_cache=True,
             show_progress=True, download_pack=False, print_warnings=None, training_dir=None,
             keep_vectors=False) -> dict:
    """Score every generated image against the reference faces; see the module docstring.

    `training_dir` holds the photos the LoRA was trained on, for memorisation and the rigidity
    bar (default: the references themselves). With `keep_vectors` the report also holds
    "vectors" (numpy arrays, not JSON: each counted generated face's embedding by path, and the
    training faces) for the scorecard's per-config spreads.

    Raises InputError (one-line message) for missing/empty folders, no usable reference face,
    a bad model pack or an unusable device. Returns the report dict that --json writes.
    Warnings are collected under "warnings" and, when print_warnings (default: show_progress),
    also printed to stderr as they happen.
    """
    started = time.perf_counter()
    generated_dir, reference_dir = Path(generated_dir), Path(reference_dir)
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if face_policy not in FACE_POLICIES:
        raise InputError(f"unknown face policy {face_policy!r}; choose one of "
                         f"{', '.join(FACE_POLICIES)}")
    threshold = DEFAULT_THRESHOLDS[backend] if threshold is None else float(threshold)
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold} is outside [-1, 1] (cosine similarity)")
    if not 0.0 <= float(min_detection_rate) <= 1.0:
        raise InputError(f"min_detection_rate {min_detection_rate} is outside [0, 1]")
    min_detection_rate = float(min_detection_rate)
    generated_files = _check_folder(generated_dir, "--generated")
    reference_files = _check_folder(reference_dir, "--reference")
    separate_training = (training_dir is not None
                         and Path(training_dir).resolve() != reference_dir.resolve())
    training_dir = Path(training_dir) if separate_training else reference_dir
    training_files = (_check_folder(training_dir, "--training") if separate_training
                      else reference_files)
    warnings: list[str] = []
    echo = show_progress if print_warnings is None else print_warnings

    def warn(message: str) -> None:
        warnings.append(message)
        if echo:
            print(f"warning: {message}", file=sys.stderr)

    gen_resolved, ref_resolved = generated_dir.resolve(), reference_dir.resolve()
    if gen_resolved == ref_resolved:
        warn("--generated and --reference are the same folder: every image matches itself")
    elif gen_resolved in ref_resolved.parents or ref_resolved in gen_resolved.parents:
        warn("one of --generated/--reference lies inside the other: their images overlap")
    if backend == "dlib" and threshold < DLIB_IMPLAUSIBLE_THRESHOLD:
        warn(f"threshold {threshold} is far below the dlib scale (different people score about "
             f"0.80-0.90, the same person 0.94+; default {DEFAULT_THRESHOLDS['dlib']}): almost "
             f"every face will pass")

    engine = make_backend(backend, model_pack, device, download_pack=download_pack)
    if getattr(engine, "fallback_warning", None):
        warn(engine.fallback_warning)
    if engine.pose_method is None:
        warn(engine.pose_unavailable or "no head pose model: yaw and pitch are not measured")
    cache = None
    if use_cache:
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        cache = EmbeddingCache(folder, engine.cache_identity(), engine.stats)
        problem = cache.check_writable()
        if problem is not None:  # said once; cached entries are still read
            warn(f"embedding cache {cache.folder} cannot be written ({problem}); "
                 "embeddings of this run are not saved")

    errors: list[dict] = []

    # References: largest face of each image.
    reference_rows = _read_photos(reference_files, reference_dir, engine, cache, "references",
                                  show_progress, errors, "reference")
    ref_paths, ref_embeddings, ref_records, skipped = [], [], [], []
    reference_digests: dict[str, str] = {}  # bytes or pixels SHA-256 -> reference path
    for relative, record, error, content in reference_rows:
        if content is not None:
            reference_digests.setdefault(content, relative)
        if record is not None and record.pixels_sha256:
            reference_digests.setdefault(record.pixels_sha256, relative)
        if error is not None:
            skipped.append({"path": relative, "reason": f"error: {error}"})
        elif record.faces == 0:
            skipped.append({"path": relative, "reason": "no face found"})
        else:
            ref_paths.append(relative)
            ref_embeddings.append(record.embeddings[0])
            ref_records.append(record)
    if not ref_embeddings:
        raise InputError(f"no usable reference face in {reference_dir} "
                         f"({len(reference_files)} images, none with a detectable face)")
    references = l2_normalize(np.stack(ref_embeddings))
    centroid = l2_normalize(references.mean(axis=0))
    for item in skipped:
        warn(f"reference {item['path']} skipped: {item['reason']}")

    per_reference, outliers, ceiling = [], [], None
    if len(references) >= 2:
        total = references.sum(axis=0)
        loo = np.array([float(references[i] @ l2_normalize(total - references[i]))
                        for i in range(len(references))])
        ceiling = float(loo.mean())
        flagged = _outliers(loo, threshold)
        median = float(np.median(loo))
        for path, score, is_outlier in zip(ref_paths, loo, flagged):
            per_reference.append({"path": path, "loo_similarity": _round(score)})
            if is_outlier:
                outliers.append(path)
                warn(f"reference {path} looks unlike the others (leave-one-out similarity "
                     f"{score:.3f}, median {median:.3f}, threshold {threshold:.2f}): wrong person "
                     f"or a bad photo? Consider removing it")
    else:
        per_reference.append({"path": ref_paths[0], "loo_similarity": None})
        warn("only one usable reference face: no leave-one-out ceiling, identity_ratio is null")
    for entry, record in zip(per_reference, ref_records):
        entry["yaw"], entry["pitch"], entry["roll"] = _pose_of(record, 0)

    # Training photos: the references themselves unless given apart (then identity is measured
    # on held-out photos and the training photos serve memorisation and the rigidity bar).
    if separate_training:
        training_rows = _read_photos(training_files, training_dir, engine, cache, "training",
                                     show_progress, errors, "training")
        for relative, record, _, content in training_rows:
            if content is not None:
                reference_digests.setdefault(content, relative)
            if record is not None and record.pixels_sha256:
                reference_digests.setdefault(record.pixels_sha256, relative)
    else:
        training_rows = reference_rows
    training = training_photos(training_rows, warn)
    if separate_training:
        for relative, record, error, _ in reference_rows:
            if error is None and record is not None and record.phash and training["hashes"]:
                distance, photo = min((hash_distance(record.phash, other), path)
                                      for path, other in training["hashes"].items())
                if distance <= PHASH_MAX_DISTANCE:
                    warn(f"held-out reference {relative} is a near-duplicate of training photo "
                         f"{photo} ({distance} bits apart): it is not held out")

    # Generated images.
    mode = "all" if face_policy == "best" else "largest"
    progress = _Progress(len(generated_files), "generated", show_progress)
    images, generated_vectors = [], {}
    for path in generated_files:
        relative = path.relative_to(generated_dir).as_posix()
        record, error, content = _embed_file(path, engine, mode, cache)
        progress.step()
        entry = {"path": relative, "faces": 0, "detected": False, "similarity": None,
                 "max_reference": None, "mean_reference": None, "passed": False, "error": error,
                 "detected_by": None, "identical_to_reference": None, "excluded": False,
                 "yaw": None, "pitch": None, "roll": None}
        copy_of = reference_digests.get(content) if content is not None else None
        if copy_of is None and record is not None and record.pixels_sha256:
            copy_of = reference_digests.get(record.pixels_sha256)
        if copy_of is not None:
            entry.update(identical_to_reference=copy_of, excluded=True)
        vector = None
        if error is not None:
            errors.append({"path": relative, "folder": "generated", "error": error})
        elif record.faces > 0:
            to_centroid = record.embeddings.astype(np.float64) @ centroid
            index = int(np.argmax(to_centroid)) if face_policy == "best" else 0
            vector = record.embeddings[index].astype(np.float64)
            to_references = references @ vector
            similarity = float(to_centroid[index])
            entry.update(faces=record.faces, detected=True, similarity=_round(similarity),
                         max_reference=_round(to_references.max()),
                         mean_reference=_round(to_references.mean()),
                         passed=bool(similarity >= threshold), detected_by=record.detected_by)
            entry["yaw"], entry["pitch"], entry["roll"] = _pose_of(record, index)
        entry.update(memorisation(vector, record.phash if record is not None else None,
                                  training))
        if copy_of is not None:
            entry.update(copy=True, copy_of=copy_of, copy_reason="identical file")
        elif vector is not None:
            generated_vectors[relative] = vector
        images.append(entry)
    progress.close()
    copies = [entry for entry in images if entry["excluded"]]
    if copies:
        shown = ", ".join(f"{entry['path']} = {entry['identical_to_reference']}"
                          for entry in copies[:5])
        more = f" and {len(copies) - 5} more" if len(copies) > 5 else ""
        warn(f"{len(copies)} generated image(s) are byte- or pixel-identical to a reference and "
             f"are excluded from the identity figures (a training photo is not a generation): "
             f"{shown}{more}")
    counted = [entry for entry in images if not entry["excluded"]]
    if not counted:
        raise InputError(f"--generated {generated_dir}: all of its {len(images)} images are "
                         f"identical to reference images in {reference_dir}; nothing generated "
                         "is left to score")
    unreadable = [entry for entry in counted if entry["error"] is not None]
    if len(unreadable) == len(counted):
        # Nothing to score is an input error, as for an empty folder (skin_realism_eval agrees).
        raise InputError(f"--generated {generated_dir}: none of its {len(counted)} images could "
                         f"be read; first: {unreadable[0]['path']}: {unreadable[0]['error']}")
    if isinstance(engine, InsightFaceBackend):
        engine.refresh_providers()

    # The 2-D map: references, training photos (when apart) and generated faces in one PCA.
    mapped = [(entry, references[i]) for i, entry in enumerate(per_reference)]
    training_entries = []
    if separate_training:
        for i, photo in enumerate(training["paths"]):
            yaw, pitch, roll = training["poses"][i]
            training_entries.append({"path": photo, "yaw": yaw, "pitch": pitch, "roll": roll})
            mapped.append((training_entries[-1], training["vectors"][i]))
    mapped += [(entry, generated_vectors[entry["path"]]) for entry in counted
               if entry["path"] in generated_vectors]
    coordinates = embedding_map(np.stack([vector for _, vector in mapped]))
    for (entry, _), point in zip(mapped, coordinates):
        entry["map"] = [_round(point[0]), _round(point[1])]

    # Every counted image is in the figures: one without a face, or unreadable, counts 0.
    scores = np.array([entry["similarity"] if entry["detected"] else 0.0 for entry in counted])
    detected = [entry["similarity"] for entry in counted if entry["detected"]]
    faces_found = len(detected)
    detection_rate = faces_found / len(counted)
    mean = float(scores.mean())
    identity_ratio = mean / ceiling if ceiling is not None and ceiling > 0 else None
    copies_found = sum(1 for entry in counted if entry["copy"])
    gen_spread = spread_per_face(np.stack(list(generated_vectors.values()))) \
        if len(generated_vectors) >= 2 else None
    spread = float(gen_spread.mean()) if gen_spread is not None else None
    spread_ratio = (spread / training["spread"]) if spread is not None and training["spread"] \
        else None
    summary = {
        "images": len(counted),
        "faces_found": faces_found,
        "detection_rate": _round(detection_rate),
        "mean": _round(mean),
        "mean_detected": _round(np.mean(detected)) if detected else None,
        "median": _round(np.median(scores)),
        "min": _round(scores.min()),
        "max": _round(scores.max()),
        "pass_rate": _round(sum(entry["passed"] for entry in counted) / len(counted)),
        "ceiling": _round(ceiling),
        "identity_ratio": _round(identity_ratio),
        "threshold": threshold,
        "min_detection_rate": min_detection_rate,
        "pass": bool(mean >= threshold and detection_rate >= min_detection_rate),
        "errors": len(errors),
        "excluded": len(copies),
        "no_face_counts_as": 0.0,
        "copies": copies_found,
        "copy_rate": _round(copies_found / len(counted)),
        "spread": _round(spread),
        "spread_ratio": _round(spread_ratio),
        "rigid": bool(spread_ratio is not None and spread_ratio < RIGID_SPREAD_RATIO),
    }
    closest = training["closest"]
    stats = engine.stats
    report = {
        "backend": engine.name,
        "model": engine.model,
        "threshold": threshold,
        "device": engine.device,
        "providers": list(engine.providers),
        "face_policy": face_policy,
        "generated_dir": str(generated_dir),
        "reference_dir": str(reference_dir),
        "training_dir": str(training_dir),
        "identity_against": "held-out photos" if separate_training else "training photos",
        "images": images,
        "references": {"count": len(reference_files), "used": len(ref_paths),
                       "skipped": skipped, "ceiling": _round(ceiling),
                       "per_reference": per_reference, "outliers": outliers},
        "training": {"separate": separate_training, "count": len(training_files),
                     "faces": len(training["paths"]),
                     "per_photo": training_entries if separate_training else None,
                     "near_duplicates": training["near_duplicates"]},
        "memorisation": {
            "rule": (f"a face is a copy of its nearest training photo when its similarity "
                     f"reaches copy_similarity (1 - {COPY_DISTANCE_FRACTION} x the distance of "
                     f"the two most alike distinct training photos), or the whole image is "
                     f"within {PHASH_MAX_DISTANCE} of 64 perceptual-hash bits of one"),
            "copy_similarity": _round(training["copy_similarity"]),
            "closest_training_pair": ([closest[1], closest[2], _round(closest[0])]
                                      if closest else None),
            "distance_fraction": COPY_DISTANCE_FRACTION,
            "phash": PHASH_METHOD,
            "phash_max_distance": PHASH_MAX_DISTANCE,
            "copies": copies_found,
            "copy_rate": summary["copy_rate"],
        },
        "rigidity": {"reference_spread": _round(training["spread"]),
                     "reference_yaw_std": _round(training["yaw_std"]),
                     "reference_pitch_std": _round(training["pitch_std"]),
                     "spread": summary["spread"], "spread_ratio": summary["spread_ratio"],
                     "rigid": summary["rigid"], "ratio_threshold": RIGID_SPREAD_RATIO},
        "pose": {"method": engine.pose_method, "convention": POSE_CONVENTION,
                 "unavailable": None if engine.pose_method else engine.pose_unavailable,
                 "frontal_yaw": FRONTAL_YAW,
                 **pose_summary([entry["yaw"] for entry in counted if entry["detected"]],
                                [entry["similarity"] for entry in counted
                                 if entry["detected"]])},
        "errors": errors,
        "summary": summary,
        "warnings": warnings,
        "stats": {"cache": None if cache is None else str(cache.folder),
                  "cache_hits": stats.cache_hits, "cache_misses": stats.cache_misses,
                  "cache_rebuilt": stats.cache_rebuilt, "model_calls": stats.model_calls,
                  "model_seconds": round(stats.model_seconds, 4),
                  "model_load_seconds": round(stats.model_load_seconds, 4),
                  "seconds": round(time.perf_counter() - started, 4)},
    }
    if keep_vectors:
        report["vectors"] = {"generated": generated_vectors, "training": training["vectors"],
                             "training_paths": list(training["paths"])}
    return report


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_report(report: dict) -> str:
    """The stdout text: one row per generated image, then the summary."""
    rows = report["images"]
    width = min(60, max([len("image")] + [len(row["path"]) for row in rows]))
    lines = [f"{'image':<{width}}  faces  similarity  max_ref  mean_ref    yaw  result"]
    for row in rows:
        path = row["path"] if len(row["path"]) <= width else "..." + row["path"][-(width - 3):]
        if row.get("excluded"):
            result = f"EXCLUDED: identical to reference {row['identical_to_reference']}"
        elif row["error"]:
            result = f"ERROR: {row['error']}"
        elif not row["detected"]:
            result = "FAIL (no face)"
        else:
            result = "pass" if row["passed"] else "FAIL"
            if row["faces"] > 1:
                result += f" ({row['faces']} faces, used the {report['face_policy']})"
        if row.get("copy") and not row.get("excluded"):
            result += f"; COPY of training photo {row['copy_of']} ({row['copy_reason']})"
        yaw = "-" if row.get("yaw") is None else f"{row['yaw']:+.0f}"
        lines.append(f"{path:<{width}}  {row['faces']:>5}  {_fmt(row['similarity']):>10}  "
                     f"{_fmt(row['max_reference']):>7}  {_fmt(row['mean_reference']):>8}  "
                     f"{yaw:>5}  {result}")
    summary, refs = report["summary"], report["references"]
    lines += [
        "",
        f"backend {report['backend']}, model {report['model']}, device {report['device']} "
        f"(providers: {', '.join(report['providers'])}), face policy {report['face_policy']}",
        f"threshold {summary['threshold']:.2f} ({report['backend']} cosine scale; not comparable "
        f"across backends)",
        f"references: {refs['used']} used of {refs['count']}, ceiling (leave-one-out mean) "
        f"{_fmt(refs['ceiling'])}" + (f", outliers: {', '.join(refs['outliers'])}"
                                      if refs["outliers"] else ""),
        f"images {summary['images']}, faces found {summary['faces_found']}, detection_rate "
        f"{summary['detection_rate']:.3f} (minimum {summary['min_detection_rate']:.2f}), "
        f"errors {summary['errors']}"
        + (f", excluded {summary['excluded']} (identical to a reference)"
           if summary.get("excluded") else ""),
        f"mean {_fmt(summary['mean'])} (an image without a face counts 0), mean_detected "
        f"{_fmt(summary['mean_detected'])}, median {_fmt(summary['median'])}, min "
        f"{_fmt(summary['min'])}, max {_fmt(summary['max'])}",
        f"pass_rate {summary['pass_rate']:.3f}, identity_ratio {_fmt(summary['identity_ratio'])} "
        f"(mean / ceiling); identity against {report['identity_against']}"
        + ("" if report["identity_against"] == "held-out photos" else
           " (rewards copying them; --reference held-out photos with --training for a fair one)"),
        _memorisation_line(report),
        _rigidity_line(report),
        _pose_line(report),
        f"RESULT: {'PASS' if summary['pass'] else 'FAIL'} (mean {_fmt(summary['mean'])} "
        f"{'>=' if summary['mean'] >= summary['threshold'] else '<'} {summary['threshold']:.2f}, "
        f"detection_rate {summary['detection_rate']:.3f} "
        f"{'>=' if summary['detection_rate'] >= summary['min_detection_rate'] else '<'} "
        f"{summary['min_detection_rate']:.2f})",
    ]
    return "\n".join(lines)


def _memorisation_line(report: dict) -> str:
    memo, summary = report["memorisation"], report["summary"]
    if memo["copy_similarity"] is not None:
        faces = f"a face at similarity >= {_fmt(memo['copy_similarity'])} to one"
    else:
        faces = "faces not judged: no distinct pair of training photos"
    images = f"or a whole image within {memo['phash_max_distance']} of 64 hash bits"
    return (f"memorisation: {summary['copies']} of {summary['images']} images copy a training "
            f"photo (copy_rate {summary['copy_rate']:.3f}; {faces}, {images})")


def _rigidity_line(report: dict) -> str:
    rigid = report["rigidity"]
    if rigid["spread_ratio"] is None:
        return ("rigidity: not measured (it needs 2+ generated faces and 2+ distinct training "
                "faces)")
    return (f"rigidity: generated faces' mean pairwise distance {_fmt(rigid['spread'])} = "
            f"{rigid['spread_ratio']:.2f} x the training photos' {_fmt(rigid['reference_spread'])}"
            f" ({'RIGID' if rigid['rigid'] else 'not rigid'}; rigid below "
            f"{rigid['ratio_threshold']:.2f})")


def _pose_line(report: dict) -> str:
    pose = report["pose"]
    if not pose["method"]:
        return f"pose: not measured ({pose['unavailable']})"
    return (f"pose ({pose['convention'].split(';')[0]}; yaw > 0 = turned to the subject's "
            f"left): {pose['faces_with_pose']} faces, yaw mean {_fmt(pose['yaw_mean'], 1)} "
            f"std {_fmt(pose['yaw_std'], 1)}; similarity frontal (|yaw| < "
            f"{pose['frontal_yaw']:.0f}) {_fmt(pose['frontal_similarity'])} over "
            f"{pose['frontal_faces']}, turned {_fmt(pose['turned_similarity'])} over "
            f"{pose['turned_faces']}; per 10 degrees of |yaw| "
            f"{_fmt(pose['similarity_per_10_degrees'])}")


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
    parser.add_argument("--generated", required=True, type=Path, metavar="DIR",
                        help="folder of generated images (searched recursively); required")
    parser.add_argument("--reference", required=True, type=Path, metavar="DIR",
                        help="folder of the person's reference photos (identity is measured "
                             "against them); required")
    parser.add_argument("--training", type=Path, default=None, metavar="DIR",
                        help="the photos the LoRA was trained on, for memorisation and the "
                             "rigidity bar, when --reference holds held-out photos (default: "
                             "--reference)")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help="cosine similarity needed to pass (default: the backend's, "
                             f"insightface {DEFAULT_THRESHOLDS['insightface']:.2f}, dlib "
                             f"{DEFAULT_THRESHOLDS['dlib']:.2f})")
    parser.add_argument("--backend", choices=BACKENDS, default="insightface",
                        help="face model (default: insightface)")
    parser.add_argument("--model-pack", default=None, metavar="NAME_OR_DIR",
                        help="insightface pack name under ~/.insightface/models, or a folder "
                             f"of .onnx files (default: {DEFAULT_MODEL_PACK})")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="auto uses CUDA when a CUDA provider really runs, else CPU; cuda "
                             "fails instead of falling back (default: auto)")
    parser.add_argument("--face-policy", choices=FACE_POLICIES, default="largest",
                        help="which face of a generated image counts: the largest, or the one "
                             "most similar to the reference (default: largest)")
    parser.add_argument("--min-detection-rate", type=float,
                        default=DEFAULT_MIN_DETECTION_RATE, metavar="R",
                        help="fraction of generated images that must have a face to pass "
                             f"(default: {DEFAULT_MIN_DETECTION_RATE})")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                       help=f"embedding cache folder (default: {default_cache_dir()})")
    cache.add_argument("--no-cache", action="store_true",
                       help="neither read nor write the embedding cache (default: cache on)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the full report as JSON here (default: not written)")
    parser.add_argument("--download-pack", action="store_true",
                        help="when the insightface pack NAME is missing, fetch it with "
                             "insightface's own downloader into ~/.insightface/models/NAME "
                             "(default: off, nothing is downloaded)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threshold is not None and not (-1.0 <= args.threshold <= 1.0):
        parser.error(f"--threshold {args.threshold} is outside [-1, 1] (cosine similarity)")
    if not 0.0 <= args.min_detection_rate <= 1.0:
        parser.error(f"--min-detection-rate {args.min_detection_rate} is outside [0, 1]")
    if args.model_pack is not None and args.backend != "insightface":
        parser.error(f"--model-pack applies only to --backend insightface, not --backend "
                     f"{args.backend}")
    if args.download_pack and args.backend != "insightface":
        parser.error(f"--download-pack applies only to --backend insightface, not --backend "
                     f"{args.backend}")
    if args.json is not None:
        problem = output_path_problem(args.json)
        if problem is not None:  # found before any image is embedded
            parser.error(f"--json {args.json}: {problem}")
    try:
        report = evaluate(args.generated, args.reference, threshold=args.threshold,
                          backend=args.backend, model_pack=args.model_pack or DEFAULT_MODEL_PACK,
                          device=args.device, face_policy=args.face_policy,
                          min_detection_rate=args.min_detection_rate, cache_dir=args.cache_dir,
                          use_cache=not args.no_cache, show_progress=True,
                          download_pack=args.download_pack, training_dir=args.training)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    for entry in report["errors"]:
        print(f"error: {entry['folder']} image {entry['path']}: {entry['error']}", file=sys.stderr)
    if args.json is not None:
        try:
            write_atomic(args.json, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        except OSError as error:
            print(f"error: cannot write --json {args.json}: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if report["summary"]["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
