"""Pinned upstream sources of the package and their checksums.

PyPI files were downloaded with `pip download --no-deps --no-binary NAME NAME==VERSION` (bitsandbytes: PyPI
has wheels only) and hashed with sha256sum; the sums match PyPI's simple index, which also gave each file's
permanent URL. The git sources could not be fetched where the package is
rendered, so they carry 'SKIP' and are pinned as strongly as makepkg allows: Ollama by the full commit id
of its v0.34.4 tag (the commit id hashes the whole tree), llama.cpp by its release tag, which makepkg
refuses to check out if it has been forged (re-tagged).
"""

from __future__ import annotations

from dataclasses import dataclass

OLLAMA_VERSION = "0.34.4"
OLLAMA_COMMIT = "b2da9e468af2479058ae18c6d908ed29de410684"  # tag v0.34.4
LLAMA_CPP_TAG = "b11081"  # Ollama v0.34.4's LLAMA_CPP_VERSION

_PYPI = "https://files.pythonhosted.org/packages"


@dataclass(frozen=True)
class PyPISource:
    """One PyPI file carried by the PKGBUILD and installed privately under /usr/lib/ollama-airllm."""

    name: str  # distribution name as on PyPI
    version: str
    sha256: str
    blob: str  # the file's directory on files.pythonhosted.org (from PyPI's simple index)
    wheel: str | None = None  # wheel filename when PyPI has no sdist
    stem: str | None = None  # sdist file stem when it differs from NAME-VERSION (normalized name)

    @property
    def filename(self) -> str:
        return self.wheel or f"{self.srcdir}.tar.gz"

    @property
    def url(self) -> str:
        return f"{_PYPI}/{self.blob}/{self.filename}"

    @property
    def srcdir(self) -> str:
        """Directory the sdist unpacks to (sdists only)."""
        return self.stem or f"{self.name}-{self.version}"


# Python dependencies missing from Arch's official repositories (arch-package-names.md), in build order.
PRIVATE_PYTHON = (
    PyPISource(
        "tokenizers",
        "0.23.3",
        "cded33237c77caeef62944d32aa9a7ef42bdce2b3497e18d137e072a8c4be438",
        "e0/7c/2cabb2174e772636683008f2c5621949b645da7d303c596589e84516a184",
    ),
    PyPISource(
        "transformers",
        "5.23.0",
        "19d647a4d5d903a7c644ca5cde2d86efc3dde7d8c687ae7988806ff2205efa71",
        "7e/d3/1ff04cfc1ddbc6853af16973b17cd437426b4303599bc3e84af11fe55057",
    ),
    PyPISource(
        "accelerate",
        "1.15.0",
        "5654f8c5eaa0d4fa68b33e287a97765da6849bf6d51dcac874e73fbbddfb6134",
        "f5/b5/1d3ed029ac71d3f2961346829a268da923698e9fd63f218f78841f216bfd",
    ),
    PyPISource(
        "gguf",
        "0.19.0",
        "dbadcd6cc7ccd44256f2229fe7c2dff5e8aa5cf0612ab987fd2b1a57e428923f",
        "48/ae/17f1308ae45cd7b08ebb521747d5b23f4efc4d172038a4e228dd5106c3ff",
    ),
    PyPISource(
        "airllm",
        "4.0.0",
        "908d13e6254f65d02db4c78f18310a36831f2c1ca09d515679942ae7571539b4",
        "e2/16/eaa31d2e27d2212e9ef29f06b732e5d965beba9ce7d322422c3be461ad23",
    ),
    PyPISource(
        "apache-tvm-ffi",
        "0.1.15.post2",
        "909be9ef5af07726aa9afd38a3111abc4d86cfd5927ebedfa9166232ce7d287b",
        "a8/8f/2fcd88ce2f43dd2c1945c6613356a9bc1f5fdbe6e37080d34d2b980ad9f6",
        stem="apache_tvm_ffi-0.1.15.post2",
    ),
    PyPISource(
        "xgrammar",
        "0.2.8",
        "8305646fd2b319d6c3003f51a1665e54cbbe9cba1fb636bc41d0b46434ccbb80",
        "03/0f/29f521535729be740779c2c98b630ef6607cf28be9b669895dd2b821ff63",
    ),
    PyPISource(
        "bitsandbytes",
        "0.50.2",
        "55348a9a4a21bfd99cf8c7b32fe67b4030ae5c2a05738e03c1747f65fa6ec283",
        "a5/6e/e4e8b75716dbe5e50964f070266e06f4e6806ce051bfb97f52ee162b9310",
        wheel="bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl",
    ),
)
