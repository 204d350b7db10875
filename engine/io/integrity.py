"""Is an image file complete? Checks run before ITK reads a file.

ITK reads a truncated NIfTI (plain or gzip) as an image whose missing voxels are zero, without a
word, and MetaIO prints its own complaints to the console before failing. A volume with its last
third silently zeroed would be segmented and staged as if it were real, so every NIfTI, NRRD and
MetaImage file is checked here first: the header must be sound, and the voxel data it announces
(dimensions × bytes per voxel) must all be there. Compressed data is decompressed once as a stream
(nothing is kept in memory) so a cut or damaged gzip/zlib stream is found too.

Formats or encodings not covered (ASCII/bzip2 NRRD, multi-file data lists) are left to ITK.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

from engine.errors import ImageError

_CHUNK = 1 << 22
_REEXPORT = "Copy or export the image again; the file on disk is incomplete or damaged."

# bytes per voxel of NRRD "type" and MetaImage "ElementType" names
_NRRD_TYPES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int",
                     "uint64",
                     "uint64_t", "double"), 8),
}
_MET_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def check_image_file(path: Path) -> None:
    """Raise :class:`ImageError` naming ``path`` when its header is broken or its voxel data incomplete."""
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            _check_nifti(path)
        elif name.endswith((".nrrd", ".nhdr")):
            _check_nrrd(path)
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(path)
    except OSError as exc:
        raise ImageError(f"Cannot read '{path}': {exc.strerror or exc}.") from None


def _truncated(path: Path, what: str, expected: int, found: int) -> ImageError:
    return ImageError(f"'{path}' is truncated: its header describes {what} ({expected:,} bytes of voxel "
                      "data) "
                      f"but only {max(found, 0):,} bytes are there. {_REEXPORT}")


def _describe(sizes: list[int], bytes_per_voxel: float) -> str:
    return f"{' × '.join(str(s) for s in sizes)} voxels of {bytes_per_voxel:g} byte(s)"


def _empty(path: Path, sizes: list[int]) -> ImageError:
    return ImageError(f"'{path}' holds no voxels (size {' × '.join(str(s) for s in sizes)}); an image with "
                      "voxels is needed.")


def _stream_length(path: Path, fileobj, decompress, kind: str) -> int:
    """Bytes a compressed stream decompresses to; ImageError when it is cut short or damaged."""
    total = 0
    try:
        total = decompress(fileobj)
    except EOFError:
        raise ImageError(f"'{path}' is truncated: its {kind} voxel data stops early (the file was cut "
                         "short). "
                         f"{_REEXPORT}") from None
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(f"'{path}' is corrupt: its {kind} data is damaged ({exc}). {_REEXPORT}") from None
    return total


def _gzip_length(fileobj) -> int:
    total = 0
    with gzip.GzipFile(fileobj=fileobj, mode="rb") as gz:
        while block := gz.read(_CHUNK):
            total += len(block)
    return total


def _zlib_length(fileobj) -> int:
    d = zlib.decompressobj(47)  # zlib or gzip header, as MetaIO accepts
    total = 0
    while block := fileobj.read(_CHUNK):
        total += len(d.decompress(block))
        if d.eof:
            break
    total += len(d.flush())
    if not d.eof:
        raise EOFError
    return total


# --------------------------------------------------------------------------------------------- NIfTI

def _nifti_header(path: Path, head: bytes) -> tuple[list[int], int, int]:
    """(sizes, bits per voxel, data offset) of a NIfTI-1 or NIfTI-2 header."""
    bad = f"'{path}' is corrupt: its NIfTI header is damaged"
    if len(head) < 348:
        raise ImageError(f"{bad} (only {len(head)} bytes long). {_REEXPORT}")
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            if head[344:347] != b"n+1":
                raise ImageError(f"{bad} (no 'n+1' NIfTI mark). {_REEXPORT}")
            dims = list(struct.unpack(endian + "8h", head[40:56]))
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = struct.unpack(endian + "f", head[108:112])[0]
            break
        if size == 540:
            if len(head) < 540 or head[4:7] != b"n+2":
                raise ImageError(f"{bad} (no 'n+2' NIfTI mark). {_REEXPORT}")
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = list(struct.unpack(endian + "8q", head[16:80]))
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        raise ImageError(f"{bad} (it does not start with a NIfTI header size). {_REEXPORT}")
    if not 1 <= dims[0] <= 7:
        raise ImageError(f"{bad} (number of dimensions {dims[0]} is not 1 to 7). {_REEXPORT}")
    sizes = dims[1:dims[0] + 1]
    if any(s < 0 for s in sizes):
        raise ImageError(f"{bad} (negative size {sizes}). {_REEXPORT}")
    if bitpix <= 0 or bitpix % 8:
        raise ImageError(f"{bad} (bits per voxel {bitpix}). {_REEXPORT}")
    if not math.isfinite(offset) or offset < size:
        offset = size + 4  # what NIfTI readers assume when the offset field is unset
    return sizes, bitpix, int(offset)


def _check_nifti(path: Path) -> None:
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if compressed:
            try:
                with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                    head = gz.read(540)
            except (EOFError, zlib.error, gzip.BadGzipFile):
                head = b""
            if len(head) < 348:
                raise ImageError(f"'{path}' is truncated or corrupt: its compressed data ends inside the "
                                 f"NIfTI header. {_REEXPORT}")
        else:
            head = f.read(540)
        sizes, bitpix, offset = _nifti_header(path, head)
        if 0 in sizes:
            raise _empty(path, sizes)
        expected = math.prod(sizes) * bitpix // 8
        if compressed:
            f.seek(0)
            found = _stream_length(path, f, _gzip_length, "gzip") - offset
        else:
            found = path.stat().st_size - offset
    if found < expected:
        raise _truncated(path, _describe(sizes, bitpix / 8), expected, found)


# ---------------------------------------------------------------------------------------------- NRRD

def _text_header(f, stop) -> tuple[list[str], int]:
    """Header lines up to (not including) the first line for which ``stop`` is true; bytes consumed."""
    lines: list[str] = []
    used = 0
    while True:
        raw = f.readline(1 << 16)
        if not raw:
            return lines, used
        used += len(raw)
        line = raw.decode("latin-1").rstrip("\r\n")
        if stop(line):
            lines.append(line)
            return lines, used
        lines.append(line)
        if len(lines) > 10000:
            return lines, used


def _check_nrrd(path: Path) -> None:
    with open(path, "rb") as f:
        if not f.read(7) == b"NRRD000":
            raise ImageError(f"'{path}' is corrupt: it does not start with the NRRD mark, so it is not a "
                             f"valid NRRD file. {_REEXPORT}")
        f.seek(0)
        lines, used = _text_header(f, lambda line: line.strip() == "")
        fields: dict[str, str] = {}
        for line in lines[1:]:
            if line.startswith("#") or ":=" in line or ": " not in line:
                continue
            key, value = line.split(": ", 1)
            fields[key.strip().lower().replace(" ", "")] = value.strip()
        sizes_text = fields.get("sizes", "")
        try:
            sizes = [int(s) for s in sizes_text.split()]
        except ValueError:
            raise ImageError(f"'{path}' is corrupt: its NRRD sizes '{sizes_text}' are not whole "
                             f"numbers. {_REEXPORT}") from None
        per_voxel = _NRRD_TYPES.get(fields.get("type", "").lower())
        if not sizes or per_voxel is None:
            return  # ITK reports what is missing
        if 0 in sizes or any(s < 0 for s in sizes):
            raise _empty(path, sizes)
        encoding = fields.get("encoding", "raw").lower()
        expected = math.prod(sizes) * per_voxel
        datafile = fields.get("datafile")
        if int(fields.get("lineskip", "0") or 0) or (datafile and (datafile.startswith("LIST")
                                                                    or " " in datafile)):
            return
        skip = int(fields.get("byteskip", "0") or 0)
        if datafile:
            data_path = (path.parent / datafile)
            if not data_path.is_file():
                raise ImageError(f"'{path}' names a data file '{datafile}' that is missing; keep the .nhdr "
                                 "and "
                                 "its data file together.")
            _check_data(data_path, encoding, expected, max(skip, 0), sizes, per_voxel)
        else:
            _check_data(path, encoding, expected, used, sizes, per_voxel)


def _check_data(path: Path, encoding: str, expected: int, start: int, sizes: list[int],
                per_voxel: int) -> None:
    if encoding == "raw":
        found = path.stat().st_size - start
    elif encoding in ("gzip", "gz"):
        with open(path, "rb") as f:
            f.seek(start)
            found = _stream_length(path, f, _gzip_length, "gzip")
    else:
        return
    if found < expected:
        raise _truncated(path, _describe(sizes, per_voxel), expected, found)


# ----------------------------------------------------------------------------------------- MetaImage

def _check_metaimage(path: Path) -> None:
    with open(path, "rb") as f:
        lines, used = _text_header(f, lambda line: line.strip().startswith("ElementDataFile"))
        fields: dict[str, str] = {}
        for line in lines:
            if "=" in line:
                key, value = line.split("=", 1)
                fields[key.strip()] = value.strip()
        if "ElementDataFile" not in fields:
            raise ImageError(f"'{path}' is corrupt: its MetaImage header has no ElementDataFile line. "
                             f"{_REEXPORT}")
        try:
            sizes = [int(s) for s in fields.get("DimSize", "").split()]
            channels = int(fields.get("ElementNumberOfChannels", "1"))
            header_size = int(fields.get("HeaderSize", "0"))
        except ValueError:
            raise ImageError(f"'{path}' is corrupt: its MetaImage DimSize is not a list of whole numbers. "
                             f"{_REEXPORT}") from None
        per_voxel = _MET_TYPES.get(fields.get("ElementType", ""))
        if not sizes or per_voxel is None:
            return
        if 0 in sizes or any(s < 0 for s in sizes):
            raise _empty(path, sizes)
        expected = math.prod(sizes) * per_voxel * max(channels, 1)
        compressed = fields.get("CompressedData", "False").lower() == "true"
        datafile = fields["ElementDataFile"]
        if datafile.upper() == "LOCAL":
            data_path, start = path, used
        elif datafile.startswith("LIST") or " " in datafile or "%" in datafile:
            return
        else:
            data_path, start = path.parent / datafile, max(header_size, 0)
            if not data_path.is_file():
                raise ImageError(f"'{path}' names a data file '{datafile}' that is missing; keep the .mhd "
                                 "and "
                                 "its data file together.")
    if compressed:
        with open(data_path, "rb") as g:
            g.seek(start)
            found = _stream_length(data_path, g, _zlib_length, "compressed")
    else:
        found = data_path.stat().st_size - start
    if found < expected:
        raise _truncated(data_path, _describe(sizes, per_voxel * max(channels, 1)), expected, found)

