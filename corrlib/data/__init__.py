"""Datasets and file formats (torchvision-style: ``root``, ``split``, ``transform``, ``download``).

Every benchmark takes the same data root, the folder that holds ``PF-WILLOW/``, ``PF-PASCAL/``,
``SPair-71k/`` and ``TSS/`` (``root=None``: the ``CORRLIB_DATA`` environment variable), and
returns pixel coordinates that are 0-based, (x, y), pixel centres at integers (see
:mod:`corrlib.geometry`). Keypoint datasets share one item layout: ``src_img``, ``trg_img``,
``src_kps``, ``trg_kps``, ``src_bbox``, ``trg_bbox``, ``src_size``, ``trg_size``, ``category``,
``src_name``, ``trg_name``, ``pair_index``, ``flip``.
"""

from corrlib.data._common import (
    DATA_ENV,
    DatasetNotFoundError,
    KeypointPair,
    PairDataset,
    download_and_extract,
    download_url,
    extract_archive,
    keypoint_bbox,
    matlab_to_zero_based,
    require_file,
    require_folder,
    resolve_data_root,
    sha256_file,
)
from corrlib.data.flo import read_flo, write_flo
from corrlib.data.images import read_image, read_mask
from corrlib.data.patches import (
    ALOE_GT_SCALE,
    OPENCV_SAMPLES,
    PHOTOTOUR_NAMES,
    HomographyPair,
    PatchPairs,
    PhotoTourPairs,
    StereoPair,
    load_aloe,
    load_graffiti,
    load_motorcycle,
    read_opencv_matrix,
    sample_homography_pairs,
    sample_stereo_pairs,
    sample_synthetic_pairs,
)
from corrlib.data.pfpascal import (
    PFPASCAL_CATEGORIES,
    PFPascal,
    pair_overlap,
    read_pfpascal_annotation,
)
from corrlib.data.pfwillow import PFWillow, read_pfwillow_kps
from corrlib.data.spair import SPAIR_CATEGORIES, SPair71k
from corrlib.data.synthetic import SKIMAGE_PHOTOS, SyntheticPairs, skimage_photos
from corrlib.data.tss import TSS, TSS_SUBSETS, TSSPair, read_tss_flow

__all__ = [
    "ALOE_GT_SCALE",
    "DATA_ENV",
    "OPENCV_SAMPLES",
    "PFPASCAL_CATEGORIES",
    "PHOTOTOUR_NAMES",
    "SKIMAGE_PHOTOS",
    "SPAIR_CATEGORIES",
    "TSS",
    "TSS_SUBSETS",
    "DatasetNotFoundError",
    "HomographyPair",
    "KeypointPair",
    "PFPascal",
    "PFWillow",
    "PairDataset",
    "PatchPairs",
    "PhotoTourPairs",
    "SPair71k",
    "StereoPair",
    "SyntheticPairs",
    "TSSPair",
    "download_and_extract",
    "download_url",
    "extract_archive",
    "keypoint_bbox",
    "load_aloe",
    "load_graffiti",
    "load_motorcycle",
    "matlab_to_zero_based",
    "pair_overlap",
    "read_flo",
    "read_image",
    "read_mask",
    "read_opencv_matrix",
    "read_pfpascal_annotation",
    "read_pfwillow_kps",
    "read_tss_flow",
    "require_file",
    "require_folder",
    "resolve_data_root",
    "sample_homography_pairs",
    "sample_stereo_pairs",
    "sample_synthetic_pairs",
    "sha256_file",
    "skimage_photos",
    "write_flo",
]
