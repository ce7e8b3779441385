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
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ARCHIVE_SUFFIXES", "DatasetInfo", "DATASETS", "DATASET_ALIASES", "get_dataset_info", "is_archive_url"]

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
