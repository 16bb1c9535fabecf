#!/usr/bin/env python
"""sn_det: Switchable Normalization for detectron2.

detectron2 is a prerequisite, not a requirement listed here: it is built against the user's
torch (see https://detectron2.readthedocs.io/en/latest/tutorials/install.html), and a pip
requirement would install a second copy over it. ``import sn_det`` says so when it is missing.

Install into an environment that has torch and detectron2:
    pip install --no-build-isolation .       # with the compiled CPU kernels
    pip install .                            # isolated build: without them (slower CPU path)
The project's own pinned environment is ``make env`` (constraints.txt).

Environment variables: SN_DET_NO_EXT=1 skips the compiled kernels; SN_DET_NATIVE=1 compiles
them with -march=native (faster, but only for CPUs like the building one).
"""

import glob
import os
import shutil

from setuptools import find_packages, setup


def extensions():
    """sn_det._C, the CPU kernels of SN (sn_det/layers/csrc), when they can be built: torch is
    importable and SN_DET_NO_EXT is not set. A failed compilation (no compiler, say) leaves a
    working pure-Python package."""
    if os.environ.get("SN_DET_NO_EXT") == "1":
        print("sn_det: SN_DET_NO_EXT=1, building without the compiled CPU kernels")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print(
            "sn_det: torch is not importable in this build environment, so the compiled CPU "
            "kernels are not built (use pip install --no-build-isolation to build them)"
        )
        return [], {}
    flags = ["-O3", "-fopenmp"]
    if os.environ.get("SN_DET_NATIVE") == "1":
        flags.append("-march=native")

    class OptionalBuildExtension(BuildExtension):
        """BuildExtension that reports a failed compilation instead of failing the install
        (setuptools' optional=True does not catch the RuntimeError of torch's ninja build)."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # no compiler, missing headers, ...
                print(
                    f"sn_det: the compiled CPU kernels failed to build ({e}); the package "
                    "works without them, on slower torch ops on the CPU"
                )

    ext = CppExtension(
        "sn_det._C",
        sorted(glob.glob("sn_det/layers/csrc/*.cpp")),
        extra_compile_args=flags,
        # Links libgomp.so.1 by soname; in-process that resolves to the runtime torch
        # already loaded (torch's bundled copy has the same soname): one thread pool.
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": OptionalBuildExtension}


def shipped_configs():
    """The yaml recipes under configs/ and projects/*/configs/, shipped in the package as
    sn_det/model_zoo/configs and sn_det/model_zoo/projects (as detectron2 ships its model
    zoo): symlinks to the repository's folders are made there, or copies where symlinks are
    not possible, and every yaml below them becomes package data. The same relative layout
    keeps the projects' ``_BASE_: ../../../configs/...`` valid once installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    zoo = os.path.join(here, "sn_det", "model_zoo")
    files = []
    for name in ("configs", "projects"):
        dest = os.path.join(zoo, name)
        if os.path.islink(dest) or not os.path.exists(dest):
            if os.path.islink(dest):
                os.unlink(dest)
            try:
                os.symlink(os.path.join("..", "..", name), dest)  # relative: the tree may move
            except OSError:
                shutil.copytree(os.path.join(here, name), dest)
        pattern = "**/*" if name == "configs" else "*/configs/**/*"
        for ext in (".yaml", ".py"):  # yacs and LazyConfig configs
            files += glob.glob(os.path.join(dest, pattern + ext), recursive=True)
    return [os.path.relpath(p, zoo) for p in files]


# package name -> folder under projects/ (as in sn_det/projects/__init__.py)
PROJECTS = {"sparse_sn": "SparseSN", "sn_segmentation": "SNSegmentation", "norm_study": "NormStudy"}

ext_modules, cmdclass = extensions()

setup(
    name="sn_det",
    version="0.1.0",
    description="Switchable Normalization (Luo et al., ICLR 2019) for detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "tools", "projects"))
    + [f"sn_det.projects.{name}" for name in PROJECTS],
    # The research projects ship as sn_det.projects.<name> (see sn_det/projects/__init__.py).
    package_dir={
        f"sn_det.projects.{name}": f"projects/{folder}/{name}" for name, folder in PROJECTS.items()
    },
    python_requires=">=3.10",
    # Lower bounds only: sn_det runs in the user's own detectron2 environment. The versions
    # the project tests against are pinned in constraints.txt.
    install_requires=[
        "torch>=2.3",
        "numpy",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.2",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        "test": ["pytest"],
        "export": ["onnx", "onnxruntime"],
        "gpu": ["triton>=2.3"],
    },
    package_data={"sn_det.model_zoo": shipped_configs()},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
