"""Tests for grponorm.hardware: the dtype decision, the cached bf16 probe, the thread count, and
ModelConfig(dtype="auto") resolving through them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from grponorm import hardware as hw  # noqa: E402
from grponorm.hardware import CpuInfo, Probe, decide_dtype, decide_threads  # noqa: E402

AVX2 = CpuInfo("AMD EPYC 7B12", frozenset({"sse4_2", "avx", "avx2", "fma"}), "AVX2")
AVX512_BF16 = CpuInfo("AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_bf16"}), "AVX512")
AMX = CpuInfo("Intel Xeon 8480", frozenset({"avx512f", "amx_bf16", "amx_tile"}), "AVX512")
UNKNOWN = CpuInfo("arm", frozenset(), "DEFAULT")
FAST = Probe(fp32_ms=1.0, bf16_ms=0.22)  # 4.5x faster
SLOW = Probe(fp32_ms=1.0, bf16_ms=36.0)  # 36x slower
TIE = Probe(fp32_ms=1.0, bf16_ms=0.95)


@pytest.fixture(autouse=True)
def _fresh_memo():
    hw._MEMO.clear()
    yield
    hw._MEMO.clear()


# ----------------------------------------------------------------------------------- cpuinfo


def test_parse_cpuinfo_x86_and_aarch64():
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512_bf16\n\n" \
          "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    assert hw.parse_cpuinfo(x86) == ("AMD EPYC 9B14", frozenset({"fpu", "avx2", "avx512_bf16"}))
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\nCPU part\t: 0xd40\n"
    model, flags = hw.parse_cpuinfo(arm)
    assert model == "" and CpuInfo(model, flags, "SVE256").native_bf16 == ("bf16",)
    assert hw.parse_cpuinfo("") == ("", frozenset())
    assert AMX.native_bf16 == ("amx_bf16",) and AVX2.native_bf16 == ()


# ----------------------------------------------------------------------------------- dtype


def test_auto_on_avx2_is_float32_without_probe():
    assert not hw.needs_probe("auto", "cpu", AVX2)
    d = decide_dtype("auto", "cpu", AVX2, None)
    assert d.dtype == "float32" and "emulated" in d.reason and "AVX2" in d.reason
    # Even a (bogus) fast probe does not override missing flags.
    assert decide_dtype("auto", "cpu", AVX2, FAST).dtype == "float32"


@pytest.mark.parametrize("cpu", [AVX512_BF16, AMX, UNKNOWN])
def test_auto_on_native_cpu_follows_the_probe(cpu):
    assert hw.needs_probe("auto", "cpu", cpu)
    fast = decide_dtype("auto", "cpu", cpu, FAST)
    assert fast.dtype == "bfloat16" and "4.5x faster" in fast.reason and fast.warning is None
    slow = decide_dtype("auto", "cpu", cpu, SLOW)
    assert slow.dtype == "float32" and "36.0x slower" in slow.reason
    assert decide_dtype("auto", "cpu", cpu, TIE).dtype == "float32"  # below BF16_MIN_SPEEDUP
    assert decide_dtype("auto", "cpu", cpu, None).dtype == "float32"


def test_reason_names_cpu_flags_and_cache():
    cached = Probe(fp32_ms=4.7, bf16_ms=1.0, cached=True)
    d = decide_dtype("auto", "cpu", AVX512_BF16, cached)
    assert d.reason == (
        "auto: cpu AVX512 with avx512_bf16: bf16 matmul 4.7x faster than fp32 (probe, cached)"
    )


def test_auto_on_cuda_and_other_devices():
    assert not hw.needs_probe("auto", "cuda", None)
    assert decide_dtype("auto", "cuda").dtype == "bfloat16"
    assert decide_dtype("auto", "cuda", cuda_bf16=False).dtype == "float32"
    assert decide_dtype("auto", "mps").dtype == "float32"


def test_explicit_values_are_respected():
    assert not hw.needs_probe("float32", "cpu", AVX512_BF16)
    assert decide_dtype("float32", "cpu", AVX512_BF16, FAST) == hw.DtypeDecision(
        "float32", "requested"
    )
    assert decide_dtype("float32", "cuda").dtype == "float32"
    assert hw.needs_probe("bfloat16", "cpu", AVX2)  # for the slowdown warning
    slow = decide_dtype("bfloat16", "cpu", AVX2, SLOW)
    assert slow.dtype == "bfloat16" and "36.0x slower" in slow.warning
    fast = decide_dtype("bfloat16", "cpu", AVX512_BF16, FAST)
    assert fast.dtype == "bfloat16" and fast.warning is None
    assert decide_dtype("bfloat16", "cuda").dtype == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        decide_dtype("float16", "cpu")


def _fake_machine(monkeypatch, cpu, probe, calls=None):
    monkeypatch.setattr(hw, "cpu_info", lambda: cpu)

    def measure(shape):
        if calls is not None:
            calls.append(shape)
        return probe

    monkeypatch.setattr(hw, "measure_probe", measure)


def test_resolve_dtype_warns_once_for_explicit_bf16_on_slow_cpu(monkeypatch, tmp_path):
    _fake_machine(monkeypatch, AVX2, SLOW)
    with pytest.warns(UserWarning, match=r"36\.0x slower than fp32") as rec:
        assert hw.resolve_dtype("bfloat16", "cpu", cache_dir=tmp_path) == ("bfloat16", "requested")
    assert len(rec) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hw.resolve_dtype("auto", "cpu", cache_dir=tmp_path)[0] == "float32"
        assert hw.resolve_dtype("float32", "cpu", cache_dir=tmp_path)[0] == "float32"


def test_resolve_dtype_auto_on_native_cpu(monkeypatch, tmp_path):
    _fake_machine(monkeypatch, AVX512_BF16, FAST)
    dtype, reason = hw.resolve_dtype("auto", torch.device("cpu"), cache_dir=tmp_path)
    assert dtype == "bfloat16" and "avx512_bf16" in reason and "(probe)" in reason


def test_broken_probe_falls_back_to_float32(monkeypatch, tmp_path):
    monkeypatch.setattr(hw, "cpu_info", lambda: AVX512_BF16)

    def broken(shape):
        raise RuntimeError("no bf16 kernel")

    monkeypatch.setattr(hw, "measure_probe", broken)
    dtype, reason = hw.resolve_dtype("auto", "cpu", cache_dir=tmp_path)
    assert dtype == "float32" and "probe failed" in reason


# ----------------------------------------------------------------------------------- cache


def test_probe_cache_written_once_and_reused(monkeypatch, tmp_path):
    calls: list = []
    _fake_machine(monkeypatch, AVX512_BF16, FAST, calls)
    monkeypatch.setenv("GRPONORM_CACHE", str(tmp_path / "env-cache"))
    first = hw.cached_probe()
    path = tmp_path / "env-cache" / hw.CACHE_FILE
    assert len(calls) == 1 and path.is_file() and not first.cached
    data = json.loads(path.read_text())
    (key,) = data["probes"]
    assert key == hw.probe_key(AVX512_BF16, torch.__version__)
    assert data["probes"][key]["cpu"] == "AMD EPYC 9B14"
    hw._MEMO.clear()  # a later process
    again = hw.cached_probe()
    assert len(calls) == 1 and again.cached and again.speedup == pytest.approx(FAST.speedup)
    reason = hw.resolve_dtype("auto", "cpu")[1]
    assert reason.endswith("(probe, cached)") and len(calls) == 1


def test_probe_cache_is_keyed(monkeypatch, tmp_path):
    for name in hw.KERNEL_ENV:  # the test sets them itself (a CI may run with some set)
        monkeypatch.delenv(name, raising=False)
    calls: list = []
    _fake_machine(monkeypatch, AVX512_BF16, FAST, calls)
    hw.cached_probe(cache_dir=tmp_path)
    hw._MEMO.clear()
    hw.cached_probe(AMX, cache_dir=tmp_path)  # another CPU
    hw._MEMO.clear()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # other kernels on the same CPU
    hw.cached_probe(cache_dir=tmp_path)
    hw._MEMO.clear()
    hw.cached_probe(cache_dir=tmp_path, shape=(8, 576, 1536))  # another shape
    assert len(calls) == 4
    assert len(json.loads((tmp_path / hw.CACHE_FILE).read_text())["probes"]) == 4
    keys = {
        hw.probe_key(AVX512_BF16, "2.13.0", env={}),
        hw.probe_key(AVX512_BF16, "2.14.0", env={}),
        hw.probe_key(AVX512_BF16, "2.13.0", env={"ATEN_CPU_CAPABILITY": "avx2"}),
        hw.probe_key(AVX2, "2.13.0", env={}),
    }
    assert len(keys) == 4


def test_probe_cache_ignores_broken_file(monkeypatch, tmp_path):
    calls: list = []
    _fake_machine(monkeypatch, AVX512_BF16, FAST, calls)
    (tmp_path / hw.CACHE_FILE).write_text("{not json")
    assert not hw.cached_probe(cache_dir=tmp_path).cached and len(calls) == 1
    assert json.loads((tmp_path / hw.CACHE_FILE).read_text())["format"] == hw.CACHE_FORMAT


def test_real_probe_measures_both_dtypes():
    before = torch.get_num_threads()
    p = hw.measure_probe(shape=(8, 64, 128))
    assert p.fp32_ms > 0 and p.bf16_ms > 0 and p.threads == 1
    assert torch.get_num_threads() == before


# ----------------------------------------------------------------------------------- threads


def test_auto_threads_count_idle_cores():
    assert decide_threads(0, cores=2, load=2.1)[0] == 1  # a shared, busy pair of cores
    assert decide_threads("auto", cores=2, load=1.2)[0] == 1
    n, why = decide_threads(0, cores=2, load=0.1)
    assert n == 2 and "OMP_WAIT_POLICY=PASSIVE" in why
    n, why = decide_threads(0, cores=2, load=0.1, wait_policy="passive")
    assert n == 2 and "OMP_WAIT_POLICY" not in why
    assert decide_threads(0, cores=64, load=0.0)[0] == hw.MAX_AUTO_THREADS
    assert decide_threads(0, cores=64, load=60.0)[0] == 4
    assert decide_threads(0, cores=4, load=None)[0] == 4
    one = (1, "auto: 1 core available, load 0.0 -> 1 thread")
    assert decide_threads(0, cores=1, load=0.0) == one


def test_explicit_threads_and_errors():
    assert decide_threads(3, cores=2, load=5.0)[0] == 3
    assert decide_threads("2", cores=2, load=0.0)[1].startswith("requested")
    for bad in (-1, "x", 1.5, "1.5"):
        with pytest.raises(ValueError, match="threads"):
            decide_threads(bad, cores=2)


def test_resolve_threads_reads_affinity_and_load(monkeypatch):
    monkeypatch.setattr(hw.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(hw.os, "getloadavg", lambda: (1.0, 0.0, 0.0))
    monkeypatch.setattr(hw.Path, "read_text", _no_cgroup(hw.Path.read_text))
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert hw.available_cores() == 4
    assert hw.resolve_threads(0) == (3, "auto: 4 cores available, load 1.0 -> 3 threads")


def _no_cgroup(read_text):
    def read(self, *a, **kw):
        if str(self) == "/sys/fs/cgroup/cpu.max":
            raise OSError("no cgroup here")
        return read_text(self, *a, **kw)

    return read


def test_available_cores_respects_cgroup_quota(monkeypatch):
    monkeypatch.setattr(hw.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    real = hw.Path.read_text

    def read(self, *a, **kw):
        if str(self) == "/sys/fs/cgroup/cpu.max":
            return "150000 100000\n"
        return real(self, *a, **kw)

    monkeypatch.setattr(hw.Path, "read_text", read)
    assert hw.available_cores() == 2


# ----------------------------------------------------------------------------------- summaries


def test_machine_info(monkeypatch, tmp_path):
    _fake_machine(monkeypatch, AVX512_BF16, FAST)
    info = hw.machine_info("cpu", cache_dir=tmp_path)
    assert info["cpu"] == "AMD EPYC 9B14" and info["cpu_native_bf16"] == ["avx512_bf16"]
    assert info["dtype_auto"] == "bfloat16" and "faster" in info["dtype_reason"]
    assert info["torch"] == torch.__version__ and info["cores_available"] >= 1
    json.dumps(info)


# ----------------------------------------------------------------------------------- models


def test_model_config_auto_resolves_through_hardware(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    from conftest import tiny_model, tiny_tokenizer
    from grponorm.rl import models

    assert models.ModelConfig().dtype == "auto"
    tok = tiny_tokenizer()
    folder = tmp_path / "tiny"
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    cache = tmp_path / "cache"
    _fake_machine(monkeypatch, AVX512_BF16, FAST)
    cfg = models.ModelConfig(model=str(folder), device="cpu", cache_dir=cache)
    dtype, reason = models.resolved_dtype(cfg)
    assert dtype == "bfloat16" and reason.startswith("auto: cpu AVX512")
    model, _ = models.load_model(cfg)
    assert model.dtype == torch.bfloat16 and (Path(cache) / hw.CACHE_FILE).is_file()
    hw._MEMO.clear()
    _fake_machine(monkeypatch, AVX2, SLOW)
    assert models.load_model(cfg)[0].dtype == torch.float32
    explicit = models.ModelConfig(model=str(folder), device="cpu", cache_dir=cache,
                                  dtype="float32")
    assert models.resolved_dtype(explicit) == ("float32", "requested")
    with pytest.warns(UserWarning, match="slower"):
        model = models.load_model(
            models.ModelConfig(model=str(folder), device="cpu", cache_dir=cache,
                               dtype="bfloat16"))[0]
    assert model.dtype == torch.bfloat16
