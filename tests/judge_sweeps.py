"""Sweeps for the LoRA judge's tests (issue 17), built at test time from ../shared/faces.

The shared photos hold one person with four photos (obama_1..4) and others with two or three,
so every sweep is made from those (never copied into the repo):

- training photos: obama_1, obama_2 and obama_4 (the --reference folder, a LoRA's training set;
  the skin eval needs three);
- copies: the training photos themselves, lightly re-encoded (JPEG quality 86-95, shifted by a
  few pixels, scaled by 0.97-1.0), as a LoRA that memorised its data would return them;
- others: square crops (sc._augment_face: scale, shift, flip, small rotation, light jitter) of
  the person's photo that is not a training photo, obama_3 (or of the given photos);
- rigid: 8 lightly re-encoded, shifted copies of one photo (obama_3), one face whatever the seed;
- varied: 8 different pictures of the person: a crop and a mirrored crop of each of obama_1..4
  (no one in the shared photos has 8 photos of their own);
- strangers: crops of other people (biden_2, kit_harington_2/3, rose_leslie_1/2,
  alex_lacamoire_2/3), as a weak LoRA or the no-LoRA baseline would draw someone else.

The README of ../shared/faces notes that obama_3 and biden_1 are crops of one group photo;
biden_1 is not used.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# The skin eval needs 3+ training photos; obama_3 is the one photo left for "other photos".
TRAINING = ("obama_1.jpg", "obama_2.jpg", "obama_4.jpg")
OTHERS = ("obama_3.jpg",)
RIGID_SOURCE = "obama_3.jpg"
VARIED = ("obama_1.jpg", "obama_2.jpg", "obama_3.jpg", "obama_4.jpg")
STRANGERS = ("biden_2.jpg", "kit_harington_2.jpg", "rose_leslie_1.jpg", "alex_lacamoire_2.jpg",
             "kit_harington_3.jpg", "rose_leslie_2.jpg", "alex_lacamoire_3.jpg")
# Light re-encodings: (JPEG quality, shift x, shift y, scale).
REENCODINGS = ((92, 0, 0, 1.0), (88, 3, -2, 0.99), (95, -4, 3, 0.98), (86, 5, 5, 0.97),
               (90, -2, -5, 1.0), (93, 6, -1, 0.985), (87, -6, 2, 0.99), (94, 1, 6, 0.975))


def sweep_name(config: str, index: int, count: int, suffix: str) -> str:
    """Image `index` of `count` in a config: two prompts (p01, p02), seeds 1..count/2 each."""
    half = max(1, count // 2)
    return f"{config}_p{index // half + 1:02d}_seed{index % half + 1}{suffix}"


def face_box(image: Image.Image) -> tuple[int, int, int, int]:
    """The largest face, found by dlib's HOG detector on a copy at most 800 px on its long side."""
    import dlib
    scale = min(1.0, 800 / max(image.size))
    small = image.resize((round(image.width * scale), round(image.height * scale)))
    found = dlib.get_frontal_face_detector()(np.asarray(small), 1)
    assert found, "test photo without a detectable face"
    box = max(found, key=lambda rect: rect.width())
    return tuple(round(value / scale) for value in (box.left(), box.top(), box.right(),
                                                    box.bottom()))


def reencode(image: Image.Image, quality: int, dx: int, dy: int, scale: float) -> bytes:
    """The photo shifted by (dx, dy) px and scaled about its centre (edges reflected), as JPEG."""
    import cv2
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    matrix = np.float32([[scale, 0, dx + (1 - scale) * width / 2],
                         [0, scale, dy + (1 - scale) * height / 2]])
    moved = cv2.warpAffine(rgb, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)
    buffer = io.BytesIO()
    Image.fromarray(moved).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class Photos:
    """The shared photos, each opened (and its face found) once; crops via the scorecard's own
    _augment_face so that every crop is a plausible generated portrait."""

    def __init__(self, faces_dir: Path, scorecard_module, seed: int = 17) -> None:
        self.folder = Path(faces_dir) / "photos"
        self.sc = scorecard_module
        self.rng = np.random.default_rng(seed)
        self._loaded: dict[str, tuple[Image.Image, tuple]] = {}

    def photo(self, name: str) -> Image.Image:
        return self._load(name)[0]

    def _load(self, name: str):
        if name not in self._loaded:
            image = Image.open(self.folder / name).convert("RGB")
            self._loaded[name] = (image, face_box(image))
        return self._loaded[name]

    def crop(self, name: str, mirrored: bool | None = None) -> Image.Image:
        image, box = self._load(name)
        crop = self.sc._augment_face(image, box, self.rng)
        if mirrored:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return crop

    def copy_bytes(self, name: str, index: int) -> bytes:
        return reencode(self.photo(name), *REENCODINGS[index % len(REENCODINGS)])


def write_training(photos: Photos, folder: Path, names=TRAINING) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes((photos.folder / name).read_bytes())
    return folder


def copies_set(photos: Photos, folder: Path, config: str = "step2000_str1.00_cfg4.0",
               count: int = 8, names=TRAINING) -> list[Path]:
    """The training photos lightly re-encoded, `count` images, alternating between the photos."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        name = names[index % len(names)]
        path = folder / sweep_name(config, index, count, ".jpg")
        path.write_bytes(photos.copy_bytes(name, index // len(names)))
        paths.append(path)
    return paths


def others_set(photos: Photos, folder: Path, config: str = "step1000_str1.00_cfg4.0",
               count: int = 8, names=OTHERS) -> list[Path]:
    """Crops of the person's photos that are not training photos."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / sweep_name(config, index, count, ".png")
        photos.crop(names[index % len(names)]).save(path)
        paths.append(path)
    return paths


def rigid_set(photos: Photos, folder: Path, config: str = "step3000_str1.00_cfg4.0",
              count: int = 8, source: str = RIGID_SOURCE) -> list[Path]:
    """`count` re-encoded, slightly shifted copies of one photo."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / sweep_name(config, index, count, ".jpg")
        path.write_bytes(photos.copy_bytes(source, index))
        paths.append(path)
    return paths


def varied_set(photos: Photos, folder: Path, config: str = "step1500_str1.00_cfg4.0"
               ) -> list[Path]:
    """8 different pictures of the person: a crop and a mirrored crop of each of obama_1..4."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(8):
        name = VARIED[index % len(VARIED)]
        path = folder / sweep_name(config, index, 8, ".png")
        photos.crop(name, mirrored=index >= len(VARIED)).save(path)
        paths.append(path)
    return paths


def strangers_set(photos: Photos, folder: Path, config: str, count: int = 4,
                  offset: int = 0) -> list[Path]:
    """Crops of other people (a weak LoRA, or the no-LoRA baseline)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / sweep_name(config, index, count, ".png")
        photos.crop(STRANGERS[(index + offset) % len(STRANGERS)]).save(path)
        paths.append(path)
    return paths


def judge_sweep(photos: Photos, folder: Path, *, second_strength: bool = True) -> dict:
    """One sweep for every judge acceptance line and the HTML curves. Strength 1.00, CFG 4.0:
    step 500 draws other people; step 1000 the person's other photo (8 crops of obama_3);
    step 1500 8 different pictures of the person; step 2000 the training photos lightly
    re-encoded (8); step 3000 8 re-encoded, shifted copies of one photo (rigid). A no-LoRA
    baseline draws other people. With `second_strength`, strength 0.80 gains identity steadily
    over steps 1000-3000 (4 images each). Prompts p01/p02. Returns {role: config name}."""
    roles = {"baseline": "baseline_cfg4.0", "weak": "step500_str1.00_cfg4.0",
             "others": "step1000_str1.00_cfg4.0", "varied": "step1500_str1.00_cfg4.0",
             "copies": "step2000_str1.00_cfg4.0", "rigid": "step3000_str1.00_cfg4.0"}
    strangers_set(photos, folder, roles["baseline"], offset=0)
    strangers_set(photos, folder, roles["weak"], offset=3)
    others_set(photos, folder, roles["others"])
    varied_set(photos, folder, roles["varied"])
    copies_set(photos, folder, roles["copies"])
    rigid_set(photos, folder, roles["rigid"])
    if second_strength:
        roles.update(low_1000="step1000_str0.80_cfg4.0", low_2000="step2000_str0.80_cfg4.0",
                     low_3000="step3000_str0.80_cfg4.0")
        strangers_set(photos, folder, roles["low_1000"], offset=5)
        for index, name in enumerate((STRANGERS[1], "obama_3.jpg", STRANGERS[4], "obama_3.jpg")):
            photos.crop(name).save(folder / sweep_name(roles["low_2000"], index, 4, ".png"))
        others_set(photos, folder, roles["low_3000"], count=4)
    return roles
