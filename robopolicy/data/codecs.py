"""Compression and chunking per kind of key, chosen by measurement (scripts/bench_image_codecs.py).

Images: one frame per chunk (random access reads exactly the frames a sample needs) compressed with
Blosc/zstd level 1. Measured on 240x320 MuJoCo renders (docs/results.md): x8.5 smaller than raw at the
same write speed as no compression (~200-250 frames/s single-threaded), while zstd >= 3 or bitshuffle
halve the write speed for little gain, and lz4 compresses half as well. Sensor noise makes every
lossless codec collapse to ~x1.3, so the choice matters most for sim data.
Low-dim arrays: large time chunks, zstd with byte shuffle.
"""

from __future__ import annotations

from zarr.codecs import BloscCodec

from robopolicy.data.schema import FieldSpec, key_kind

LOWDIM_CHUNK_ROWS = 4096
POINTCLOUD_CHUNK_ROWS = 64  # 64 x 512 x 6 float32 = 786 kB chunks (4096 rows would be 50 MB)


def compressors_for(key: str) -> list:
    kind = key_kind(key)
    if kind in ("image", "depth"):
        return [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle" if kind == "image" else "shuffle")]
    return [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")]


def chunks_for(key: str, spec: FieldSpec) -> tuple[int, ...]:
    if key_kind(key) in ("image", "depth"):
        return (1, *spec.shape)
    if key_kind(key) == "pointcloud":
        return (POINTCLOUD_CHUNK_ROWS, *spec.shape)
    return (LOWDIM_CHUNK_ROWS, *spec.shape)
