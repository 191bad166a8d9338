"""One-time, atomic unpacking of an image-folder archive into a cache dir."""

import os
import shutil
import tarfile
import tempfile


def unpack_once(archive: str, dest: str) -> str:
  """Unpacks the tar `archive` to `dest` unless `dest` already exists.

  Unpacks into a temporary sibling directory and renames it into place, so a
  crashed or concurrent unpack never leaves a half-filled `dest`. If the
  archive holds a single top-level directory, its content becomes `dest`.
  Returns `dest`.
  """
  if os.path.isdir(dest):
    return dest
  if not os.path.isfile(archive):
    raise FileNotFoundError(f'Archive {archive!r} does not exist.')
  parent = os.path.dirname(os.path.abspath(dest))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix='.unpack-', dir=parent)
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(tmp, filter='data')
    entries = os.listdir(tmp)
    root = tmp
    if len(entries) == 1 and os.path.isdir(os.path.join(tmp, entries[0])):
      root = os.path.join(tmp, entries[0])
    try:
      os.rename(root, dest)
    except OSError:
      if not os.path.isdir(dest):  # Lost no race: a real failure.
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dest
