"""The open-world corpus builder (scripts/build_corpus.py) on a few real files of one Debian
package (sonic-pi-samples, CC0, 22 MB, fetched with apt-get download), and the committed
caption tables it reads."""

import csv
import hashlib
import json
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from conftest import ROOT, open_connection

BUILDER = ROOT / "scripts" / "build_corpus.py"
TABLES = ROOT / "data" / "corpus"
CACHE = ROOT / ".cache" / "corpus"


def build(out, *extra):
    return subprocess.run(
        [sys.executable, str(BUILDER), "--sources", "sonic-pi-samples", "--max-files", "8",
         "--max-seconds", "3", "--cache", str(CACHE), "--out", str(out), *extra],
        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    r = build(out)
    if r.returncode != 0 and "apt-get" in r.stderr and not (CACHE / "debs").is_dir():
        pytest.skip(f"apt-get download sonic-pi-samples failed (no Debian archive?): {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    return out


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_corpus_has_the_dataset_layout_and_real_audio(corpus):
    labels = rows(corpus / "labels.csv")
    captions = {r["file_name"]: r for r in rows(corpus / "captions.csv")}
    attribution = {r["file_name"]: r for r in rows(corpus / "attribution.csv")}
    assert len(labels) >= 8  # long samples become several pieces
    conn = open_connection()
    for row in labels:
        name = row["file_name"]
        assert set(captions) >= {name} and set(attribution) >= {name}
        texts = [v for k, v in captions[name].items() if k.startswith("caption_") and v]
        assert len(texts) >= 5
        assert attribution[name]["package"] == "sonic-pi-samples"
        assert attribution[name]["licence"].startswith("CC0")
        assert len(attribution[name]["source_sha256"]) == 64
        assert attribution[name]["version"]
        with wave.open(str(corpus / "audio" / name)) as w:
            assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 32000, 2)
            assert w.getnframes() <= 3 * 32000
        info = json.loads(conn.execute("SELECT audio_info(?)", (str(corpus / "audio" / name),)).fetchone()[0])
        assert info["sample_rate"] == 32000 and info["duration_seconds"] > 0.2
        assert row["kind"] in ("event", "background")


def test_pieces_of_one_file_are_one_recording(corpus):
    labels = rows(corpus / "labels.csv")
    pieces = [r for r in labels if "-p" in r["file_name"].rsplit(".", 1)[0][-4:]]
    assert pieces, "a sample longer than --max-seconds should have been cut into pieces"
    for r in pieces:
        base = r["file_name"].rsplit("-p", 1)[0]
        siblings = {x["recording"] for x in labels if x["file_name"].startswith(base + "-p")}
        assert siblings == {r["recording"]}


def test_the_manifest_records_every_file_and_the_package(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    for name, digest in manifest["audio"].items():
        assert hashlib.sha256((corpus / "audio" / name).read_bytes()).hexdigest() == digest
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((corpus / name).read_bytes()).hexdigest() == digest
    source = manifest["sources"]["sonic-pi-samples"]
    deb = next((CACHE / "debs").glob("sonic-pi-samples_*.deb"))
    assert source["deb_sha256"] == hashlib.sha256(deb.read_bytes()).hexdigest()
    assert manifest["clips"] == len(manifest["audio"])


def test_a_second_build_is_identical(corpus, tmp_path):
    r = build(tmp_path / "again")
    assert r.returncode == 0, r.stderr
    first = json.loads((corpus / "manifest.json").read_text())
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert first["audio"] == second["audio"] and first["files"] == second["files"]


def test_the_demo_packages_never_train():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_corpus
    finally:
        sys.path.pop(0)
    sources = {r["source"] for r in rows(TABLES / "sources.csv")}
    assert not sources & build_corpus.UNSEEN_PACKAGES
    with pytest.raises(SystemExit, match="unseen"):
        build_corpus.fetch_deb("scratch", CACHE)


def test_the_caption_tables_are_complete_and_apart_from_validation():
    """Every rule names a defined concept, every concept has five captions or more, no
    validation phrasing is a training caption, and each ESC-50 class has twenty phrasings."""
    def norm(text):  # case and punctuation aside, as a search box sees it
        return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())

    concepts = {}
    for path in TABLES.glob("concepts*.csv"):
        for r in rows(path):
            caps = [norm(v) for k, v in r.items() if k and k.startswith("caption_") and v and v.strip()]
            concepts.setdefault(r["concept"], set()).update(caps)
    assert len(concepts) >= 150
    assert min(len(c) for c in concepts.values()) >= 5
    for path in (TABLES / "rules").glob("*.csv"):
        for r in rows(path):
            assert r["concept"] == "-" or r["concept"] in concepts, (path.name, r["concept"])
    training = set().union(*concepts.values())
    phrasings = rows(ROOT / "data" / "esc50-training-phrasings.csv")
    training |= {norm(r["caption"]) for r in phrasings}
    held_out = [norm(r["query"]) for p in TABLES.glob("validation-*.csv") for r in rows(p)]
    held_out += [norm(r["query"]) for r in rows(ROOT / "data" / "esc50-validation-queries.csv")]
    assert not training & set(held_out)
    per_class = {}
    for r in phrasings:
        per_class[r["class"]] = per_class.get(r["class"], 0) + 1
    assert len(per_class) == 50 and min(per_class.values()) >= 20


def test_an_openttd_sound_set_is_read_inside_its_cat_file(tmp_path):
    """OpenSFX keeps its 73 sounds inside one opensfx.cat (a table of entries, each a
    description then a RIFF WAV). The builder reads the members the rules name, credits each
    clip with its entry's own description, and makes sounds edited from one original one
    recording (so they stay on one side of every split)."""
    out = tmp_path / "opensfx"
    r = subprocess.run(
        [sys.executable, str(BUILDER), "--sources", "openttd-opensfx", "--max-seconds", "3",
         "--cache", str(CACHE), "--out", str(out)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "apt-get" in r.stderr and not (CACHE / "debs").is_dir():
        pytest.skip(f"apt-get download openttd-opensfx failed (no Debian archive?): {r.stderr[-300:]}")
    assert r.returncode == 0, r.stderr
    labels = {x["file_name"]: x for x in rows(out / "labels.csv")}
    attribution = {x["file_name"]: x for x in rows(out / "attribution.csv")}
    rules = rows(TABLES / "rules" / "openttd-opensfx.csv")
    assert len({x["source_file"] for x in attribution.values()}) == len(rules)
    ship = [n for n, a in attribution.items() if a["source_file"].endswith("!06 Ship horn.wav")]
    assert len(ship) == 1 and labels[ship[0]]["concept"] == "ship_horn"
    credit = attribution[ship[0]]["author"]
    assert "Leon Milo" in credit and "ship2_bergen.aif" in credit
    with wave.open(str(out / "audio" / ship[0])) as w:
        assert (w.getnchannels(), w.getframerate()) == (1, 32000) and w.getnframes() > 32000
    # "Steam train station departure" and "Steam engine going in tunnel" are both cut from
    # eliasheuninck's "steam train horn 01.wav".
    steam = {labels[n]["recording"] for n, a in attribution.items() if a["source_file"].split("!")[1][:2] in ("04", "05")}
    assert steam == {"openttd-opensfx:original:steam train horn 01.wav"}
