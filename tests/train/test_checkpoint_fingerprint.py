"""A checkpoint's fingerprint: the same files give the same one, any change in a file's bytes
or name gives another; the latest step is read from the file system."""

import hashlib
import os
import shutil

import pytest

from lowprec.train.checkpoint import fingerprint, latest_on_disk


def _write(root, files: dict):
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


FILES = {"state/a.bin": bytes(range(256)) * 5000, "state/b/c.json": b'{"x": 1}', "meta/m.json": b"{}"}


def test_fingerprint_is_the_identity_of_the_files(tmp_path):
    _write(tmp_path / "ck" / "300", FILES)
    _write(tmp_path / "ck" / "300.orbax-checkpoint-tmp-1", {"x": b"partial"})  # an unfinished save
    got = fingerprint(str(tmp_path / "ck"), 300)
    # Independent reference: sha256 over sorted (relative path NUL contents).
    digest = hashlib.sha256()
    for rel in sorted(FILES):
        digest.update(rel.encode() + b"\0" + FILES[rel])
    assert got == digest.hexdigest()[:16]
    shutil.copytree(tmp_path / "ck", tmp_path / "copy")
    assert fingerprint(str(tmp_path / "copy"), 300) == got
    changed = bytearray(FILES["state/a.bin"])
    changed[123456] ^= 1
    _write(tmp_path / "copy" / "300", {"state/a.bin": bytes(changed)})
    assert fingerprint(str(tmp_path / "copy"), 300) != got
    os.rename(tmp_path / "ck" / "300" / "meta" / "m.json", tmp_path / "ck" / "300" / "meta" / "n.json")
    assert fingerprint(str(tmp_path / "ck"), 300) != got
    assert latest_on_disk(str(tmp_path / "ck")) == 300 and latest_on_disk(str(tmp_path / "none")) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 200"):
        fingerprint(str(tmp_path / "ck"), 200)
