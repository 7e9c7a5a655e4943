"""What makes a dataset the same dataset: its identity, which is part of every cell's key.

A result is determined by its config, its seed and the images it saw. ``data.root`` only says where the images
are (moving them changes nothing), so the cell key holds the data's identity instead:

- an .npz file (the bundled set too): the SHA-256 of the file's bytes. Moving or renaming the file keeps it;
  another file, or one changed byte, is another identity.
- a folder of images (ImageNet's ``train/`` and ``val/``): the SHA-256 of the sorted list of its files with each
  file's size and modification time (whole seconds, which ``cp -a`` and ``rsync -t`` keep on any file system).
  Reading 1.3 million images to hash their bytes would take hours; a file that is added, removed, renamed,
  resized or rewritten changes the list.
- a torchvision dataset (CIFAR-10/100): its name and splits; torchvision checks its files' MD5 sums itself.

Digests are cached in ``$ABLATION_CACHE_DIR`` (default ``~/.cache/cbam-ablation``), so a large folder is listed
once: a file's entry is reused while its size, mtime and inode are unchanged; a folder's while none of its
directories' mtimes changed (adding, removing or renaming a file changes its directory's mtime; an image
rewritten in place under the same name does not, so that alone keeps the cached identity). A cache that cannot be
read or written is ignored: it only saves time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_FILE = "data-identity.json"
_CHUNK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get("ABLATION_CACHE_DIR") or Path.home() / ".cache" / "cbam-ablation")


def _read_cache() -> dict[str, Any]:
    try:
        cache = json.loads((cache_dir() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _update_cache(key: str, entry: dict[str, Any]) -> None:
    """Merge one entry into the cache file, atomically (concurrent workers: the last writer wins, no torn file)."""
    with contextlib.suppress(OSError):
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        cache = _read_cache()
        cache[key] = entry
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=CACHE_FILE, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, folder / CACHE_FILE)


def file_stamp(path: Path) -> dict[str, int]:
    """What changes when a file's bytes may have: size, modification time and inode."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def file_identity(path: Path) -> str:
    """``sha256:<16 hex>`` of the file's bytes (cached while size, mtime and inode are unchanged)."""
    path = Path(path).resolve()
    key, stamp = f"file:{path}", file_stamp(path)
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and cached.get("stamp") == stamp and "identity" in cached:
        return cached["identity"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    identity = f"sha256:{digest.hexdigest()[:16]}"
    _update_cache(key, {"stamp": stamp, "identity": identity})
    return identity


def file_is_verified(path: Path, identity: str) -> bool:
    """Whether ``path`` passed its full content check at this identity (so the check need not run again)."""
    cached = _read_cache().get(f"file:{Path(path).resolve()}")
    return isinstance(cached, dict) and cached.get("identity") == identity and cached.get("verified") is True


def mark_verified(path: Path, identity: str) -> None:
    path = Path(path).resolve()
    _update_cache(f"file:{path}", {"stamp": file_stamp(path), "identity": identity, "verified": True})


def folder_identity(
    root: Path, subfolders: tuple[str, ...] = ("train", "val"), say: Callable[[str], None] | None = None
) -> str:
    """``files:<16 hex>`` of the sorted (path, size, mtime) list under ``root/<subfolder>`` for each subfolder."""
    root = Path(root).resolve()
    key = f"folder:{root}:{','.join(subfolders)}"
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and "identity" in cached and _directories_unchanged(root, cached.get("dirs", {})):
        return cached["identity"]
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    say(f"[data] listing every file under {root} to identify it (once; cached in {cache_dir()})")
    began = time.perf_counter()
    digest, dirs, count = hashlib.sha256(), {}, 0
    for sub in subfolders:
        for relative, size, mtime in _walk(root, root / sub, dirs):
            digest.update(f"{relative}\t{size}\t{mtime}\n".encode())
            count += 1
    identity = f"files:{digest.hexdigest()[:16]}"
    say(f"[data] {root}: {count} files, identity {identity} ({time.perf_counter() - began:.1f}s)")
    _update_cache(key, {"identity": identity, "dirs": dirs})
    return identity


def _walk(root: Path, top: Path, dirs: dict[str, int]):
    """(relative path, size, mtime in whole seconds) of every file under ``top``, sorted; records each
    directory's mtime in ``dirs`` for the cache."""
    dirs[str(top.relative_to(root))] = top.stat().st_mtime_ns
    with os.scandir(top) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        if entry.is_dir(follow_symlinks=True):
            yield from _walk(root, Path(entry.path), dirs)
        elif entry.is_file(follow_symlinks=True):
            st = entry.stat(follow_symlinks=True)
            yield str(Path(entry.path).relative_to(root)), st.st_size, int(st.st_mtime)


def _directories_unchanged(root: Path, dirs: dict[str, int]) -> bool:
    if not dirs:
        return False
    try:
        return all((root / relative).stat().st_mtime_ns == mtime for relative, mtime in dirs.items())
    except OSError:
        return False
