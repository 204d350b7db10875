"""Safe extraction of bundle zips.

A zip comes from outside (a colleague, a website), so extraction trusts nothing: member paths that
are absolute or climb out with ``..`` (zip-slip), symlinks, encrypted members and archives that
unpack to more than :data:`MAX_UNPACKED_BYTES` are refused, and the byte limit is enforced on what is
actually written, not on the sizes the archive claims. Export and import are in
:mod:`engine.registry.transfer`.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

from engine.errors import BundleError
from engine.registry.manifest import MANIFEST_NAME

#: Unpacked size limit: far above any model of these tasks, far below filling a disk.
MAX_UNPACKED_BYTES = 2 * 1024**3
#: A bundle has a handful of files; thousands means this is not a bundle (or a zip bomb of tiny files).
MAX_MEMBERS = 1000
#: Archive litter from macOS Finder / Windows Explorer that does not count as bundle content.
_IGNORED = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_COPY_CHUNK = 1 << 20


def _member_parts(info: zipfile.ZipInfo, zip_path: Path) -> tuple[str, ...]:
    """Validated relative path parts of a member; raises on zip-slip, links and special files."""
    raw = info.filename
    name = raw.replace("\\", "/")
    bad = BundleError(f"Zip {zip_path} has an unsafe member {raw!r} (absolute path or '..' escaping the "
                      "folder); it is refused. Only import bundles from sources you trust, exported with "
                      "export_bundle.")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise bad
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if any(p == ".." for p in parts):
        raise bad
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix attributes are present
        if stat.S_ISLNK(mode):
            raise BundleError(f"Zip {zip_path} contains a symbolic link {raw!r}; bundles never need links, "
                              "so it is refused.")
        # Zip writers often store permission bits only (no file type): that is a regular file.
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise BundleError(f"Zip {zip_path} contains a special file {raw!r}; it is refused.")
    if info.flag_bits & 0x1:
        raise BundleError(f"Zip {zip_path} member {raw!r} is encrypted; "
                          "export the bundle without a password.")
    return parts


def safe_extract(zip_path: str | os.PathLike, dest: str | os.PathLike,
                 max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Extract ``zip_path`` into the existing folder ``dest``, refusing anything unsafe (see module doc)."""
    zpath, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zpath)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{zpath} is not a readable zip archive ({exc}); "
                          "download or export it again.") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BundleError(f"Zip {zpath} has {len(infos)} members, more than a model bundle ever holds "
                              f"({MAX_MEMBERS}); it is refused.")
        planned: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        seen: set[str] = set()
        claimed = 0
        for info in infos:
            parts = _member_parts(info, zpath)
            if not parts:
                continue
            key = "/".join(parts).lower()  # case-insensitive file systems would merge these
            if key in seen and not info.is_dir():
                raise BundleError(f"Zip {zpath} holds {info.filename!r} twice; it is refused.")
            seen.add(key)
            claimed += info.file_size
            planned.append((info, parts))
        if claimed > max_bytes:
            raise BundleError(f"Zip {zpath} would unpack to {claimed / 1e9:.2f} GB, over the "
                              f"{max_bytes / 1e9:.2f} GB limit for a model bundle; it is refused.")
        root = dest.resolve()
        written = 0
        for info, parts in planned:
            target = dest.joinpath(*parts)
            # Belt and braces against zip-slip: the resolved path must stay under dest.
            if not target.resolve().is_relative_to(root):
                raise BundleError(f"Zip {zpath} member {info.filename!r} escapes the extraction folder; "
                                  "it is refused.")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "xb") as dst:
                    while chunk := src.read(_COPY_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:  # sizes in the header can lie; count real bytes
                            raise BundleError(f"Zip {zpath} unpacks to more than {max_bytes / 1e9:.2f} GB; "
                                              "it is refused as a possible zip bomb.")
                        dst.write(chunk)
            except FileExistsError as exc:
                raise BundleError(f"Zip {zpath} holds {info.filename!r} twice; it is refused.") from exc
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
                raise BundleError(f"Zip {zpath} is corrupt or truncated ({exc}); download or export it "
                                  "again.") from exc


def find_bundle_root(folder: Path, source: Path | None = None) -> Path:
    """The folder holding model.json: ``folder`` itself, or its single top-level sub-folder."""
    if (folder / MANIFEST_NAME).is_file():
        return folder
    entries = [e for e in folder.iterdir() if e.name not in _IGNORED]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST_NAME).is_file():
        return entries[0]
    raise BundleError(f"{source or folder} holds no {MANIFEST_NAME}, neither at the top level nor inside a "
                      "single top folder, so it is not a model bundle (or it is incomplete).")


def extract_bundle_zip(zip_path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Safely extract a bundle zip into ``dest`` and return the folder holding model.json."""
    safe_extract(zip_path, dest)
    return find_bundle_root(Path(dest), Path(zip_path))
