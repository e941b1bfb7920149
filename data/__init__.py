"""Data: tokenizers, token files and packing, resumable sampling, LightningDataModules."""

from .stdlib_text import StdlibTextDataModule
from .tokenizers import ByteTokenizer

__all__ = ["ByteTokenizer", "StdlibTextDataModule"]
