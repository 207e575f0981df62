#!/usr/bin/env python3
"""Builds the open-world training corpus: real recorded sounds from Debian packages and
../shared/data/minetest-mod-sounds, captioned from the committed concept tables.

    scripts/build_corpus.py [--out .cache/corpus/open-world] [--sources a,b] [--train-set DIR]

Reads (all committed under data/corpus/):
  sources.csv               each source: `deb` (fetched with `apt-get download`, never
                            committed) or `shared` (a folder of ../shared/data), its licence
  rules/<source>.csv        `pattern,concept`: fnmatch globs over the path inside the package
                            (`a/b.zip!inner/path` for a member of a zip), first match wins,
                            concept `-` skips
  concepts*.csv             `concept,kind,esc50_class,caption_1..caption_8`; rows of one
                            concept in several files are merged
  credits-<source>.csv      optional `pattern,author,licence,source_url` per file
Writes one dataset folder (the trainer's generic layout):
  audio/*.wav               mono 16-bit at 32 kHz; a file longer than --max-seconds becomes up
                            to --max-pieces pieces spread over it (one recording: one group)
  captions.csv              file_name,caption_1..caption_N (the concept's captions)
  labels.csv                file_name,class,recording,source,concept,kind (class is the ESC-50
                            class when the concept is one, so evaluation counts it as relevant)
  attribution.csv           file_name,source,package,version,source_file,author,licence,source_url,source_sha256
  manifest.json             packages (version, .deb sha256), counts, sha256 of every file written
--train-set DIR adds the folder the default trains on: ESC-50 (esc50-16k, linked, never copied,
its five captions plus data/esc50-training-phrasings.csv) and the corpus, linked.

Everything is deterministic: the same packages give the same files, byte for byte.
"""

import argparse
import csv
import fnmatch
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import wave
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "corpus"
SHARED = ROOT.parent / "shared" / "data"
SAMPLE_RATE_HZ = 32000
AUDIO_EXTENSIONS = (".wav", ".ogg", ".flac", ".mp3", ".opus")
# The demo's unseen material: never training data.
UNSEEN_PACKAGES = {"scratch", "tuxpaint-plugins-default", "gnome-shell-pomodoro-data", "minetest-data"}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_concepts():
    concepts = {}
    for path in sorted(DATA.glob("concepts*.csv")):
        for row in read_csv(path):
            name = row["concept"].strip()
            captions = [row[k].strip() for k in sorted(row) if k and k.startswith("caption_") and row[k] and row[k].strip()]
            entry = concepts.setdefault(name, {"kind": row["kind"].strip(), "esc50_class": row["esc50_class"].strip(), "captions": []})
            if entry["kind"] != row["kind"].strip() or entry["esc50_class"] != row["esc50_class"].strip():
                sys.exit(f"error: concept {name} is {entry['kind']}/{entry['esc50_class'] or '-'} in one concepts file"
                         f" and {row['kind'].strip()}/{row['esc50_class'].strip() or '-'} in {path.name}: make them agree")
            for c in captions:
                if c not in entry["captions"]:
                    entry["captions"].append(c)
    short = [n for n, c in concepts.items() if len(c["captions"]) < 5]
    if short:
        sys.exit(f"error: concepts with fewer than five captions: {', '.join(sorted(short))}")
    return concepts


def fetch_deb(package, cache):
    """The package's .deb (apt-get download), unpacked once; (root, version, sha256)."""
    if package in UNSEEN_PACKAGES:
        sys.exit(f"error: {package} is the demo's unseen set and must not train a model")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        print(f"fetching {package} (apt-get download)", flush=True)
        subprocess.run(["apt-get", "download", "-q", package], cwd=debs, check=True, stdout=subprocess.DEVNULL)
        found = sorted(debs.glob(f"{package}_*.deb"))
    deb = found[-1]
    version = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True).stdout.strip()
    root = cache / "pkgs" / package
    stamp = root / ".unpacked"
    if not stamp.is_file() or stamp.read_text() != deb.name:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        stamp.write_text(deb.name)
    return root, version, sha256_file(deb)


def candidates(root, rules):
    """(path inside the source, reader) for every audio file and every audio member of the
    archives the rules name (zip, or OpenTTD's .cat sound sets), in sorted order."""
    archives = sorted({r["pattern"].split("!", 1)[0] for r in rules if "!" in r["pattern"]})
    out = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file() and not p.is_symlink():
                out.append((p.relative_to(root).as_posix(), ("file", p)))
    for a in archives:
        archive = root / a
        if not archive.is_file():
            continue
        if archive.suffix == ".cat":
            for index, (offset, size, description) in enumerate(cat_entries(archive.read_bytes())):
                out.append((f"{a}!{index:02d} {cat_title(description)}.wav", ("cat", archive, offset, size, description)))
            continue
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and Path(info.filename).suffix.lower() in AUDIO_EXTENSIONS:
                    out.append((f"{a}!{info.filename}", ("zip", archive, info.filename)))
    return sorted(out, key=lambda t: t[0])


def cat_entries(data):
    """OpenTTD's sound set (.cat): a table of (offset, size) pairs, each entry a length-prefixed
    description (title, original file, authors, licence) followed by a RIFF WAV."""
    count = (struct.unpack_from("<I", data, 0)[0] & 0x7FFFFFFF) // 8
    entries = []
    for i in range(count):
        offset, size = struct.unpack_from("<II", data, 8 * i)
        offset &= 0x7FFFFFFF
        length = data[offset]
        description = data[offset + 1: offset + 1 + length].rstrip(b"\0").decode("utf-8", "replace")
        entries.append((offset + 1 + length, size, description))
    return entries


def cat_title(description):
    """The quoted title that opens a .cat entry's description, made safe for a path."""
    m = re.match(r'\s*"([^"]*)"', description)
    title = m.group(1) if m else description[:40]
    return "".join(c if c.isalnum() or c in " -" else "_" for c in title).strip()


def cat_original(description):
    """The first original file an OpenTTD sound was edited from: sounds cut from one original
    are one recording."""
    m = re.search(r'Original\s+"([^"]+)"', description, re.IGNORECASE)
    return m.group(1) if m else None


def source_bytes(reader):
    if reader[0] == "file":
        return reader[1].read_bytes()
    if reader[0] == "cat":
        with open(reader[1], "rb") as f:
            f.seek(reader[2])
            return f.read(reader[3])
    with zipfile.ZipFile(reader[1]) as zf:
        return zf.read(reader[2])


def decode(data):
    """Mono 16-bit PCM at SAMPLE_RATE_HZ, by ffmpeg (bytes in, bytes out)."""
    r = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", "pipe:0", "-map", "0:a:0", "-ac", "1", "-ar", str(SAMPLE_RATE_HZ),
         "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"],
        input=data, capture_output=True)
    if r.returncode != 0:
        raise ValueError(r.stderr.decode(errors="replace").strip().splitlines()[-1:] or "ffmpeg failed")
    return r.stdout


def peak(pcm):
    import array
    a = array.array("h")
    a.frombytes(pcm[: len(pcm) // 2 * 2])
    return max((abs(x) for x in a), default=0)


def pieces(n_samples, max_seconds, max_pieces):
    """Sample ranges: the whole file, or up to max_pieces windows of max_seconds spread evenly."""
    length = int(max_seconds * SAMPLE_RATE_HZ)
    if n_samples <= length:
        return [(0, n_samples)]
    count = min(max_pieces, n_samples // length)
    step = (n_samples - length) / max(count - 1, 1)
    return [(int(i * step), int(i * step) + length) for i in range(count)]


def write_wav(path, pcm):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(pcm)


def safe_name(source, inner):
    # The extension stays in the name: a package may hold mace.wav beside mace.ogg.
    stem = inner.replace("!", "/")
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem.replace("/", "_"))
    return f"{source}__{keep}"


def credit_for(credits, inner):
    for c in credits:
        if fnmatch.fnmatchcase(inner, c["pattern"]):
            return c
    return None


def build(args):
    cache = Path(args.cache).resolve()
    out = Path(args.out).resolve()
    concepts = read_concepts()
    sources = read_csv(DATA / "sources.csv")
    if args.sources:
        wanted = set(args.sources.split(","))
        sources = [s for s in sources if s["source"] in wanted]
    if out.exists():
        shutil.rmtree(out)
    (out / "audio").mkdir(parents=True)
    rows, report, packages, failures = [], {}, {}, []
    for s in sources:
        name = s["source"]
        rules_path = DATA / "rules" / f"{name}.csv"
        if not rules_path.is_file():
            print(f"note: no rules for {name}; skipped")
            continue
        rules = read_csv(rules_path)
        for r in rules:
            if r["concept"].strip() != "-" and r["concept"].strip() not in concepts:
                sys.exit(f"error: {rules_path.name}: concept {r['concept']} is not in data/corpus/concepts*.csv")
        if s["type"] == "deb":
            root, version, deb_sha = fetch_deb(name, cache)
            packages[name] = {"version": version, "deb_sha256": deb_sha, "licence": s["licence"]}
        else:
            root = SHARED / name
            if not root.is_dir():
                print(f"note: {root} is missing; {name} skipped")
                continue
            version, deb_sha = "", ""
            packages[name] = {"version": "shared/data", "licence": s["licence"]}
        credits_path = DATA / f"credits-{name}.csv"
        credits = read_csv(credits_path) if credits_path.is_file() else []
        by_concept = {}
        for inner, reader in candidates(root, rules):
            concept = next((r["concept"].strip() for r in rules if fnmatch.fnmatchcase(inner, r["pattern"].strip())), None)
            if concept and concept != "-":
                by_concept.setdefault(concept, []).append((inner, reader))
        # Cap each concept's files per source, choosing by a hash of the path (stable and
        # spread over the source's folders, not the first N in sorted order).
        chosen = []
        for concept, items in sorted(by_concept.items()):
            items.sort(key=lambda t: hashlib.sha256(t[0].encode()).hexdigest())
            chosen += [(concept, inner, reader) for inner, reader in items[: args.max_per_concept]]
        if args.max_files:
            chosen = chosen[: args.max_files]

        def work(item):
            concept, inner, reader = item
            data = source_bytes(reader)
            try:
                pcm = decode(data)
            except ValueError as e:
                return item, hashlib.sha256(data).hexdigest(), None, str(e)
            n = len(pcm) // 2
            if n < int(args.min_seconds * SAMPLE_RATE_HZ) or peak(pcm) < 64:
                return item, hashlib.sha256(data).hexdigest(), None, "too short or silent"
            written = []
            base = safe_name(name, inner)
            spans = pieces(n, args.max_seconds, args.max_pieces)
            for k, (a, b) in enumerate(spans):
                file_name = f"{base}.wav" if len(spans) == 1 else f"{base}-p{k}.wav"
                write_wav(out / "audio" / file_name, pcm[2 * a: 2 * b])
                written.append((file_name, (b - a) / SAMPLE_RATE_HZ))
            return item, hashlib.sha256(data).hexdigest(), written, None

        kept = 0
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for (concept, inner, reader), source_sha, written, error in pool.map(work, chosen):
                if error:
                    failures.append({"source": name, "file": inner, "error": error})
                    continue
                credit = credit_for(credits, inner)
                recording = f"{name}:{inner}"
                if reader[0] == "cat":
                    # The entry credits itself: title, original, authors and their licence.
                    credit = {"author": reader[4], "licence": s["licence"], "source_url": ""}
                    original = cat_original(reader[4])
                    if original:
                        recording = f"{name}:original:{original}"
                if credit and "freesound.org" in credit.get("source_url", ""):
                    # Files cut from one Freesound upload are one recording.
                    parts = [p for p in credit["source_url"].rstrip("/").split("/") if p.isdigit()]
                    if parts:
                        recording = f"freesound:{parts[-1]}"
                c = concepts[concept]
                for file_name, seconds in written:
                    rows.append({
                        "file_name": file_name, "concept": concept, "class": c["esc50_class"] or concept,
                        "kind": c["kind"], "recording": recording, "source": name, "seconds": seconds,
                        "package": name if s["type"] == "deb" else f"../shared/data/{name}", "version": version,
                        "source_file": inner, "author": (credit or {}).get("author", s["copyright"]),
                        "licence": (credit or {}).get("licence", s["licence"]),
                        "source_url": (credit or {}).get("source_url", ""), "source_sha256": source_sha,
                    })
                kept += 1
        report[name] = {"files": kept, "concepts": len(by_concept)}
        print(f"{name}: {kept} files from {len(by_concept)} concepts", flush=True)
    write_dataset(out, rows, concepts, packages, report, failures)


def write_dataset(out, rows, concepts, packages, report, failures):
    rows.sort(key=lambda r: r["file_name"])
    names = [r["file_name"] for r in rows]
    if len(set(names)) != len(names):
        sys.exit(f"error: two source files map to one clip name: {sorted(n for n in names if names.count(n) > 1)[:3]}")
    most = max((len(concepts[r["concept"]]["captions"]) for r in rows), default=5)
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name"] + [f"caption_{i + 1}" for i in range(most)])
        for r in rows:
            w.writerow([r["file_name"]] + concepts[r["concept"]]["captions"])
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name", "class", "recording", "source", "concept", "kind"])
        for r in rows:
            w.writerow([r["file_name"], r["class"], r["recording"], r["source"], r["concept"], r["kind"]])
    columns = ["file_name", "source", "package", "version", "source_file", "author", "licence", "source_url", "source_sha256"]
    with open(out / "attribution.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns])
    write_queries(out, rows)
    by_source = {}
    for r in rows:
        s = by_source.setdefault(r["source"], {"clips": 0, "seconds": 0.0, "concepts": set()})
        s["clips"] += 1
        s["seconds"] += r["seconds"]
        s["concepts"].add(r["concept"])
    manifest = {
        "format": "audiotext-corpus/1",
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "clips": len(rows),
        "hours": round(sum(r["seconds"] for r in rows) / 3600, 3),
        "concepts": len({r["concept"] for r in rows}),
        "sources": {k: {"clips": v["clips"], "hours": round(v["seconds"] / 3600, 3), "concepts": len(v["concepts"]),
                        **packages.get(k, {}), "source_files": report.get(k, {}).get("files", 0)}
                    for k, v in sorted(by_source.items())},
        "undecodable": failures,
        "files": {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()},
        "audio": {r["file_name"]: sha256_file(out / "audio" / r["file_name"]) for r in rows},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"corpus: {len(rows)} clips, {manifest['hours']} h, {manifest['concepts']} concepts in {out}"
          f" ({len(failures)} files refused by ffmpeg or silent)")


def write_queries(out, rows):
    """queries.csv: the held-out phrasings (data/corpus/validation-*.csv) of the concepts
    present, under their clips' class."""
    present = {r["concept"]: r["class"] for r in rows}
    with open(out / "queries.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["class", "query", "concept"])
        for path in sorted(DATA.glob("validation-*.csv")):
            for q in read_csv(path):
                if q["class"].strip() in present:
                    w.writerow([present[q["class"].strip()], q["query"].strip(), q["class"].strip()])


def recaption(out):
    """Rewrites captions.csv of a built corpus from the current concept tables (labels.csv names
    each clip's concept), without decoding anything again."""
    out = Path(out).resolve()
    concepts = read_concepts()
    labels = read_csv(out / "labels.csv")
    rows = [{"file_name": r["file_name"], "concept": r["concept"], "class": r["class"]} for r in labels]
    write_queries(out, rows)
    most = max(len(concepts[r["concept"]]["captions"]) for r in rows)
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name"] + [f"caption_{i + 1}" for i in range(most)])
        for r in rows:
            w.writerow([r["file_name"]] + concepts[r["concept"]]["captions"])
    manifest = json.loads((out / "manifest.json").read_text())
    for source in read_csv(DATA / "sources.csv"):
        if source["source"] in manifest["sources"]:
            manifest["sources"][source["source"]]["licence"] = source["licence"]
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != "manifest.json"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"recaptioned {len(rows)} clips in {out}")


def train_set(corpus, out, esc50, phrasings_file=ROOT / "data" / "esc50-training-phrasings.csv"):
    """ESC-50 and the corpus in one dataset folder, audio linked (never copied)."""
    out = Path(out).resolve()
    corpus = Path(corpus).resolve()
    shutil.rmtree(out, ignore_errors=True)
    (out / "audio").mkdir(parents=True)
    phrasings = {}
    for row in read_csv(phrasings_file) if phrasings_file else []:
        phrasings.setdefault(row["class"].strip(), []).append(row["caption"].strip())
    validation = {r["query"].strip().lower() for r in read_csv(ROOT / "data" / "esc50-validation-queries.csv")}
    leaked = [p for ps in phrasings.values() for p in ps if p.lower() in validation]
    if leaked:
        sys.exit(f"error: training phrasings equal validation queries: {leaked[:5]}")
    captions, labels = [], []
    esc50 = Path(esc50).resolve()
    if esc50.is_dir():
        esc_labels = {r["file_name"]: r for r in read_csv(esc50 / "labels.csv")}
        for row in read_csv(esc50 / "captions.csv"):
            name = row["file_name"]
            cls = esc_labels[name]["class"]
            (out / "audio" / name).symlink_to(esc50 / "audio" / name)
            own = [row[k] for k in sorted(row) if k.startswith("caption_") and row[k]]
            captions.append([name] + own + phrasings.get(cls, []))
            freesound = name.split("-")[1]
            labels.append([name, cls, f"freesound:{freesound}", "esc50", cls, "event"])
    else:
        print(f"note: {esc50} is missing: the training set holds the corpus alone")
    for row in read_csv(corpus / "labels.csv"):
        (out / "audio" / row["file_name"]).symlink_to(corpus / "audio" / row["file_name"])
        labels.append([row["file_name"], row["class"], row["recording"], row["source"], row["concept"], row["kind"]])
    with open(corpus / "captions.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            captions.append([c for c in row if c])
    most = max(len(c) for c in captions) - 1
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name"] + [f"caption_{i + 1}" for i in range(most)])
        w.writerows(captions)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name", "class", "recording", "source", "concept", "kind"])
        w.writerows(labels)
    shutil.copy(corpus / "attribution.csv", out / "attribution-corpus.csv")
    # The corpus concepts' held-out phrasings, less those of ESC-50 classes: ESC-50's own
    # held-out phrasings (data/esc50-validation-queries.csv) measure those, comparably with
    # the ESC-50-only figures.
    esc_classes = {r[1] for r in labels if r[3] == "esc50"}
    with open(out / "queries.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["class", "query", "concept"])
        for q in read_csv(corpus / "queries.csv"):
            if q["class"] not in esc_classes:
                w.writerow([q["class"], q["query"], q["concept"]])
    if esc50.is_dir():
        shutil.copy(esc50 / "attribution.csv", out / "attribution-esc50.csv")
    write_licence(out, corpus, esc50.is_dir())
    print(f"training set: {len(labels)} clips in {out}")


def write_licence(out, corpus, with_esc50):
    """LICENSE.txt of the training set: the most restrictive terms first (ESC-50's CC BY-NC 3.0,
    which a trained model inherits), then every corpus source's licence and the CC BY / CC BY-SA
    authors to credit."""
    manifest = json.loads((corpus / "manifest.json").read_text())
    lines = ["Training data of the sqlite-audiotext default model.", ""]
    if with_esc50:
        lines += ["ESC-50 (../shared/data/esc50-16k): CC BY-NC 3.0, K. J. Piczak,",
                  "ESC: Dataset for Environmental Sound Classification, ACM MM 2015; per-clip authors in",
                  "attribution-esc50.csv. A model trained on it is for non-commercial use only, with attribution.", ""]
    lines += ["Corpus (scripts/build-corpus.sh): real recorded sounds from these sources, per file in",
              "attribution-corpus.csv (package, version, file, author, licence, sha256):"]
    for name, s in manifest["sources"].items():
        lines.append(f"- {name} {s.get('version', '')}: {s['clips']} clips; {s.get('licence', '')}")
    credits = sorted({(r["author"], r["licence"]) for r in read_csv(corpus / "attribution.csv")
                      if r["source"] == "minetest-mod-sounds" and "BY" in r["licence"]})
    if credits:
        lines += ["", "CC BY / CC BY-SA sounds of minetest-mod-sounds, by author:"]
        lines += [f"- {a} ({l})" for a, l in credits]
    (out / "LICENSE.txt").write_text("\n".join(lines) + "\n")


def describe_into(corpus, manifest_path):
    """Records the corpus in a bundle's manifest (training.audio_encoder.corpus): each source's
    package, version, clips, hours, concepts and licence, the CC BY / CC BY-SA authors to
    credit, and the sha256 of the corpus's own manifest, which pins every clip."""
    corpus = Path(corpus).resolve()
    m = json.loads((corpus / "manifest.json").read_text())
    attribution = read_csv(corpus / "attribution.csv")
    credits = sorted({f"{r['author']} ({r['licence']}{', ' + r['source_url'] if r['source_url'] else ''})"
                      for r in attribution if r["source"] == "minetest-mod-sounds" and "BY" in r["licence"]})
    bundle = json.loads(Path(manifest_path).read_text())
    bundle["training"]["audio_encoder"]["corpus"] = {
        "built_by": "scripts/build-corpus.sh (data/corpus/: sources, rules, concepts with their captions)",
        "clips": m["clips"], "hours": m["hours"], "concepts": m["concepts"],
        "corpus_manifest_sha256": sha256_file(corpus / "manifest.json"),
        "sources": {k: {x: v[x] for x in ("version", "clips", "hours", "concepts", "licence", "deb_sha256") if x in v}
                    for k, v in m["sources"].items()},
        "esc50": "../shared/data/esc50-16k (1,892 clips, CC BY-NC 3.0, K. J. Piczak; per-clip authors in its attribution.csv) "
                 "with data/esc50-training-phrasings.csv",
        "credit_cc_by": credits,
        "gpl_packages": sorted(k for k, v in m["sources"].items() if "GPL" in v.get("licence", "")),
    }
    note = ("; its training data also holds sounds of GPL-licensed Debian packages ("
            + ", ".join(bundle["training"]["audio_encoder"]["corpus"]["gpl_packages"])
            + ") and CC BY / CC BY-SA / CC0 sounds, credited in training.audio_encoder.corpus")
    # A bundle exported from one that was described already carries an earlier note (with the
    # packages of its day): replace it rather than add a second.
    earlier = re.compile(r"; its training data also holds sounds of GPL-licensed Debian packages \([^)]*\)"
                         r" and CC BY / CC BY-SA / CC0 sounds, credited in training\.audio_encoder\.corpus")
    bundle["license"] = earlier.sub("", bundle.get("license", "")) + note
    Path(manifest_path).write_text(json.dumps(bundle, indent=2) + "\n")
    print(f"recorded the corpus in {manifest_path}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / ".cache" / "corpus" / "open-world"))
    p.add_argument("--cache", default=str(ROOT / ".cache" / "corpus"), help="downloaded and unpacked packages")
    p.add_argument("--sources", help="comma-separated subset of data/corpus/sources.csv")
    p.add_argument("--max-per-concept", type=int, default=120, help="files kept per concept and source")
    p.add_argument("--max-seconds", type=float, default=10.0)
    p.add_argument("--max-pieces", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=0.25)
    p.add_argument("--max-files", type=int, default=0, help="at most this many files per source (tests)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--train-set", help="also write the default's training folder (ESC-50 + corpus) here")
    p.add_argument("--plain-train-set", help="the same without data/esc50-training-phrasings.csv")
    p.add_argument("--esc50", default=str(SHARED / "esc50-16k"))
    p.add_argument("--recaption", action="store_true", help="rewrite --out's captions from the tables, no decoding")
    p.add_argument("--describe-into", metavar="MANIFEST", help="record --out's corpus in a bundle manifest")
    p.add_argument("--no-build", action="store_true", help="only --train-set, from an existing --out")
    args = p.parse_args()
    if args.describe_into:
        describe_into(args.out, args.describe_into)
        return
    if args.recaption:
        recaption(args.out)
    elif not args.no_build:
        build(args)
    if args.train_set:
        train_set(args.out, args.train_set, args.esc50)
    if args.plain_train_set:
        # ESC-50 with its own five captions only: the old default's training data, for
        # scoring its recipe on the same folds (scripts/compare-open-world.sh esc50).
        train_set(args.out, args.plain_train_set, args.esc50, phrasings_file=None)


if __name__ == "__main__":
    main()
