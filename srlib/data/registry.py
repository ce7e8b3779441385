"""The datasets srlib knows: names, sizes, where to download them, how to cite them.

Every entry gives the number of HR images the set should hold (a wrong count is
the first sign of a wrong copy), a download URL and, where a well-kept project
publishes one, the SHA-256 of that archive.  Each checksum below names its
source.  Entries without a published checksum have ``sha256=None``;
:func:`srlib.data.download_dataset` refuses to install those unless
``verify=False`` is passed explicitly.

Some sets cannot be fetched as a plain archive (Manga109 is given out on
request under a usage agreement; the original T91 comes inside a RAR file):
their ``url`` is the page to get them from, and the downloader explains what
to do instead of downloading.

:data:`REFERENCE_DATASETS` holds the sets for reference-based SR (groups of
one HR target and its references, and multi-view training scenes); they have
no download, see :class:`ReferenceDatasetInfo` and :mod:`srlib.data.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DATASETS",
    "DATASET_ALIASES",
    "REFERENCE_DATASETS",
    "DatasetInfo",
    "ReferenceDatasetInfo",
    "get_dataset_info",
    "get_reference_dataset_info",
    "is_archive_url",
]

#: URL endings recognised as archives the downloader can extract.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive_url(url: str) -> bool:
    """True when ``url`` (ignoring a query string) ends in one of :data:`ARCHIVE_SUFFIXES`."""
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    return path.endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about one dataset.

    Attributes:
        name: canonical name, also the folder name on disk (``Set5``).
        kind: ``"benchmark"`` (evaluation) or ``"train"``; the download
            installs into ``<root>/<kind>/<name>``.
        images: number of HR images the set should hold.
        url: archive to download (zip or tar), or the page to request it from.
        sha256: published SHA-256 of the archive at ``url`` (lowercase hex),
            or ``None`` when no trustworthy value is published.
        archive_folder: path inside the archive of the folder holding the HR
            images, or ``None`` to find it automatically.
        description: one line about the content.
        citation: the paper to cite.
    """

    name: str
    kind: str
    images: int
    url: str
    sha256: str | None
    archive_folder: str | None
    description: str
    citation: str


_BSDS_CITATION = (
    "D. Martin, C. Fowlkes, D. Tal and J. Malik, \"A database of human segmented natural images and its "
    "application to evaluating segmentation algorithms and measuring ecological statistics\", ICCV 2001"
)

# Berkeley's BSDS500 archive.  BSDS500 keeps the 300 BSDS300 images: its
# "train" split is BSDS300's 200 training images (BSD200) and its "val" split
# is BSDS300's 100 test images, the set SR papers call B100 / BSD100
# (Arbelaez et al., TPAMI 2011).  The images are the original JPEGs; the PNG
# copies circulating as B100 were converted from them.
# sha256 source: HedgehogCode/tensorflow-datasets-bw,
# tensorflow_datasets_bw/bsds500/checksums.tsv (TFDS checksum registration).
_BSR_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_full.tgz"
_BSR_SHA256 = "4c34984b11f4efe83c2754dc94760e7fe2a93b66e3fe44d231bddf6e0fb6b4f9"

DATASETS: dict[str, DatasetInfo] = {
    "Set5": DatasetInfo(
        name="Set5",
        kind="benchmark",
        images=5,
        # URL and sha256 source: HedgehogCode/tensorflow-datasets-bw,
        # tensorflow_datasets_bw/set5/checksums.tsv (852,383 bytes).
        url="https://github.com/HedgehogCode/tensorflow-datasets-bw/releases/download/0.0.1rc/Set5.zip",
        sha256="1c0703fbea86c216cce1ab8052d8f285f6aa2cecbdb04c323d26b146c03ade75",
        archive_folder="Set5",
        description="5 test images (baby, bird, butterfly, head, woman)",
        citation=(
            "M. Bevilacqua, A. Roumy, C. Guillemot and M.-L. Alberi Morel, \"Low-complexity single-image "
            "super-resolution based on nonnegative neighbor embedding\", BMVC 2012"
        ),
    ),
    "Set14": DatasetInfo(
        name="Set14",
        kind="benchmark",
        images=14,
        # URL and sha256 source: HedgehogCode/tensorflow-datasets-bw,
        # tensorflow_datasets_bw/set14/checksums.tsv (5,096,261 bytes).
        url="https://github.com/HedgehogCode/tensorflow-datasets-bw/releases/download/0.0.1rc/Set14.zip",
        sha256="069b4c21d6477281a89710a1b4c740a56859a05207a7c2fb0f7d2a1655bb79ce",
        archive_folder="Set14",
        description="14 test images (baboon, barbara, ..., zebra; bridge is grayscale)",
        citation=(
            "R. Zeyde, M. Elad and M. Protter, \"On single image scale-up using sparse-representations\", "
            "Curves and Surfaces 2010, LNCS 6920"
        ),
    ),
    "B100": DatasetInfo(
        name="B100",
        kind="benchmark",
        images=100,
        url=_BSR_URL,
        sha256=_BSR_SHA256,
        archive_folder="BSR/BSDS500/data/images/val",
        description="the 100 test images of BSDS300 (natural scenes, JPEG originals)",
        citation=_BSDS_CITATION,
    ),
    "Urban100": DatasetInfo(
        name="Urban100",
        kind="benchmark",
        images=100,
        # No published SHA-256 found.  deepinv publishes only an MD5 for this
        # archive (65d9d84a34b72c6f7ca1e26a12df1e4c, deepinv/datasets/urban100.py),
        # which srlib does not use as a security check.
        url="https://huggingface.co/datasets/eugenesiow/Urban100/resolve/main/data/Urban100_HR.tar.gz",
        sha256=None,
        archive_folder="Urban100_HR",
        description="100 urban scenes with regular, self-similar structures",
        citation=(
            "J.-B. Huang, A. Singh and N. Ahuja, \"Single image super-resolution from transformed "
            "self-exemplars\", CVPR 2015"
        ),
    ),
    "Manga109": DatasetInfo(
        name="Manga109",
        kind="benchmark",
        images=109,
        # Distributed on request under a usage agreement; no public archive.
        url="http://www.manga109.org/en/download.html",
        sha256=None,
        archive_folder=None,
        description="109 manga volume covers/pages (request access from the Manga109 project)",
        citation=(
            "Y. Matsui, K. Ito, Y. Aramaki, A. Fujimoto, T. Ogawa, T. Yamasaki and K. Aizawa, "
            "\"Sketch-based manga retrieval using Manga109 dataset\", Multimedia Tools and Applications 2017"
        ),
    ),
    "T91": DatasetInfo(
        name="T91",
        kind="train",
        images=91,
        # The original 91 training images ship inside the authors' ScSR code
        # (a RAR archive, folder ScSR/Data/Training, BMP files); srlib ships
        # them as PNG in data/train/T91.  No published checksum.
        url="http://www.ifp.illinois.edu/~jyang29/codes/ScSR.rar",
        sha256=None,
        archive_folder="ScSR/Data/Training",
        description="91 small training images (flowers, faces, cars, ...), shipped in data/train/T91",
        citation=(
            "J. Yang, J. Wright, T. S. Huang and Y. Ma, \"Image super-resolution via sparse "
            "representation\", IEEE TIP 2010"
        ),
    ),
    "BSD200": DatasetInfo(
        name="BSD200",
        kind="train",
        images=200,
        url=_BSR_URL,
        sha256=_BSR_SHA256,
        archive_folder="BSR/BSDS500/data/images/train",
        description="the 200 training images of BSDS300 (used with T91 by SRCNN/FSRCNN/VDSR)",
        citation=_BSDS_CITATION,
    ),
    "DIV2K": DatasetInfo(
        name="DIV2K",
        kind="train",
        images=800,
        # URL and sha256 source: tensorflow/datasets,
        # tensorflow_datasets/url_checksums/div2k.txt (3,530,603,713 bytes).
        url="https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip",
        sha256="9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
        archive_folder="DIV2K_train_HR",
        description="800 2K-resolution training images (NTIRE 2017); 3.5 GB download",
        citation=(
            "E. Agustsson and R. Timofte, \"NTIRE 2017 challenge on single image super-resolution: "
            "dataset and study\", CVPR Workshops 2017"
        ),
    ),
}

#: Other names in use for the same sets (lowercase keys).
DATASET_ALIASES: dict[str, str] = {
    "bsd100": "B100",
    "bsds100": "B100",
    "bsds200": "BSD200",
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Look a dataset up by name, ignoring case (``"set5"``, ``"BSD100"``, ...).

    Args:
        name: a name from :data:`DATASETS` or an alias (``BSD100`` and
            ``BSDS100`` mean ``B100``).

    Returns:
        The :class:`DatasetInfo`.

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    key = str(name).strip().lower()
    for canonical, info in DATASETS.items():
        if canonical.lower() == key:
            return info
    if key in DATASET_ALIASES:
        return DATASETS[DATASET_ALIASES[key]]
    known = ", ".join(DATASETS)
    aliases = ", ".join(f"{alias} -> {target}" for alias, target in DATASET_ALIASES.items())
    raise ValueError(f"unknown dataset {name!r}; known datasets: {known} (aliases, any case: {aliases})")


# ---------------------------------------------------------------------------
# Reference-based (multi-reference) super-resolution: groups and multi-view scenes


@dataclass(frozen=True)
class ReferenceDatasetInfo:
    """Facts about one set for reference-based SR (read by :mod:`srlib.data.reference`).

    These sets are not published as archives: they live in a shared data root
    (``SRLIB_DATA`` / ``--data-root``) under :attr:`folder`, or, for
    ``MultiViewRef_mini``, in the repository's ``data/``.  So there is no URL
    and no checksum; ``srlib data`` lists where each one is found.

    Attributes:
        name: canonical name (``"MultiViewRef"``, ``"castle-P19"``).
        kind: ``"test"`` (groups to evaluate on, never trained on) or
            ``"train"`` (a scene a model may train or validate on).
        layout: ``"cufed5"`` (``GGG_0.png`` target, ``GGG_k.png`` references,
            k = 1..K) or ``"views"`` (one folder of views of one scene).
        count: groups (``"cufed5"``) or views (``"views"``) the set should hold.
        references: references per group (``"cufed5"``), ``None`` for scenes.
        folder: the folder below a data root (``"refsr/MultiViewRef"``).
        pattern: glob on file names selecting the views (``"im*.png"`` keeps
            Middlebury's views and drops its disparity maps); ``"*"``: every image.
        scenes: the scenes the set shows (a scene set: its own name).
        description: one line about the content.
        citation: the work to cite.
        licence: terms of use, as the source states them.
    """

    name: str
    kind: str
    layout: str
    count: int
    references: int | None
    folder: str
    pattern: str
    scenes: tuple[str, ...]
    description: str
    citation: str
    licence: str


_STRECHA_CITATION = (
    "C. Strecha, W. von Hansen, L. Van Gool, P. Fua and U. Thoennessen, \"On benchmarking camera calibration "
    "and multi-view stereo for high resolution imagery\", CVPR 2008"
)
_STRECHA_LICENCE = "Strecha et al. CVPR08 (EPFL/cvlab), redistributed by openMVG/SfM_quality_evaluation; research use"
_MULTIVIEWREF_SCENES = (
    "fountain-P11", "Herz-Jesus-P8", "llff_fern", "dinoSparseRing", "templeSparseRing", "sacre_coeur", "NLE_tower",
)
_MULTIVIEWREF_CITATION = (
    "built from: " + _STRECHA_CITATION + "; B. Mildenhall et al., \"Local light field fusion: practical view "
    "synthesis with prescriptive sampling guidelines\", ACM TOG (SIGGRAPH) 2019; S. M. Seitz, B. Curless, "
    "J. Diebel, D. Scharstein and R. Szeliski, \"A comparison and evaluation of multi-view stereo reconstruction "
    "algorithms\", CVPR 2006; Image Matching Challenge 2021 photos (YFCC100M); naver/mast3r sample photos. "
    "Layout after CUFED5: Z. Zhang, Z. Wang, Z. Lin and H. Qi, \"Image super-resolution by neural texture "
    "transfer\", CVPR 2019"
)
_MULTIVIEWREF_LICENCE = (
    "per group, see manifest.json: Strecha (research use), LLFF (no licence file in its source repository), "
    "Middlebury MVS (research use), YFCC100M Creative Commons photos, NLE_tower CC BY-NC-SA 4.0"
)
_BUNDLER_CITATION = (
    "N. Snavely, S. M. Seitz and R. Szeliski, \"Photo tourism: exploring photo collections in 3D\", "
    "ACM TOG (SIGGRAPH) 2006 (Bundler example data)"
)
_MIDDLEBURY_STEREO_CITATION = (
    "D. Scharstein and R. Szeliski, \"High-accuracy stereo depth maps using structured light\", CVPR 2003"
)


def _scene(name: str, folder: str, views: int, description: str, citation: str, licence: str,
           pattern: str = "*") -> ReferenceDatasetInfo:
    return ReferenceDatasetInfo(name=name, kind="train", layout="views", count=views, references=None,
                                folder=folder, pattern=pattern, scenes=(name,), description=description,
                                citation=citation, licence=licence)


#: Sets for reference-based SR, by name: the ``MultiViewRef`` test groups (and the shipped
#: ``MultiViewRef_mini``), then the training scenes, disjoint from the test scenes.
REFERENCE_DATASETS: dict[str, ReferenceDatasetInfo] = {
    "MultiViewRef": ReferenceDatasetInfo(
        name="MultiViewRef",
        kind="test",
        layout="cufed5",
        count=18,
        references=5,
        folder="refsr/MultiViewRef",
        pattern="*",
        scenes=_MULTIVIEWREF_SCENES,
        description=("18 groups of 1 HR target + 5 references from real multi-view scenes, nearest view first; "
                     "long side <= 512, sides multiples of 12"),
        citation=_MULTIVIEWREF_CITATION,
        licence=_MULTIVIEWREF_LICENCE,
    ),
    "MultiViewRef_mini": ReferenceDatasetInfo(
        name="MultiViewRef_mini",
        kind="test",
        layout="cufed5",
        count=3,
        references=5,
        folder="refsr/MultiViewRef_mini",
        pattern="*",
        scenes=("fountain-P11", "Herz-Jesus-P8", "llff_fern"),
        description=("groups 000, 003, 006 of MultiViewRef at half size (PIL Lanczos), shipped in "
                     "data/refsr/MultiViewRef_mini for the notebook and the tests"),
        citation=_MULTIVIEWREF_CITATION,
        licence="Strecha (research use); LLFF (no licence file in its source repository); see its README",
    ),
    "castle-P19": _scene("castle-P19", "refsr/train/castle-P19", 19,
                         "Strecha castle courtyard, 19 views, 504x336", _STRECHA_CITATION, _STRECHA_LICENCE),
    "entry-P10": _scene("entry-P10", "refsr/train/entry-P10", 10,
                        "Strecha building entry, 10 views, 504x336", _STRECHA_CITATION, _STRECHA_LICENCE),
    "ngp_fox": _scene(
        "ngp_fox", "refsr/train/ngp_fox", 25, "25 views of the instant-ngp fox capture, 288x504",
        "T. Mueller, A. Evans, C. Schied and A. Keller, \"Instant neural graphics primitives with a "
        "multiresolution hash encoding\", ACM TOG (SIGGRAPH) 2022 (NVlabs/instant-ngp, data/nerf/fox)",
        "NVIDIA Source Code License: non-commercial research and evaluation",
    ),
    "sceaux_castle": _scene(
        "sceaux_castle", "multiview/sceaux_castle", 11,
        "one building from 11 viewpoints, JPEG 2832x2128 (photographs by Pierre Moulon, 2012)",
        "openMVG sample data (ImageDataset_SceauxCastle), photographs by Pierre Moulon, 2012",
        "openMVG sample data, research and teaching use",
    ),
    "bundler_kermit": _scene("bundler_kermit", "multiview/bundler_kermit", 11,
                             "an indoor scene from 11 viewpoints, JPEG 640x480", _BUNDLER_CITATION,
                             "Bundler example data, research use"),
    "bundler_et": _scene("bundler_et", "multiview/bundler_et", 9,
                         "an indoor scene from 9 viewpoints, JPEG 640x480", _BUNDLER_CITATION,
                         "Bundler example data, research use"),
    "middlebury_cones": _scene("middlebury_cones", "multiview/middlebury_cones", 2,
                               "Middlebury stereo cones, views im2 and im6 (450x375); disparity maps left out",
                               _MIDDLEBURY_STEREO_CITATION, "Middlebury stereo data, research use", "im*.png"),
    "middlebury_teddy": _scene("middlebury_teddy", "multiview/middlebury_teddy", 2,
                               "Middlebury stereo teddy, views im2 and im6 (450x375); disparity maps left out",
                               _MIDDLEBURY_STEREO_CITATION, "Middlebury stereo data, research use", "im*.png"),
}


def get_reference_dataset_info(name: str) -> ReferenceDatasetInfo:
    """Look a reference-SR set or scene up by name, ignoring case (``"multiviewref"``, ``"castle-p19"``).

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    key = str(name).strip().lower()
    for canonical, info in REFERENCE_DATASETS.items():
        if canonical.lower() == key:
            return info
    raise ValueError(f"unknown reference-SR set {name!r}; known: {', '.join(REFERENCE_DATASETS)}")
