#!/usr/bin/env python3
"""How bundles rank the demo's unseen sounds: 35 queries over `.cache/demo-sounds/everyday`
(scripts/demo.sh builds it from Debian packages no model here trains on), each with the file-name
fragments that make a hit right. Prints top-1 and top-3 hits per bundle, split into queries of
ESC-50's kinds and queries beyond them.

    .venv/bin/python bench/demo_unseen.py [--folder DIR] NAME=BUNDLE [NAME=BUNDLE ...]

The previous default, for comparison: its head is in git (models/default/run at 639dc14);
`dist/audiotext-train export --run DIR --out OUT --checkpoint last --text-bundle models/default`
assembles it, then copy text.onnx and tokenizer.json beside it.
"""

import argparse
import sqlite3
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# query -> fragments of the file names that answer it
ESC50_KINDS = {
    "a dog barking": ["Dog"], "a rooster crowing": ["Rooster"], "a cat meowing": ["Meow", "Kitten"],
    "birds singing": ["bird", "Bird"], "rain falling": ["rain"], "thunder": ["thunder"],
    "a clock ticking": ["clock", "timer"], "glass breaking": ["glass"], "a fire crackling": ["fire"],
    "someone typing on a keyboard": ["Typing"], "people laughing": ["Laugh"], "a baby crying": ["Baby"],
    "crickets chirping": ["Crickets"], "someone coughing": ["Cough"], "someone sneezing": ["Sneeze"],
    "a door creaking": ["DoorCreak"], "water running from a tap": ["WaterRunning", "stream"],
    "a horse neighing": ["Horse"], "a duck quacking": ["Duck"], "an owl hooting": ["Owl"],
}
BEYOND = {
    "a crowd of people chatting at a party": ["Party"], "a woman singing": ["Singer", "Join-us"],
    "someone strumming a guitar": ["Guitar"], "a trumpet playing a tune": ["Trumpet"],
    "a drummer playing a beat on a drum kit": ["DrumSet"], "a gong being struck": ["Gong"],
    "a motorcycle driving past": ["Motorcycle"], "a car passing by on the road": ["CarPassing"],
    "footsteps on gravel": ["gravel"], "footsteps on a wooden floor": ["wood.ogg", "Footsteps"],
    "a woman screaming": ["Scream"], "an explosion": ["explosion"], "chopping wood with an axe": ["chopping"],
    "a sewing machine running": ["Sewing"], "water bubbling": ["Bubbles"],
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", nargs="+", metavar="NAME=BUNDLE")
    p.add_argument("--folder", default=str(ROOT / ".cache" / "demo-sounds" / "everyday"))
    args = p.parse_args()
    conn = sqlite3.connect(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(str(ROOT / "dist" / "audiotext0"))
    print("| bundle | clips | top-1, all 35 | top-3 | ESC-50 kinds, top-1 | beyond ESC-50, top-1 |")
    print("|---|---|---|---|---|---|")
    for spec in args.bundles:
        name, path = spec.split("=", 1)
        conn.execute("INSERT OR REPLACE INTO temp.audiotext_models(name, path) VALUES (?, ?)", (name, path))
        rows = conn.execute("SELECT path, embedding FROM audio_embed_files(?, ?) WHERE error IS NULL",
                            (args.folder, name)).fetchall()
        names = [Path(r[0]).name for r in rows]
        clips = np.array([np.frombuffer(r[1], "<f4") for r in rows])
        counts = {}
        for group, queries in (("esc50", ESC50_KINDS), ("beyond", BEYOND)):
            for query, right in queries.items():
                text = np.frombuffer(conn.execute("SELECT text_embed(?, ?)", (name, query)).fetchone()[0], "<f4")
                order = np.argsort(-(clips @ text))
                hits = [any(f in names[j] for f in right) for j in order[:3]]
                c = counts.setdefault(group, [0, 0, 0])
                c[0] += hits[0]
                c[1] += any(hits)
                c[2] += 1
        e, b = counts["esc50"], counts["beyond"]
        print(f"| {name} | {len(rows)} | {e[0] + b[0]}/{e[2] + b[2]} | {e[1] + b[1]}/{e[2] + b[2]} | "
              f"{e[0]}/{e[2]} | {b[0]}/{b[2]} |")


if __name__ == "__main__":
    main()
