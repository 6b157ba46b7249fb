"""Defaults that fit the hardware: the parameter dtype and the number of CPU threads.

dtype ("auto")
    bfloat16 on a CUDA GPU that supports it. On a CPU, bfloat16 only where its matmul is native
    and measured faster than float32: without AVX512-BF16 or AMX (x86) / BF16 (aarch64) torch
    emulates bf16 matmuls, and a 256x576x1536 bf16 matmul ran 48x slower than fp32 on an AVX2-only
    AMD EPYC, while an AMD EPYC with avx512_bf16 runs it ~4.5x faster than fp32. Two checks decide:
    the CPU flags (``/proc/cpuinfo``; where they are unknown the probe alone decides) and a short
    timing probe, one ``F.linear`` of SmolLM2-135M's MLP shape (64 rows x 576 -> 1536) in fp32 and
    bf16 on one thread. The probe also catches a native CPU whose bf16 path is switched off
    (``ONEDNN_MAX_CPU_ISA=AVX2`` makes bf16 several times slower than fp32 on the avx512_bf16
    machine above, although its flags still list avx512_bf16). The probe's result is cached per
    machine in ``<cache>/hardware.json`` (``$GRPONORM_CACHE`` or ``~/.cache/grponorm``), keyed by
    the CPU model, its flags, torch's CPU capability, the torch version, the environment
    variables that change the kernels and the probe shape, so later runs do not re-probe.

    An explicit "float32" or "bfloat16" is always used as given; "bfloat16" on a CPU where the
    probe finds bf16 slower than fp32 emits one warning with the measured slowdown.

threads ("auto" / 0)
    OpenMP threads spin-wait between parallel regions (``OMP_WAIT_POLICY`` unset = active). When
    another process keeps a core busy, a spinning thread and its neighbour fight for that core:
    measured with 2 threads on a shared 2-core AMD EPYC, the 135M model's matmuls ran 10-30x
    slower than with 1 thread (e.g. an 8x576x1536 fp32 linear: 0.2 ms on 1 thread, 7 ms median on
    2), while on an idle pair of cores a second thread gains at most ~2x. The loss is far larger
    than the gain, so "auto" counts only the cores nobody else is using: the cores this process
    may run on (``os.sched_getaffinity`` and a cgroup CPU quota) minus the 1-minute load average
    (the other processes' runnable threads, read before this process starts its own work),
    rounded, at least 1 and at most :data:`MAX_AUTO_THREADS` (the model's matmuls are too small
    to scale much further). With more than one thread, set ``OMP_WAIT_POLICY=PASSIVE`` in the
    environment before torch is imported (OpenMP reads it once, at load): idle threads then sleep
    instead of spinning, which removed the slowdown in the same measurement.

This module imports nothing from grponorm, and torch only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU flags (``/proc/cpuinfo``) of a native bf16 matmul: AVX512-BF16, AMX-BF16, aarch64 BF16."""
PROBE_SHAPE = (64, 576, 1536)
"""(rows, in, out) of the probe's linear: a rollout batch through SmolLM2-135M's MLP."""
BF16_MIN_SPEEDUP = 1.2
""""auto" picks bf16 on a CPU only when the probe finds it at least this much faster than fp32
(bf16 costs precision; a tie is not worth it)."""
MAX_AUTO_THREADS = 8
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
              "ONEDNN_DEFAULT_FPMATH_MODE")
"""Environment variables that change which CPU kernels torch runs (part of the probe's key)."""
CACHE_FILE = "hardware.json"
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$GRPONORM_CACHE`` if set, else ``~/.cache/grponorm``."""
    env = os.environ.get("GRPONORM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grponorm"


# --------------------------------------------------------------------------- the CPU


@dataclass(frozen=True)
class CpuInfo:
    """What decides the CPU's bf16 speed: its model name, flags and torch's CPU capability."""

    model: str
    flags: frozenset[str]
    """Empty when unknown (no ``/proc/cpuinfo``)."""
    capability: str
    """``torch.backends.cpu.get_cpu_capability()``: "AVX2", "AVX512", ..."""

    @property
    def native_bf16(self) -> tuple[str, ...]:
        """The flags of :data:`NATIVE_BF16_FLAGS` this CPU has."""
        return tuple(f for f in NATIVE_BF16_FLAGS if f in self.flags)


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` of the first processor in ``/proc/cpuinfo`` text (x86 "flags",
    aarch64 "Features"); ``("", frozenset())`` for what it cannot read."""
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo` (flags from ``/proc/cpuinfo`` where it exists)."""
    import torch

    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    model, flags = parse_cpuinfo(text)
    return CpuInfo(
        model=model or platform.processor() or platform.machine(),
        flags=flags,
        capability=str(torch.backends.cpu.get_cpu_capability()),
    )


# --------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class Probe:
    """One bf16-vs-fp32 timing: the best time per call of the same linear in each dtype."""

    fp32_ms: float
    bf16_ms: float
    shape: tuple[int, int, int] = PROBE_SHAPE
    threads: int = 1
    cached: bool = False
    """True when read from the cache file rather than measured in this process."""

    @property
    def speedup(self) -> float:
        """How many times faster bf16 ran than fp32 (< 1: bf16 is slower)."""
        return self.fp32_ms / self.bf16_ms

    def gflops(self, ms: float) -> float:
        m, k, n = self.shape
        return 2.0 * m * k * n / (ms * 1e6)

    def describe(self) -> str:
        """E.g. "bf16 matmul 4.7x faster than fp32 (probe, cached)"."""
        s = self.speedup
        how = f"{s:.1f}x faster than" if s >= 1 else f"{1 / s:.1f}x slower than"
        return f"bf16 matmul {how} fp32 (probe{', cached' if self.cached else ''})"


def time_linear(dtype, shape=PROBE_SHAPE, *, reps: int | None = None, budget_ms: float = 2.0,
                seed: int = 0) -> float:
    """Best time per call (ms) of ``F.linear(x, w)`` with x (m, k) and w (n, k) in ``dtype``, on
    the current thread setting. ``reps`` calls per timing (default: as many as fit ~budget_ms,
    at least 1, at most 20); the best of 3 timings."""
    import torch

    m, k, n = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    linear = torch.nn.functional.linear
    with torch.no_grad():
        t0 = time.perf_counter()
        linear(x, w)  # warm-up (and a first estimate of the cost)
        first = (time.perf_counter() - t0) * 1e3
        if reps is None:
            reps = max(1, min(20, int(budget_ms / max(first, 1e-3))))
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                linear(x, w)
            best = min(best, (time.perf_counter() - t0) * 1e3 / reps)
    return best


def measure_probe(shape=PROBE_SHAPE, threads: int = 1) -> Probe:
    """Time the probe linear in fp32 and bf16 on ``threads`` torch threads (restored after).
    Takes a few ms where bf16 is native, ~50 ms where it is emulated."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fp32 = time_linear(torch.float32, shape)
        bf16 = time_linear(torch.bfloat16, shape)
    finally:
        torch.set_num_threads(before)
    return Probe(fp32_ms=fp32, bf16_ms=bf16, shape=tuple(shape), threads=threads)


def probe_key(cpu: CpuInfo, torch_version: str, shape=PROBE_SHAPE,
              env: dict[str, str] | None = None) -> str:
    """The cache key of a probe: a hash of everything that changes its result."""
    env = {k: os.environ.get(k, "") for k in KERNEL_ENV} if env is None else env
    parts = {
        "cpu": cpu.model,
        "flags": sorted(cpu.flags),
        "capability": cpu.capability,
        "torch": torch_version,
        "env": {k: env.get(k, "") for k in KERNEL_ENV},
        "shape": list(shape),
        "format": CACHE_FORMAT,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return {}
    probes = data.get("probes")
    return probes if isinstance(probes, dict) else {}


def _write_cache(path: Path, probes: dict) -> None:
    """Write atomically (temporary file + rename); a failure only costs a later re-probe."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps({"format": CACHE_FORMAT, "probes": probes}, indent=2,
                                      sort_keys=True) + "\n")


_MEMO: dict[tuple[str, str], Probe] = {}


def cached_probe(cpu: CpuInfo | None = None, *, cache_dir: str | Path | None = None,
                 shape=PROBE_SHAPE, measure=None) -> Probe:
    """The probe of this machine: from this process's memo, else ``<cache_dir>/hardware.json``,
    else measured (``measure(shape)``, default :func:`measure_probe`) and written there. One
    process always sees one answer."""
    import torch

    measure = measure or measure_probe

    cpu = cpu or cpu_info()
    key = probe_key(cpu, torch.__version__, shape)
    path = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = path / CACHE_FILE
    memo = (str(path), key)
    if memo in _MEMO:
        return _MEMO[memo]
    probes = _read_cache(path)
    entry = probes.get(key)
    probe = None
    if isinstance(entry, dict):
        with contextlib.suppress(KeyError, TypeError, ValueError, ZeroDivisionError):
            probe = Probe(fp32_ms=float(entry["fp32_ms"]), bf16_ms=float(entry["bf16_ms"]),
                          shape=tuple(entry["shape"]), threads=int(entry["threads"]), cached=True)
            if not (probe.fp32_ms > 0 and probe.bf16_ms > 0):
                probe = None
    if probe is None:
        probe = measure(shape)
        probes = _read_cache(path)  # another process may have added entries meanwhile
        probes[key] = {
            "fp32_ms": probe.fp32_ms,
            "bf16_ms": probe.bf16_ms,
            "speedup": round(probe.speedup, 3),
            "shape": list(probe.shape),
            "threads": probe.threads,
            "cpu": cpu.model,
            "capability": cpu.capability,
            "native_bf16_flags": list(cpu.native_bf16),
            "torch": torch.__version__,
            "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_cache(path, probes)
    _MEMO[memo] = probe
    return probe


# --------------------------------------------------------------------------- the dtype


@dataclass(frozen=True)
class DtypeDecision:
    """What :func:`decide_dtype` chose, why, and a warning to show (or None)."""

    dtype: str
    reason: str
    warning: str | None = None


def _device_type(device) -> str:
    if device is None or str(device) == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return getattr(device, "type", None) or str(device).split(":")[0]


def _check_requested(requested: str) -> None:
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {requested!r}")


def needs_probe(requested: str, device_type: str, cpu: CpuInfo | None) -> bool:
    """Whether :func:`decide_dtype` needs the probe: "auto" on a CPU whose flags do not rule
    bf16 out, and "bfloat16" on any CPU (for the slowdown warning)."""
    _check_requested(requested)
    if device_type != "cpu" or requested == "float32":
        return False
    if requested == "bfloat16":
        return True
    return cpu is None or not cpu.flags or bool(cpu.native_bf16)


def decide_dtype(requested: str, device_type: str, cpu: CpuInfo | None = None,
                 probe: Probe | None = None, *, cuda_bf16: bool = True) -> DtypeDecision:
    """Pure: the dtype for ``requested`` ("auto", "float32", "bfloat16") on ``device_type``.

    "auto": bfloat16 on CUDA (float32 on a GPU without bf16, ``cuda_bf16=False``); on a CPU,
    float32 when its flags are known and list no native bf16, else bfloat16 when ``probe`` finds
    bf16 at least :data:`BF16_MIN_SPEEDUP` times faster than fp32, else float32; float32 on
    other devices. Explicit values are returned as they are; "bfloat16" on a CPU where ``probe``
    finds bf16 slower than fp32 comes with a warning giving the slowdown.
    """
    _check_requested(requested)
    if requested == "float32":
        return DtypeDecision("float32", "requested")
    cpu_name = f"cpu {cpu.capability}" if cpu is not None else "cpu"
    if requested == "bfloat16":
        warning = None
        if device_type == "cpu" and probe is not None and probe.speedup < 1:
            warning = (
                f"dtype=bfloat16 on a CPU without a fast bf16 matmul ({cpu_name}): "
                f"{probe.describe()}; dtype=auto would use float32"
            )
        elif device_type == "cuda" and not cuda_bf16:
            warning = "dtype=bfloat16 on a CUDA GPU without bf16 support; dtype=auto uses float32"
        return DtypeDecision("bfloat16", "requested", warning)
    if device_type == "cuda":
        if cuda_bf16:
            return DtypeDecision("bfloat16", "auto: cuda with bf16 support")
        return DtypeDecision("float32", "auto: cuda without bf16 support")
    if device_type != "cpu":
        return DtypeDecision("float32", f"auto: {device_type} (bf16 not probed there)")
    if cpu is not None and cpu.flags and not cpu.native_bf16:
        return DtypeDecision(
            "float32",
            f"auto: {cpu_name} without {'/'.join(NATIVE_BF16_FLAGS[:2])}: bf16 matmul is emulated",
        )
    native = (f" with {'+'.join(cpu.native_bf16)}" if cpu is not None and cpu.native_bf16
              else " (cpu flags unknown)")
    if probe is None:
        return DtypeDecision("float32", f"auto: {cpu_name}{native}, no probe: float32")
    if probe.speedup >= BF16_MIN_SPEEDUP:
        return DtypeDecision("bfloat16", f"auto: {cpu_name}{native}: {probe.describe()}")
    return DtypeDecision("float32", f"auto: {cpu_name}{native}, but {probe.describe()}")


def resolve_dtype(requested: str = "auto", device="cpu", *, cache_dir: str | Path | None = None,
                  shape=PROBE_SHAPE) -> tuple[str, str]:
    """``(dtype name, reason)`` for ``requested`` on ``device`` (a torch.device or its name).

    Probes the CPU only when :func:`needs_probe` says so, through :func:`cached_probe` (once per
    machine; ``cache_dir`` defaults to ``$GRPONORM_CACHE`` or ``~/.cache/grponorm``). Emits a
    ``UserWarning`` for an explicit "bfloat16" where bf16 is slower than fp32.
    E.g. ``("bfloat16", "auto: cpu AVX512 with avx512_bf16: bf16 matmul 4.7x faster than fp32
    (probe, cached)")``.
    """
    _check_requested(requested)
    dev = _device_type(device)
    cuda_bf16 = True
    if dev == "cuda":
        import torch

        cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    cpu = cpu_info() if dev == "cpu" and requested != "float32" else None
    probe = None
    if needs_probe(requested, dev, cpu):
        try:
            probe = cached_probe(cpu, cache_dir=cache_dir, shape=shape)
        except Exception as exc:  # a broken probe must not stop a run: fp32 is always safe
            if requested == "auto":
                return "float32", f"auto: bf16 probe failed ({type(exc).__name__}: {exc})"
    decision = decide_dtype(requested, dev, cpu, probe, cuda_bf16=cuda_bf16)
    if decision.warning:
        warnings.warn(decision.warning, stacklevel=2)
    return decision.dtype, decision.reason


# --------------------------------------------------------------------------- threads


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def decide_threads(requested, cores: int, load: float | None = None,
                   wait_policy: str | None = None) -> tuple[int, str]:
    """Pure: ``(threads, reason)``. A positive int is used as given. 0 / "auto": ``cores``
    minus the 1-minute ``load`` of other processes, rounded, clamped to [1, min(cores,
    MAX_AUTO_THREADS)] (see the module docstring for why). The reason recommends
    OMP_WAIT_POLICY=PASSIVE when more than one thread runs with ``wait_policy`` not passive."""
    if requested in (0, "0", "auto", None):
        top = max(1, min(cores, MAX_AUTO_THREADS))
        n, why = top, f"auto: {cores} core{'s' if cores != 1 else ''} available"
        if cores > MAX_AUTO_THREADS:
            why += f", capped at {MAX_AUTO_THREADS}"
        if load is not None:
            n = max(1, min(top, round(cores - load)))
            why += f", load {load:.1f}"
        why += f" -> {n} thread{'s' if n != 1 else ''}"
    else:
        try:
            n = int(requested)
        except (TypeError, ValueError):
            raise ValueError(
                f"threads must be a positive int, 0 or 'auto', got {requested!r}"
            ) from None
        if n < 1 or str(n) != str(requested).strip():
            raise ValueError(f"threads must be a positive int, 0 or 'auto', got {requested!r}")
        why = "requested"
    if n > 1 and (wait_policy or "").upper() != "PASSIVE":
        why += ("; set OMP_WAIT_POLICY=PASSIVE before torch is imported (spinning OpenMP threads "
                "run 10-30x slower when another process is busy)")
    return n, why


def resolve_threads(requested=0) -> tuple[int, str]:
    """``(threads, reason)`` for ``requested`` (a positive int, or 0 / "auto") on this machine:
    :func:`decide_threads` with :func:`available_cores`, the 1-minute load average and
    ``$OMP_WAIT_POLICY``. Does not change anything: apply with ``torch.set_num_threads(n)``."""
    load = None
    with contextlib.suppress(AttributeError, OSError):
        load = os.getloadavg()[0]
    return decide_threads(requested, available_cores(), load, os.environ.get("OMP_WAIT_POLICY"))


# --------------------------------------------------------------------------- summaries


def machine_info(device="cpu", *, cache_dir: str | Path | None = None) -> dict:
    """The hardware facts for a run summary or a report's environment section: CPU model,
    torch capability, native bf16 flags, cores (total / available), torch version and threads,
    OMP_WAIT_POLICY, and the dtype "auto" resolves to on ``device`` with its reason (probes
    once per machine, like :func:`resolve_dtype`)."""
    import torch

    cpu = cpu_info()
    dtype, reason = resolve_dtype("auto", device, cache_dir=cache_dir)
    info = {
        "cpu": cpu.model,
        "cpu_capability": cpu.capability,
        "cpu_native_bf16": list(cpu.native_bf16),
        "cores_total": os.cpu_count(),
        "cores_available": available_cores(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "device": _device_type(device),
        "dtype_auto": dtype,
        "dtype_reason": reason,
    }
    if info["device"] == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info

