"""generalad.device (device / precision resolution, autocast, benchmarks helpers) and device support of the
shared tensor code (nn/, backbones/cache.py).

CPU tests run everywhere. The ``cuda`` tests compare CUDA results with the CPU ones and are skipped on a
machine without a GPU (benchmarks/gpu_check.sh runs this file on the GPU machine). Non-CPU code paths that
need no values (per-device plan/operator caches, device placement of every temporary) are also exercised
on the ``meta`` device, where any stray CPU tensor would raise.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from generalad import device as gdev
from generalad.device import (
    CPU_BF16_ENV,
    autocast,
    available_devices,
    cpu_bf16_fast,
    device_name,
    peak_memory_bytes,
    precision_reason,
    reset_peak_memory,
    resolve_device,
    resolve_precision,
    synchronize,
)
from generalad.errors import ConfigError
from generalad.nn.coreset import _greedy_dense_torch, coverage_radius, greedy_coreset, random_projection
from generalad.nn.knn import NearestNeighbours, faiss, patchcore_reweight
from generalad.nn.loo import image_scores_from_patches, kth_image_distances, leave_one_out_distances, per_image_coreset
from generalad.nn.maps import gaussian_blur, resize_maps, upsample_maps
from generalad.nn.patches import locally_aware_patches
from tests.nn.test_coreset import _assert_greedy

CPU = torch.device("cpu")
META = torch.device("meta")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def _cpuinfo_flags() -> set[str]:
    """Independent of generalad.device: every flag word of /proc/cpuinfo (empty where it does not exist)."""
    path = Path("/proc/cpuinfo")
    text = path.read_text(errors="replace") if path.exists() else ""
    return set(re.findall(r"\b(?:amx_bf16|avx512_bf16)\b", text))


@pytest.fixture
def no_tf32():
    """fp32 GEMMs and convolutions on CUDA (TF32 off), so CUDA and CPU agree to fp32 rounding. (Not
    monkeypatch: cuBLASModule's attributes are virtual, its undo would try to delete them.)"""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture
def unset_cpu_bf16(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)


# ----------------------------------------------------------------------------------------- resolve_device
def test_auto_is_cuda_when_available_else_cpu():
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else CPU
    assert resolve_device("auto") == expected and resolve_device(None) == expected
    assert resolve_device() == expected and resolve_device(" AUTO ") == expected


def test_cpu_spellings():
    for spec in ("cpu", "CPU", "cpu:0", CPU, torch.device("cpu", 0)):
        assert resolve_device(spec) == CPU
    assert available_devices()[0] == "cpu"


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3", torch.device("cuda", 1)])
def test_cuda_without_a_gpu_is_one_line_config_error(spec):
    with pytest.raises(ConfigError) as err:
        resolve_device(spec)
    msg = _one_line(err)
    assert "--device" in msg and "auto, cpu" in msg and "is_available() is False" in msg


@pytest.mark.parametrize("spec", ["bogus", "cuda:x", "gpu", "", 3])
def test_malformed_device_is_one_line_config_error(spec):
    with pytest.raises(ConfigError) as err:
        resolve_device(spec)
    msg = _one_line(err)
    assert msg.startswith("--device ") and "choose one of: auto, cpu" in msg


def test_unavailable_backend_is_config_error():
    if "mps" not in available_devices():
        with pytest.raises(ConfigError, match="--device 'mps'"):
            resolve_device("mps")
    with pytest.raises(ConfigError, match="--device 'meta'"):
        resolve_device("meta")


# ----------------------------------------------------------------------------------------- resolve_precision
def test_cpu_probe_forced_off_and_on(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert resolve_precision("auto", CPU) == "fp32" and not cpu_bf16_fast()
    assert precision_reason(CPU) == f"cpu, {CPU_BF16_ENV}=0: fp32"
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert resolve_precision("auto", CPU) == "bf16" and cpu_bf16_fast()
    assert resolve_precision("auto", "cpu") == "bf16" and precision_reason("cpu").endswith(": bf16")


def test_hardware_probe_path(monkeypatch, unset_cpu_bf16):
    monkeypatch.setattr(gdev, "_cpu_bf16_probe", lambda: (True, "AMX-BF16"))
    assert resolve_precision("auto", CPU) == "bf16" and precision_reason(CPU) == "cpu with AMX-BF16: bf16"
    monkeypatch.setattr(gdev, "_cpu_bf16_probe", lambda: (False, "no AMX/AVX512-BF16"))
    assert resolve_precision("auto", CPU) == "fp32"
    assert precision_reason(CPU).startswith("cpu without AMX/AVX512-BF16: fp32")


def test_explicit_precisions_pass_through(monkeypatch):
    for env in ("0", "1"):
        monkeypatch.setenv(CPU_BF16_ENV, env)
        assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp32", CPU) == "fp32"
        assert resolve_precision("BF16", CPU) == "bf16"


@pytest.mark.parametrize("spec", ["fp16", "float32", "", "bfloat16", None])
def test_bad_precision_is_one_line_config_error(spec):
    with pytest.raises(ConfigError) as err:
        resolve_precision(spec, CPU)
    msg = _one_line(err)
    assert "--precision" in msg and "auto, bf16, fp32" in msg


def test_bad_override_is_config_error(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "yes")
    with pytest.raises(ConfigError, match=CPU_BF16_ENV):
        resolve_precision("auto", CPU)
    assert resolve_precision("fp32", CPU) == "fp32"  # explicit values never look at the probe


def test_other_device_types_default_to_fp32():
    assert resolve_precision("auto", META) == "fp32" and precision_reason(META).startswith("meta: fp32")


def test_auto_on_this_cpu_is_consistent_with_cpuinfo(unset_cpu_bf16):
    """fp32 only if /proc/cpuinfo lacks amx_bf16 and avx512_bf16; either flag present → bf16."""
    flags = _cpuinfo_flags()
    got = resolve_precision("auto", CPU)
    has_bf16 = bool({"amx_bf16", "avx512_bf16"} & flags)
    if has_bf16:
        assert got == "bf16"
    if got == "fp32":
        assert not has_bf16
    probes = [getattr(torch.cpu, n, lambda: False)() for n in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    assert got == ("bf16" if has_bf16 or any(probes) else "fp32")
    assert precision_reason(CPU).split(": ", 1)[1].startswith(got)


# ----------------------------------------------------------------------------------------- autocast & helpers
def test_autocast_fp32_is_a_no_op():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    ref = a @ b
    with autocast(CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        out = a @ b
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16), autocast(CPU, "fp32"):
        assert torch.is_autocast_enabled("cpu")  # nullcontext: an enclosing autocast stays in force


def test_autocast_bf16_and_unresolved():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("cpu", "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown precision 'auto'"):
        autocast(CPU, "auto")


def test_synchronize_memory_and_names_on_cpu():
    synchronize(CPU)
    synchronize("cpu")
    reset_peak_memory(CPU)
    before = peak_memory_bytes(CPU)
    assert before > 10 * 2**20  # a Python process with torch loaded
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB touched
    assert peak_memory_bytes("cpu") >= before and float(big[-1]) == 1.0
    assert isinstance(device_name(CPU), str) and device_name(CPU)


# ----------------------------------------------------------------------------------------- nn on device="cpu"
def _bank(m=700, q=130, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g), torch.randn(q, d, generator=g)


@pytest.mark.parametrize("backend", ["auto", "torch"] + (["faiss"] if faiss is not None else []))
def test_knn_device_cpu_is_the_default_path(backend):
    bank, q = _bank()
    ref = NearestNeighbours(bank, backend=backend, chunk=37)
    nn = NearestNeighbours(bank, backend=backend, chunk=37, device="cpu")
    assert nn.device == CPU and nn.bank.device == CPU and nn.backend == ref.backend
    for k, squared in [(1, False), (5, True)]:
        d0, i0 = ref.search(q, k=k, squared=squared)
        d1, i1 = nn.search(q, k=k, squared=squared)
        d2, i2 = nn.search(q, k=k, squared=squared, on_device=True)
        assert torch.equal(d0, d1) and torch.equal(i0, i1) and torch.equal(d0, d2) and torch.equal(i0, i2)
        assert d1.device == CPU and i1.dtype == torch.int64


def test_knn_auto_backend_on_cpu_is_torch_and_faiss_agrees():
    """auto = torch GEMM blocks on every device (faster than faiss' flat index on the CPU, docs/RESULTS.md);
    faiss stays selectable and finds the same neighbours."""
    bank, q = _bank()
    auto = NearestNeighbours(bank, device="cpu")
    assert auto.backend == "torch"
    if faiss is not None:
        d0, i0 = auto.search(q, k=1)
        d1, i1 = NearestNeighbours(bank, backend="faiss").search(q, k=1)
        assert torch.equal(i0, i1) and torch.allclose(d0, d1, rtol=0, atol=1e-5)


@no_cuda
def test_knn_cuda_device_without_gpu_is_config_error():
    bank, _ = _bank()
    with pytest.raises(ConfigError, match="--device 'cuda'"):
        NearestNeighbours(bank, device="cuda")


def test_reweight_with_device_cpu_index():
    bank, _ = _bank(300, 0, 8, seed=2)
    feats = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(3))
    ref_index = NearestNeighbours(bank, backend="torch")
    index = NearestNeighbours(bank, backend="torch", device=CPU)
    d, i = index.search(feats.reshape(-1, 8))
    ref = patchcore_reweight(d.view(3, 20), i.view(3, 20), feats, ref_index)
    out = patchcore_reweight(d.view(3, 20), i.view(3, 20), feats, index)
    assert torch.equal(ref, out) and out.shape == (3,)


def _anisotropic(m: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / torch.arange(1, d + 1, dtype=torch.float32) ** 0.8
    return torch.randn(m, d, generator=g) * scale @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]


@pytest.mark.parametrize("method", ["lazy", "dense"])
def test_coreset_device_cpu_is_the_default_path(method):
    x = _anisotropic(2000, 40, seed=0)
    ref = greedy_coreset(x, n=120, proj_dim=16, seed=1, method=method)
    out = greedy_coreset(x, n=120, proj_dim=16, seed=1, method=method, device="cpu")
    assert torch.equal(ref, out) and out.device == CPU and out.dtype == torch.int64
    assert torch.equal(random_projection(x, 16, seed=1), random_projection(x, 16, seed=1, device=CPU))


def test_dense_torch_loop_is_greedy_and_matches_the_cpu_kernels():
    """The loop the GPU runs for method="dense", run here on CPU tensors."""
    x = _anisotropic(1500, 40, seed=4)
    z = random_projection(x, 16, seed=3)
    z = z - z.mean(0)
    done: list[tuple[int, int]] = []
    sel = torch.from_numpy(_greedy_dense_torch(z, 150, 7, lambda i, k: done.append((i, k))))
    ref = greedy_coreset(x, n=150, proj_dim=16, seed=3, start=7, method="dense")
    assert sel[0] == 7 and sel.unique().numel() == 150 and done[-1] == (150, 150)
    if not torch.equal(sel, ref):  # a near-tie may resolve differently in fp32
        _assert_greedy(z.numpy(), sel)
    assert (sel == ref).float().mean() > 0.5


def test_coverage_radius_on_device_cpu():
    x = _anisotropic(500, 8, seed=5)
    sel = greedy_coreset(x, n=50, proj_dim=None, device="cpu")
    assert coverage_radius(x, sel) > 0


def test_maps_keep_the_input_device():
    g = torch.rand(2, 7, 7, generator=torch.Generator().manual_seed(0))
    assert upsample_maps(g, (28, 28), sigma=2.0).device == CPU
    for dev in (CPU, META):
        x = g.to(dev)
        assert upsample_maps(x, (28, 30), sigma=2.0).device == dev
        assert upsample_maps(x.bfloat16(), (28, 28), mode="nearest").dtype == torch.float32
        assert resize_maps(x, (14, 14)).device == dev and gaussian_blur(x, 1.0).device == dev


def test_loo_device_cpu_is_the_default_path():
    p = torch.randn(5, 30, 48, generator=torch.Generator().manual_seed(1))
    assert torch.equal(leave_one_out_distances(p, bank_ratio=0.5, proj_dim=16),
                       leave_one_out_distances(p, bank_ratio=0.5, proj_dim=16, device="cpu"))
    a = kth_image_distances(p, bank_ratio=0.5, proj_dim=16, kth=2, exclude=[0, 1, 0, 0, 0])
    b = kth_image_distances(p, bank_ratio=0.5, proj_dim=16, kth=2, exclude=[0, 1, 0, 0, 0], device=CPU)
    assert torch.equal(a, b) and b.device == CPU
    assert image_scores_from_patches(b).dtype == np.float64


def test_nn_code_keeps_every_temporary_on_the_input_device():
    """On the meta device any CPU tensor mixed in would raise: the non-CPU code paths of maps, patches, loo."""
    maps = [torch.empty(2, 40, 14, 14, device=META), torch.empty(2, 80, 7, 7, device=META)]
    out, grid = locally_aware_patches(maps, out_dim=64)
    assert out.device == META and out.shape == (2, 196, 64) and grid == (14, 14)
    p = torch.empty(4, 20, 16, device=META)
    assert per_image_coreset(p, 5).device == META
    assert kth_image_distances(p, bank_ratio=0.5, proj_dim=8, kth=2, exclude=[0, 1, 0, 0]).device == META
    assert kth_image_distances(p, bank_ratio=1.0, proj_dim=8, bf16=True).device == META
    assert random_projection(p.reshape(80, 16), 8).device == META
    assert random_projection(torch.randn(80, 16), 8, device=CPU).device == CPU


def test_patches_on_mixed_devices_is_config_error():
    maps = [torch.zeros(1, 4, 6, 6), torch.empty(1, 4, 3, 3, device=META)]
    with pytest.raises(ConfigError, match="different devices"):
        locally_aware_patches(maps, out_dim=8)


def test_extract_features_resolves_auto_precision(monkeypatch):
    from generalad.backbones import extract_features
    from tests.backbones.conftest import tiny_backbone

    bb = tiny_backbone()
    imgs = [np.random.default_rng(i).random((28, 28, 3), dtype=np.float32) for i in range(3)]
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    auto = extract_features(bb, imgs, image_size=28, precision="auto", progress=False)
    fp32 = extract_features(bb, imgs, image_size=28, precision="fp32", progress=False)
    assert torch.equal(auto.maps[0], fp32.maps[0])
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    auto = extract_features(bb, imgs, image_size=28, precision="auto", progress=False)
    bf16 = extract_features(bb, imgs, image_size=28, precision="bf16", progress=False)
    assert torch.equal(auto.maps[0], bf16.maps[0])


# ----------------------------------------------------------------------------------------- CUDA vs CPU
@needs_cuda
def test_cuda_resolution():
    cur = torch.cuda.current_device()
    assert resolve_device("cuda") == torch.device("cuda", cur) == resolve_device("auto")
    assert resolve_device(f"cuda:{cur}") == torch.device("cuda", cur)
    with pytest.raises(ConfigError, match="no such CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    dev = resolve_device("cuda")
    native = torch.cuda.get_device_capability(dev) >= (8, 0)
    assert resolve_precision("auto", dev) == ("bf16" if native else "fp32")
    assert torch.cuda.get_device_name(dev) in precision_reason(dev) and device_name(dev)
    x = torch.randn(8, 8, device=dev)
    with autocast(dev, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with autocast(dev, "fp32"):
        assert (x @ x).dtype == torch.float32


@needs_cuda
def test_cuda_peak_memory():
    dev = resolve_device("cuda")
    synchronize(dev)
    reset_peak_memory(dev)
    x = torch.empty(32 * 2**20, dtype=torch.uint8, device=dev)
    synchronize(dev)
    assert peak_memory_bytes(dev) >= x.numel()


@needs_cuda
@pytest.mark.parametrize("k", [1, 5])
def test_knn_cuda_equals_cpu(k, no_tf32):
    bank, q = _bank(3000, 500, 64, seed=7)
    cpu = NearestNeighbours(bank, chunk=97)
    gpu = NearestNeighbours(bank, chunk=97, device="cuda")
    assert gpu.backend == "torch" and gpu.bank.is_cuda
    d0, i0 = cpu.search(q, k=k)
    d1, i1 = gpu.search(q.cuda(), k=k)
    assert d1.device == CPU and i1.device == CPU
    assert torch.equal(i0, i1)
    torch.testing.assert_close(d1, d0, rtol=1e-5, atol=1e-5)
    d2, i2 = gpu.search(q, k=k, squared=True, on_device=True)
    assert d2.is_cuda and i2.is_cuda and torch.equal(i2.cpu(), i0)
    assert float(gpu.search(bank[:50])[0].abs().max()) == 0.0  # exact re-computation: self-match is 0
    with pytest.raises(ConfigError, match="faiss"):  # faiss-cpu has no GPU build
        NearestNeighbours(bank, backend="faiss", device="cuda")


@needs_cuda
def test_reweight_cuda_equals_cpu(no_tf32):
    bank, _ = _bank(400, 0, 16, seed=8)
    feats = torch.randn(4, 30, 16, generator=torch.Generator().manual_seed(9))
    cpu, gpu = NearestNeighbours(bank), NearestNeighbours(bank, device="cuda")
    d, i = cpu.search(feats.reshape(-1, 16))
    ref = patchcore_reweight(d.view(4, 30), i.view(4, 30), feats, cpu)
    out = patchcore_reweight(d.view(4, 30), i.view(4, 30), feats, gpu)  # CPU inputs, CUDA index
    assert out.device == CPU
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    dc, ic = gpu.search(feats.reshape(-1, 16).cuda(), on_device=True)
    out = patchcore_reweight(dc.view(4, 30), ic.view(4, 30), feats.cuda(), gpu)  # all on CUDA
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-6)


@needs_cuda
@pytest.mark.parametrize("method", ["lazy", "dense"])
def test_coreset_cuda_equals_cpu(method, no_tf32):
    x = _anisotropic(20000, 64, seed=1)
    ref = greedy_coreset(x, ratio=0.05, proj_dim=32, seed=0, method=method)
    out = greedy_coreset(x.cuda(), ratio=0.05, proj_dim=32, seed=0, method=method)
    moved = greedy_coreset(x, ratio=0.05, proj_dim=32, seed=0, method=method, device="cuda")
    assert out.device == CPU and torch.equal(out, moved) and out.unique().numel() == len(ref)
    torch.testing.assert_close(random_projection(x.cuda(), 32).cpu(), random_projection(x, 32), rtol=1e-5, atol=1e-5)
    if not torch.equal(out, ref):  # near-ties may resolve differently; every pick must still be greedy
        _assert_greedy(random_projection(x, 32, seed=0).numpy(), out)
    assert (out == ref).float().mean() > 0.5
    assert coverage_radius(x.cuda(), out) == pytest.approx(coverage_radius(x, out), rel=1e-5)


@needs_cuda
@pytest.mark.parametrize("mode, sigma", [("bilinear", 4.0), ("nearest", 0.0), ("bilinear", 0.0)])
def test_maps_cuda_equals_cpu(mode, sigma, no_tf32):
    g = torch.rand(3, 37, 37, generator=torch.Generator().manual_seed(0))
    ref = upsample_maps(g, (518, 518), sigma=sigma, mode=mode)
    out = upsample_maps(g.cuda(), (518, 518), sigma=sigma, mode=mode)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(resize_maps(out, (256, 256)).cpu(), resize_maps(ref, (256, 256)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gaussian_blur(g.cuda(), 2.0).cpu(), gaussian_blur(g, 2.0), rtol=1e-5, atol=1e-6)


@needs_cuda
def test_patches_cuda_equals_cpu(no_tf32):
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 40, 14, 14, generator=g), torch.randn(3, 80, 7, 7, generator=g)]
    ref, grid = locally_aware_patches(maps, out_dim=64)
    out, grid_cuda = locally_aware_patches([m.cuda() for m in maps], out_dim=64)
    assert out.is_cuda and grid == grid_cuda
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-5, atol=1e-5)


@needs_cuda
def test_loo_cuda_equals_cpu(no_tf32):
    p = torch.randn(6, 49, 96, generator=torch.Generator().manual_seed(1))
    ref = leave_one_out_distances(p, bank_ratio=1.0, proj_dim=32)
    out = leave_one_out_distances(p.cuda(), bank_ratio=1.0, proj_dim=32)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    for kw in (dict(bank_ratio=1.0, kth=2, exclude=[0, 1, 0, 0, 0, 0]), dict(bank_ratio=0.5, kth=1)):
        ref = kth_image_distances(p, proj_dim=32, **kw)
        out = kth_image_distances(p, proj_dim=32, device="cuda", **kw)
        assert out.is_cuda
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(image_scores_from_patches(out), image_scores_from_patches(ref), rtol=1e-4)


@needs_cuda
def test_extract_features_cuda_equals_cpu(tmp_path, no_tf32):
    from generalad.backbones import backbone_throughput, extract_features
    from tests.backbones.conftest import tiny_backbone

    imgs = [np.random.default_rng(i).random((30 + 7 * i, 40, 3), dtype=np.float32) for i in range(5)]
    kw = dict(image_size=28, batch_size=2, precision="fp32", with_attention=True, progress=False)
    ref = extract_features(tiny_backbone(4), imgs, **kw)
    bb = tiny_backbone(4).cuda()
    out = extract_features(bb, imgs, **kw)
    assert out.maps[0].device == CPU and out.maps[0].dtype == torch.float32 and out.attention.device == CPU
    torch.testing.assert_close(out.maps[0], ref.maps[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.attention, ref.attention, rtol=1e-4, atol=1e-5)
    cached = extract_features(bb, imgs, cache_dir=tmp_path, num_workers=0, **kw)
    again = extract_features(bb, imgs, cache_dir=tmp_path, **kw)
    assert torch.equal(cached.maps[0], again.maps[0])
    torch.testing.assert_close(cached.maps[0], ref.maps[0], rtol=1e-2, atol=1e-2)  # fp16-rounded
    bf16 = extract_features(bb, imgs, **{**kw, "precision": "auto"})
    assert torch.isfinite(bf16.maps[0]).all()
    assert backbone_throughput(bb, 28, batch_size=2, precision="auto", n_batches=2) > 0
