"""Compile sn_det's Triton kernels for a GPU architecture on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, but never runs
Triton's compiler: a kernel that only the GPU compiler refuses (a construct one Triton
version lowers and another does not, a tile that spills registers to local memory) would
pass the CPU suite and fail on the first GPU. This module runs that compiler (Triton's
frontend, its MLIR passes, LLVM's PTX backend and the bundled ptxas) for a chosen ``sm_XY``
with no GPU and no CUDA driver.

Inside :func:`compile_only`:

- Triton sees a fake CUDA driver whose current target is ``("cuda", arch)``; its "device"
  is the arch number itself, so each arch gets its own kernel cache (real device indices
  are small, arch numbers are >= 75, so the caches never mix).
- Every ``kernel[grid](...)`` launch only compiles (``warmup``): the launchers of
  switch_norm_triton can be driven with CPU tensors that are never read or written, and
  Triton's own specialization (dtypes, 16-byte alignment, integers equal to 1 or divisible
  by 16, constexprs) picks the variants exactly as it would on the GPU.
- Each compilation becomes a :class:`CompileRecord`: time, cubin size, the resources
  ptxas reports with ``-v`` (registers, spill stores, stack frame) and the shared memory
  Triton launches the kernel with; or the error in one line. A failed compilation does not
  stop the others.

Triton 3.x compiles to a cubin without a driver, so its own ``compile`` is used (with
``TRITON_DUMP_PTXAS_LOG`` to see ptxas' report). Triton 2.3's ``compile`` ends by building a
launcher stub that links against libcuda; there the backend's stages are run directly, and
its last one (ptxas, called from C++, which drops the report) is run with the same command
from Python. The JIT caches of the arch are dropped when the block ends.
"""

import contextlib
import importlib
import io
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from unittest import mock
from typing import Dict, Iterator, List, Optional, Tuple

import triton

__all__ = ["CompileRecord", "compile_only", "ptxas_usage", "TRITON_MAJOR"]

TRITON_MAJOR = int(triton.__version__.split(".")[0])


@dataclass
class CompileRecord:
    """One specialization of one kernel compiled for ``sm_<arch>``.

    ``key`` names the specialization (constexprs and Triton's argument attributes).
    ``registers``, ``spill_bytes`` (registers spilled to local memory) and ``stack_bytes``
    (the local stack frame: spills, and arrays indexed at run time) are per thread, from
    ptxas' own report; ``shared_bytes`` is the dynamic shared memory a block needs, as Triton
    launches it. ``error`` is one line, or None when the compilation worked.
    """

    kernel: str
    arch: int
    key: str
    seconds: float
    cubin_bytes: int = 0
    registers: Optional[int] = None
    spill_bytes: Optional[int] = None
    stack_bytes: Optional[int] = None
    shared_bytes: Optional[int] = None
    error: Optional[str] = None


_PTXAS_LOG = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_bytes": re.compile(r"(\d+) bytes spill stores"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
}


def ptxas_usage(log: str) -> Dict[str, int]:
    """{"registers", "spill_bytes", "stack_bytes"} from ptxas' ``-v`` log of one kernel (the
    fields it printed; spill bytes are its "spill stores")."""
    usage = {}
    for field, pattern in _PTXAS_LOG.items():
        m = pattern.search(log)
        if m:
            usage[field] = int(m.group(1))
    return usage


class _FakeCudaDriver:
    """The part of Triton's CUDA driver that the JIT asks before compiling (device, stream,
    target); launching, which needs the rest, never happens."""

    def __init__(self, arch: int):
        self.arch = arch

    def get_current_device(self):
        return self.arch

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        if TRITON_MAJOR >= 3:
            from triton.backends.compiler import GPUTarget

            return GPUTarget("cuda", self.arch, 32)
        return ("cuda", self.arch)


class _CacheEntry:
    """Stands in the JIT's cache for a specialization compiled by hand (Triton 2.3) or not
    compiled at all (an error; its record holds why): nothing launches, so no launcher or
    handle is needed, and a repeat of the same launch is not compiled (and reported) again."""


@contextlib.contextmanager
def _stderr_to(path: str) -> Iterator[None]:
    """Send file descriptor 2 to ``path``: MLIR and ptxas print their diagnostics there from
    C++, where Python's sys.stderr cannot catch them."""
    saved = os.dup(2)
    with open(path, "wb") as f:
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _one_line(exc: BaseException, diagnostics: str) -> str:
    """The first line that says what went wrong: an MLIR "error:" diagnostic if there is one
    (the Python exception then only says "PassManager::run failed"), else the exception."""
    for line in diagnostics.splitlines():
        if "error:" in line:
            return line.strip()[:300]
    # Triton's CompilationError prints the kernel's source first; its reason is error_message.
    reason = getattr(exc, "error_message", None) or exc.__cause__ or exc
    text = " ".join(str(reason).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _spec_key(src) -> str:
    """A readable name of the specialization an ASTSource stands for: its constexprs (and
    the integers Triton folded as equal to 1), its pointer types, and the arguments it
    assumes divisible by 16."""
    names = list(src.fn.arg_names)

    def name(k):
        index = k[0] if isinstance(k, tuple) else k
        return names[index] if isinstance(index, int) and index < len(names) else str(k)

    constants = sorted(src.constants.items(), key=lambda kv: str(kv[0]))
    parts = [f"{name(k)}={v}" for k, v in constants]
    pointers = sorted({t for t in src.signature.values() if str(t).startswith("*")})
    parts.append("pointers=" + "/".join(pointers))
    folded = {name(k) for k, _ in constants}
    attrs = src.attrs
    if isinstance(attrs, dict):  # Triton 3.x: {(index,): [["tt.divisibility", 16]], ...}
        div16 = [name(k) for k, v in attrs.items() if ["tt.divisibility", 16] in list(map(list, v))]
    else:  # Triton 2.3: AttrsDescriptor(divisible_by_16={indices}, equal_to_1={indices})
        div16 = [name(k) for k in sorted(attrs.divisible_by_16)]
    parts.append("div16=" + "/".join(n for n in div16 if n not in folded))
    return ", ".join(parts)


def _ptxas_23(ptx: str, capability: int, fp_fusion: bool) -> Tuple[bytes, str]:
    """Triton 2.3's cubin stage (compile_ptx_to_cubin, in C++: it discards ptxas' log) with
    the same ptxas command, keeping the ``-v`` log: (cubin, log)."""
    from triton.common.backend import path_to_ptxas

    ptxas, _ = path_to_ptxas()
    arch = f"sm_{capability}" + ("a" if capability == 90 else "")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "kernel.ptx"), os.path.join(tmp, "kernel.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        line_info = [] if os.environ.get("TRITON_DISABLE_LINE_INFO") else ["-lineinfo"]
        fmad = [] if fp_fusion else ["--fmad=false"]
        proc = subprocess.run(
            [ptxas, *line_info, *fmad, "-v", f"--gpu-name={arch}", src, "-o", out],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed: {proc.stderr.strip()}")
        with open(out, "rb") as f:
            return f.read(), proc.stderr


def _compile_23(src, target, options):
    """Triton 2.3's compile pipeline up to the cubin (its launcher stub needs libcuda):
    (cubin, ptxas log, dynamic shared bytes)."""
    from triton.compiler.backends.cuda import CUDABackend
    from triton.compiler.compiler import get_env_vars

    backend = CUDABackend(target)
    options = backend.parse_options(dict(options or {}, **src.parse_options()))
    metadata = {"target": target, **options.__dict__, **get_env_vars(), **src.metadata()}
    stages: Dict = {}
    backend.add_stages(stages, options)
    del stages["cubin"]
    module = src.make_ir(options)
    for _, stage in stages.items():
        module = stage(module, metadata)
    cubin, log = _ptxas_23(module, backend.capability, options.enable_fp_fusion)
    return cubin, log, metadata["shared"]


@contextlib.contextmanager
def compile_only(arch: int, records: List[CompileRecord]) -> Iterator[None]:
    """Within the block, Triton kernel launches compile for ``sm_<arch>`` and run nothing;
    one :class:`CompileRecord` per new specialization is appended to ``records``."""
    from triton.runtime.jit import JITFunction

    import triton.compiler as compiler_module

    # The module (triton.runtime re-exports its ``driver`` object under the same name).
    driver_module = importlib.import_module("triton.runtime.driver")
    fake = _FakeCudaDriver(arch)
    real_compile = compiler_module.compile
    real_run = JITFunction.run

    def compile_and_record(src, target=None, options=None, **kwargs):
        start = time.perf_counter()
        name = getattr(src.fn, "__name__", None) or src.fn.fn.__name__
        record = CompileRecord(kernel=name, arch=arch, key=_spec_key(src), seconds=0.0)
        with tempfile.NamedTemporaryFile() as diag:
            try:
                with _stderr_to(diag.name):
                    if TRITON_MAJOR >= 3:
                        printed = io.StringIO()  # TRITON_DUMP_PTXAS_LOG prints ptxas' log
                        with contextlib.redirect_stdout(printed):
                            kernel = real_compile(src, target=target, options=options, **kwargs)
                        cubin, log = kernel.asm["cubin"], printed.getvalue()
                        shared = kernel.metadata.shared
                    else:
                        cubin, log, shared = _compile_23(src, target, options)
                        kernel = _CacheEntry()  # cached, never launched
            except Exception as exc:  # noqa: BLE001  (any compiler failure is the finding)
                with open(diag.name, errors="replace") as f:
                    record.error = _one_line(exc, f.read())
                kernel = _CacheEntry()
                cubin, log, shared = b"", "", None
        record.seconds = time.perf_counter() - start
        record.cubin_bytes = len(cubin)
        record.shared_bytes = shared
        for field, value in ptxas_usage(log).items():
            setattr(record, field, value)
        records.append(record)
        return kernel

    launched = set()

    def run_warmup(self, *args, grid, warmup, **kwargs):
        launched.add(self)
        return real_run(self, *args, grid=grid, warmup=True, **kwargs)

    driver = driver_module.driver  # 3.x: a DriverConfig; 2.3: a LazyProxy of the driver
    # Set directly, not through set_active()/reset_active(): resetting would create the real
    # CUDA driver, which needs libcuda.
    driver_slot = "_active" if TRITON_MAJOR >= 3 else "_obj"
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(driver, driver_slot, fake))
            stack.enter_context(mock.patch.object(compiler_module, "compile", compile_and_record))
            stack.enter_context(mock.patch.object(JITFunction, "run", run_warmup))
            # A fresh cache: compile times are real, and no cubin of an earlier run is reused.
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sn_det_aot_"))
            stack.enter_context(
                mock.patch.dict(os.environ, TRITON_CACHE_DIR=cache_dir, TRITON_DUMP_PTXAS_LOG="1")
            )
            yield
    finally:
        for kernel in launched:  # this arch's kernels and binders: a later block starts afresh
            getattr(kernel, "device_caches" if TRITON_MAJOR >= 3 else "cache").pop(arch, None)
