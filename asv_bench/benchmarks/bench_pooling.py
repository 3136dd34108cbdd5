"""Attention pooling: additive (global and window (64, 64) around the centre) and Luong's three modes.

Shapes (fp32): additive ``x (8, L, 128)``, hidden width 128; Luong ``h_t (8, 128, 128)``,
``h_s (8, S, 128)``, half-width 16 for the local modes. No baselines: the
backends are compared with the reference.
"""

from .common import REFERENCE, _MemorySuite, _TimeSuite, grid, registered_backends

IMPLS = [*registered_backends(), REFERENCE]
ADDITIVE_SIZES = grid(smoke=[256], default=[1024, 16384], full=[1024, 16384, 131072])
ADDITIVE_CASES = ["additive", "additive window(64, 64)"]
LUONG_SIZES = grid(smoke=[128], default=[512, 4096], full=[512, 4096, 16384])
LUONG_CASES = ["luong global dot", "luong local-m general", "luong local-p concat"]


class AdditivePooling(_TimeSuite):
    """Time of ``additive_attention(x, w_in, b_in, w_out, window=...)``."""

    params = (IMPLS, ADDITIVE_SIZES, ADDITIVE_CASES)
    param_names = ("impl", "L", "case")

    def time_additive_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


class AdditivePoolingMemory(_MemorySuite):
    """Peak memory of ``additive_attention`` (see ``common._MemorySuite``)."""

    params = (IMPLS, ADDITIVE_SIZES, ADDITIVE_CASES)
    param_names = ("impl", "L", "case")

    def peakmem_additive_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


class LuongPooling(_TimeSuite):
    """Time of ``luong_attention(h_t, h_s, score=..., mode=...)``."""

    params = (IMPLS, LUONG_SIZES, LUONG_CASES)
    param_names = ("impl", "S", "case")

    def time_luong_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()


class LuongPoolingMemory(_MemorySuite):
    """Peak memory of ``luong_attention`` (see ``common._MemorySuite``)."""

    params = (IMPLS, LUONG_SIZES, LUONG_CASES)
    param_names = ("impl", "S", "case")

    def peakmem_luong_attention(self, impl: str, size: int, case: str) -> None:
        self.prepared.run()
