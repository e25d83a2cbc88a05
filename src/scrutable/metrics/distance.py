"""The two distances a prompt vector is unembedded by (`unembed.py`), in a torch-free module:
training configs name one, and a sweep's driver builds configs without importing torch."""

from enum import StrEnum


class Distance(StrEnum):
    EUCLIDEAN = "euclidean"
    COSINE = "cosine"
