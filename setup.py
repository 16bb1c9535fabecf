#!/usr/bin/env python
"""sn_det: Switchable Normalization for detectron2.

Install into the project's virtual environment with ``make env`` (it pins every version from
constraints.txt). A manual install into an existing detectron2 environment is
``pip install --no-build-isolation -e .``.
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension


def extensions():
    """sn_det._C: the CPU kernels of SN (sn_det/layers/csrc), parallel over planes with
    at::parallel_for. SN_DET_NATIVE=1 adds -march=native (faster, but the build then only
    runs on CPUs like this one)."""
    flags = ["-O3", "-fopenmp"]
    if os.environ.get("SN_DET_NATIVE") == "1":
        flags.append("-march=native")
    return [
        CppExtension(
            "sn_det._C",
            sorted(glob.glob("sn_det/layers/csrc/*.cpp")),
            extra_compile_args=flags,
            # Links libgomp.so.1 by soname; in-process that resolves to the runtime torch
            # already loaded (torch's bundled copy has the same soname): one thread pool.
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="sn_det",
    version="0.1.0",
    description="Switchable Normalization (Luo et al., ICLR 2019) for detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "configs", "tools", "projects")),
    # The only detectron2 wheel on PyPI that carries the compiled _C (sal-detectron2) is cp310.
    python_requires=">=3.10,<3.11",
    install_requires=[
        "torch==2.3.1",  # sal-detectron2's _C does not load with torch >= 2.5
        "torchvision==0.18.1",
        "sal-detectron2==0.7.2",
        "numpy<2",
        "fvcore>=0.1.5,<0.1.6",  # not declared by sal-detectron2
        "iopath>=0.1.7,<0.1.10",  # not declared by sal-detectron2
        "pycocotools",
        "opencv-python-headless",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={"test": ["pytest"], "export": ["onnx", "onnxruntime"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
