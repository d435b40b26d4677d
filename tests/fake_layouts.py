"""Small fake copies of official dataset layouts (KITTI 2012 stereo, Brown's PhotoTour scenes),
written file by file as the official archives unpack, for end-to-end tests of the ``paper``
presets' data paths without the real (gigabyte) downloads."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

#: Size ``(H, W)`` and constant disparity (pixels) of the fake KITTI scenes.
KITTI_SIZE, KITTI_DISP = (40, 96), 8.0


def write_kitti2012(root: Path, scenes: int = 194, colour: bool = False) -> Path:
    """``root/KITTI2012/training/{image_0,image_1,disp_noc,disp_occ}/NNNNNN_10.png``: textured
    left views, right views shifted by :data:`KITTI_DISP` pixels (``x_right = x_left - d``) and
    16-bit disparity PNGs (``d * 256``; 0 = unknown in the leftmost columns)."""
    base = Path(root) / "KITTI2012" / "training"
    h, w = KITTI_SIZE
    d = int(KITTI_DISP)
    kinds = ["image_0", "image_1", "disp_noc", "disp_occ"]
    kinds += ["colored_0", "colored_1"] if colour else []
    for kind in kinds:
        (base / kind).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for scene in range(scenes):
        wide = rng.integers(0, 256, (h, w + d), dtype=np.uint8)
        left, right = wide[:, :w], wide[:, d : d + w]  # left(x) = wide(x) = right(x - d)
        name = f"{scene:06d}_10.png"
        Image.fromarray(left).save(base / "image_0" / name)
        Image.fromarray(right).save(base / "image_1" / name)
        if colour:
            Image.fromarray(np.stack([left] * 3, -1)).save(base / "colored_0" / name)
            Image.fromarray(np.stack([right] * 3, -1)).save(base / "colored_1" / name)
        disp = np.full((h, w), int(KITTI_DISP * 256), dtype=np.uint16)
        disp[:, :d] = 0
        for kind in ("disp_noc", "disp_occ"):
            Image.fromarray(disp).save(base / kind / name)
    return base.parent


def write_phototour(root: Path, name: str, points: int = 24, per_point: int = 3) -> Path:
    """``root/PhotoTour/<name>/``: ``patches0000.bmp`` (64 x 64 patches in rows of 16, as the
    official scenes store them), ``info.txt`` (the 3-D point of each patch) and
    ``m50_100000_100000_0.txt`` (labelled evaluation pairs, half matches), the files
    :class:`torchvision.datasets.PhotoTour` reads. The patches of one point are noisy copies of
    one random texture; returns the folder."""
    folder = Path(root) / "PhotoTour" / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    n = points * per_point
    rows = -(-n // 16)
    sheet = np.zeros((rows * 64, 16 * 64), dtype=np.uint8)
    ids = []
    for p in range(points):
        texture = rng.integers(0, 256, (64, 64)).astype(np.float64)
        for k in range(per_point):
            i = p * per_point + k
            patch = np.clip(texture + rng.normal(0, 12, (64, 64)), 0, 255).astype(np.uint8)
            sheet[(i // 16) * 64 : (i // 16 + 1) * 64, (i % 16) * 64 : (i % 16 + 1) * 64] = patch
            ids.append(p)
    Image.fromarray(sheet).save(folder / "patches0000.bmp")
    (folder / "info.txt").write_text("".join(f"{p} 0\n" for p in ids))
    lines = []
    for p in range(points):  # one match and one non-match per point
        a = p * per_point
        lines.append(f"{a} {p} 0 {a + 1} {p} 0 0\n")
        q = (p + 1) % points
        lines.append(f"{a} {p} 0 {q * per_point} {q} 0 0\n")
    (folder / "m50_100000_100000_0.txt").write_text("".join(lines))
    return folder


def write_graffiti(root: Path, size: tuple[int, int] = (48, 64)) -> Path:
    """``root/opencv-samples/{graf1.png, graf3.png, H1to3p.xml}``: a textured view, the same view
    moved 3 px right, and that translation as an OpenCV FileStorage homography."""
    folder = Path(root) / "opencv-samples"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    wide = rng.integers(0, 256, (size[0], size[1] + 3, 3), dtype=np.uint8)
    Image.fromarray(wide[:, 3:]).save(folder / "graf1.png")
    Image.fromarray(wide[:, :-3]).save(folder / "graf3.png")
    (folder / "H1to3p.xml").write_text(
        '<?xml version="1.0"?>\n<opencv_storage>\n<H13 type_id="opencv-matrix"><rows>3</rows>'
        "<cols>3</cols><dt>d</dt><data>1 0 3 0 1 0 0 0 1</data></H13>\n</opencv_storage>\n"
    )
    return folder


def write_voc2012(root: Path, n: int = 8, size: tuple[int, int] = (72, 96)) -> Path:
    """``root/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation}``: ``n``
    images (smooth noise; the images of one class are shifted views of one scene), each with one
    object box of class 15 (person) or 7 (car), alternating, ringed by void (255) as VOC's masks
    are; the first ``n - 2`` are
    ``train``, the last two ``val``. Returns the VOC2012 folder."""
    voc = Path(root) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    h, w = size
    ids = [f"2007_{100 + k:06d}" for k in range(n)]
    palette = rng.integers(0, 256, 768, dtype=np.uint8).tolist()
    scenes = [  # one scene per class: its images are shifted views (mining can verify them)
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (h // 6, w // 6 + 4, 3), dtype=np.uint8)).resize(
                (w + 24, h), Image.BILINEAR
            )
        )
        for _ in range(2)
    ]
    for k, name in enumerate(ids):
        dx = 3 * (k // 2)
        Image.fromarray(scenes[k % 2][:, dx : dx + w]).save(voc / "JPEGImages" / f"{name}.jpg")
        lab = np.zeros((h, w), np.uint8)
        y0, x0 = 8 + (k % 3) * 4, 10 + (k % 4) * 5
        lab[y0 - 2 : y0 + 42, x0 - 2 : x0 + 52] = 255
        lab[y0 : y0 + 40, x0 : x0 + 50] = 15 if k % 2 == 0 else 7
        img = Image.fromarray(lab, mode="P")
        img.putpalette(palette)
        img.save(voc / "SegmentationClass" / f"{name}.png")
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in ids[:-2]))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in ids[-2:]))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def write_cub2011(root: Path, classes: int = 2, per_class: int = 5, size=(60, 80)) -> Path:
    """``root/CUB_200_2011/`` with the official files (images.txt, train_test_split.txt,
    image_class_labels.txt, classes.txt, bounding_boxes.txt, parts/part_locs.txt) and
    ``classes x per_class`` images: the images of one species are shifted views of one scene
    (part ``p`` sits at the same scene point in each, so the parts truly correspond); parts 14
    and 15 are never visible, and the last two images of a species are in the test split."""
    base = Path(root) / "CUB_200_2011"
    rng = np.random.default_rng(7)
    h, w = size
    lines = {k: [] for k in ("images", "split", "labels", "classes", "boxes", "parts")}
    image_id = 0
    for c in range(1, classes + 1):
        name = f"{c:03d}.Bird_{c}"
        (base / "images" / name).mkdir(parents=True, exist_ok=True)
        lines["classes"].append(f"{c} {name}\n")
        scene = np.asarray(
            Image.fromarray(rng.integers(0, 256, (h // 5, w // 5 + 4, 3), dtype=np.uint8)).resize(
                (w + 20, h), Image.BILINEAR
            )
        )
        points = np.stack([rng.uniform(24, w - 4, 15), rng.uniform(4, h - 4, 15)], 1)
        for k in range(per_class):
            image_id += 1
            dx = 4 * k
            file = f"{name}/{name}_{k:04d}.jpg"
            Image.fromarray(scene[:, dx : dx + w]).save(base / "images" / file)
            lines["images"].append(f"{image_id} {file}\n")
            lines["split"].append(f"{image_id} {0 if k >= per_class - 2 else 1}\n")
            lines["labels"].append(f"{image_id} {c}\n")
            lines["boxes"].append(f"{image_id} 2.0 3.0 {w - 6}.0 {h - 8}.0\n")
            for p in range(15):
                x, y = points[p, 0] - dx, points[p, 1]
                visible = int(p < 13 and 0 <= x < w)
                lines["parts"].append(
                    f"{image_id} {p + 1} {x * visible:.1f} {y * visible:.1f} {visible}\n"
                )
    (base / "parts").mkdir(parents=True, exist_ok=True)
    names = {
        "images": "images.txt",
        "split": "train_test_split.txt",
        "labels": "image_class_labels.txt",
        "classes": "classes.txt",
        "boxes": "bounding_boxes.txt",
        "parts": "parts/part_locs.txt",
    }
    for key, file in names.items():
        (base / file).write_text("".join(lines[key]))
    return base


def write_voc2011(root: Path, n: int = 6, size: tuple[int, int] = (90, 120)) -> Path:
    """``root/TrainVal/VOCdevkit/VOC2011/{JPEGImages, ImageSets/Main}`` as the official tar
    unpacks: ``n`` smooth-noise photographs, the first ``n - 2`` in ``train``, the rest ``val``.
    Returns the VOC2011 folder."""
    voc = Path(root) / "TrainVal" / "VOCdevkit" / "VOC2011"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    h, w = size
    ids = [f"2011_{k:06d}" for k in range(n)]
    for name in ids:
        coarse = rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(
            voc / "JPEGImages" / f"{name}.jpg"
        )
    sets = voc / "ImageSets" / "Main"
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in ids[:-2]))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in ids[-2:]))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc


def write_pascal_keypoints(root: Path, per_category: int = 6, size=(60, 80)) -> Path:
    """``root/PASCAL-Berkeley/annotations/<category>/<image>_<object>.xml`` (Bourdev et al.'s
    files, as ``voc2011_keypoints_Feb2012.tgz`` extracts) over ``root/TrainVal/VOCdevkit/VOC2011``
    photographs. Two categories, ``car`` and ``person``, ``per_category`` images each (the last
    two of each in VOC's ``val``): the images of a category are views of one scene shifted by 4
    px each, so keypoint ``K<i>`` sits at one scene point in all of them; ``K5`` is never visible.
    Person images from 2010 are written too (the loader leaves them out, as uncurated), a car
    object in a ``2007_`` image (in no Main list, as in VOC 2011) and a second car object in the
    first car image (never paired with the first: one image). Coordinates are 1-based, as in the
    real files. Returns the annotations folder."""
    voc = Path(root) / "TrainVal" / "VOCdevkit" / "VOC2011"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    ann = Path(root) / "PASCAL-Berkeley" / "annotations"
    rng = np.random.default_rng(5)
    h, w = size
    train, val = [], []
    for c, category in enumerate(("car", "person")):
        (ann / category).mkdir(parents=True, exist_ok=True)
        scene = np.asarray(
            Image.fromarray(rng.integers(0, 256, (h // 5, w // 5 + 6, 3), dtype=np.uint8)).resize(
                (w + 30, h), Image.BILINEAR
            )
        )
        points = np.stack([rng.uniform(30, w - 4, 6), rng.uniform(4, h - 4, 6)], 1)
        objects = [(k, 1, 0.0) for k in range(per_category)]
        if category == "car":
            objects += [(0, 2, 1.0), (-1, 1, 0.0)]  # a 2nd object in image 0; a 2007 image
        for k, voc_id, lift in objects:
            year = 2010 if category == "person" and k == 1 else 2007 if k < 0 else 2008
            image = f"{year}_{c:03d}{abs(k):03d}"
            dx = 4 * abs(k)
            if voc_id == 1:
                Image.fromarray(scene[:, dx : dx + w]).save(voc / "JPEGImages" / f"{image}.jpg")
                if k >= 0:
                    (val if k >= per_category - 2 else train).append(image)
            rows = []
            for p in range(6):
                x, y = points[p, 0] - dx, points[p, 1] + lift
                visible = int(p < 5)
                rows.append(
                    f'\t\t<keypoint name="K{p}" visible="{visible}" x="{x + 1:.2f}" '
                    f'y="{y + 1:.2f}" z="0.00"/>\n'
                )
            (ann / category / f"{image}_{voc_id}.xml").write_text(
                '<?xml version="1.0" encoding="utf-8"?>\n<annotation>\n'
                f"\t<image>{image}</image>\n\t<voc_id>{voc_id}</voc_id>\n"
                f"\t<category>{category}</category>\n\t<subcategory>x</subcategory>\n"
                '\t<visible_bounds height="50.00" width="70.00" xmin="3.00" ymin="4.00"/>\n'
                f"\t<keypoints>\n{''.join(rows)}\t</keypoints>\n</annotation>\n"
            )
    sets = voc / "ImageSets" / "Main"
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in train + val))
    return ann
