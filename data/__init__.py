"""Data: tokenizers, token files and packing, resumable sampling, LightningDataModules."""

from .lm_corpus import LMCorpusDataModule
from .recall import RecallDataModule, RecallTokenizer
from .stdlib_text import StdlibTextDataModule
from .tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "LMCorpusDataModule",
    "RecallDataModule",
    "RecallTokenizer",
    "StdlibTextDataModule",
    "load_tokenizer",
]
