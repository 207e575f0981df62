"""Tags the wheel for this platform: it holds a compiled library (audiotext0.so) and program
(audiotext-assemble), though no
Python extension module, so any Python 3 on linux x86-64 can use it (py3-none-<platform>).
scripts/build-wheel.sh then retags linux_x86_64 as the manylinux policy auditwheel finds."""

from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel

PACKAGE = Path(__file__).resolve().parent / "sqlite_audiotext"
NEEDED = ["audiotext0.so", "audiotext-assemble", "default_model/manifest.json",
          "default_model/quantization.json", "default_model/run/config.json",
          "default_model/run/head.safetensors"]


class WithCompiledLibrary(Distribution):
    """Not pure Python: the package is installed (and built) as platform-specific."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        missing = [name for name in NEEDED if not (PACKAGE / name).exists()]
        if missing:
            raise SystemExit(f"missing {', '.join(missing)}: build the wheel with scripts/build-wheel.sh")
        super().finalize_options()

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(distclass=WithCompiledLibrary, cmdclass={"bdist_wheel": PlatformWheel})
