"""Data for super-resolution: reading images, finding and downloading datasets,
making LR images, and PyTorch datasets for evaluation and training.

Modules:

* :mod:`srlib.data.io` - :func:`load_image` / :func:`save_image` (uint8 RGB
  ``(3, H, W)``), :func:`to_float` / :func:`to_uint8`;
* :mod:`srlib.data.registry` - :data:`DATASETS` (Set5, Set14, B100, Urban100,
  Manga109, T91, BSD200, DIV2K) with sizes, URLs, checksums, citations;
* :mod:`srlib.data.locate` - :func:`data_roots`, :func:`find_dataset`,
  :func:`list_images`, :func:`dataset_report`;
* :mod:`srlib.data.download` - :func:`download_dataset` (verified, atomic);
* :mod:`srlib.data.degrade` - :func:`crop_to_multiple`, the degradations
  :func:`bicubic_degrade`, :func:`bd_degrade` (blur-downscale), :func:`dn_degrade`
  (noise) named by a :class:`Degradation`, and :class:`LRCache`;
* :mod:`srlib.data.datasets` - :class:`BenchmarkDataset`, :class:`TrainPatchDataset`;
* :mod:`srlib.data.reference` - reference-based SR: :class:`ReferenceGroupDataset`
  (HR target, LR input, K references and their matching copies),
  :class:`ReferencePatchDataset` (seeded multi-view / self-reference training samples),
  :data:`REFERENCE_DATASETS` (MultiViewRef and the training scenes), :func:`reference_dataset_report`.
"""

from .datasets import BenchmarkDataset, TrainPatchDataset, sample_seed
from .degrade import (
    BD_SIGMA,
    CACHE_VERSION,
    DEGRADATIONS,
    CacheWarning,
    Degradation,
    LRCache,
    as_degradation,
    bd_degrade,
    bd_kernel,
    bicubic_degrade,
    crop_to_multiple,
    dn_degrade,
    dn_seed,
    default_cache_dir,
    make_lr_pair,
)
from .download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    sha256_of_file,
)
from .io import (
    ImageConversionWarning,
    ImageReadError,
    decode_image,
    load_image,
    save_image,
    to_float,
    to_uint8,
)
from .locate import (
    IMAGE_EXTENSIONS,
    DataRoots,
    DatasetCountWarning,
    DatasetNotFoundError,
    data_roots,
    dataset_report,
    find_dataset,
    list_images,
    repository_data_dir,
)
from .reference import (
    SAMPLE_KINDS,
    TRAIN_SCENES,
    ReferenceGroup,
    ReferenceGroupDataset,
    ReferencePatchDataset,
    SceneLeakError,
    find_reference_dataset,
    held_out_digests,
    held_out_scenes,
    list_views,
    matching_reference,
    read_groups,
    reference_dataset_report,
    self_reference_crop,
)
from .registry import (
    DATASET_ALIASES,
    DATASETS,
    REFERENCE_DATASETS,
    DatasetInfo,
    ReferenceDatasetInfo,
    get_dataset_info,
    get_reference_dataset_info,
)

__all__ = [
    # io
    "load_image",
    "decode_image",
    "save_image",
    "to_float",
    "to_uint8",
    "ImageReadError",
    "ImageConversionWarning",
    # registry
    "DatasetInfo",
    "DATASETS",
    "DATASET_ALIASES",
    "get_dataset_info",
    "ReferenceDatasetInfo",
    "REFERENCE_DATASETS",
    "get_reference_dataset_info",
    # locate
    "IMAGE_EXTENSIONS",
    "DataRoots",
    "DatasetNotFoundError",
    "DatasetCountWarning",
    "data_roots",
    "repository_data_dir",
    "find_dataset",
    "list_images",
    "dataset_report",
    # download
    "download_dataset",
    "sha256_of_file",
    "ChecksumError",
    "DownloadError",
    "UnsafeArchiveError",
    # degrade
    "BD_SIGMA",
    "CACHE_VERSION",
    "DEGRADATIONS",
    "CacheWarning",
    "Degradation",
    "as_degradation",
    "bd_degrade",
    "bd_kernel",
    "dn_degrade",
    "dn_seed",
    "crop_to_multiple",
    "bicubic_degrade",
    "default_cache_dir",
    "LRCache",
    "make_lr_pair",
    # datasets
    "BenchmarkDataset",
    "TrainPatchDataset",
    "sample_seed",
    # reference-based SR
    "SAMPLE_KINDS",
    "TRAIN_SCENES",
    "ReferenceGroup",
    "ReferenceGroupDataset",
    "ReferencePatchDataset",
    "SceneLeakError",
    "find_reference_dataset",
    "held_out_digests",
    "held_out_scenes",
    "list_views",
    "matching_reference",
    "read_groups",
    "reference_dataset_report",
    "self_reference_crop",
]
