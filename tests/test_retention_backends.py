"""The retention op's backends: the fused Triton kernel against the torch backend (forward and
gradients, on the CPU through Triton's interpreter), fla against torch (CUDA only), how ``"auto"``
chooses, and the one error a backend that cannot run a call gets."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch._dynamo as dynamo
from conftest import random_qkv, relative_error

from vir_lightning.models import create_model
from vir_lightning.retention import backends as backends_module
from vir_lightning.retention import retention, retention_step

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
CUDA = torch.cuda.is_available()
#: Where the Triton kernel runs: the GPU where there is one, else the CPU through the interpreter.
KERNEL_DEVICE = torch.device("cuda" if CUDA else "cpu")
RATES = [0.6, 0.9, 0.99]

#: (grid_shape, cls_token, directions, tokens): 1D sequences across tile edges; ragged 2D grids, the
#: class token (also below a single-row grid), both quadrants and every direction.
CASES = {
    "1d": (None, False, 1, 40),
    "1d_three_tiles": (None, False, 1, 150),
    "2d_ragged": ((5, 11), False, 1, 55),
    "2d_class_token": ((5, 11), True, 1, 56),
    "2d_one_row_class_token": ((1, 13), True, 1, 14),
    "2d_directions_2": ((9, 7), False, 2, 63),
    "2d_directions_4": ((6, 10), False, 4, 60),
}


def _run(backend, q, k, v, case, scale=0.3):
    grid_shape, cls_token, directions, _ = CASES[case]
    return retention(
        q,
        k,
        v,
        RATES,
        grid_shape=grid_shape,
        class_token=cls_token,
        directions=directions,
        scale=scale,
        backend=backend,
    )


def _reference(q, k, v, case):
    """The torch backend in float64 on the same values: output and the gradients of sum(out²)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = _run("torch", q64, k64, v64, case)
    return out, torch.autograd.grad(out.square().sum(), (q64, k64, v64))


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_triton_kernel_equals_the_torch_backend_forward_and_gradients(case):
    tokens = CASES[case][3]
    # value_dim differs from head_dim, and neither is a power of two: padding is masked
    q, k = (t.to(KERNEL_DEVICE).requires_grad_() for t in random_qkv(2, 3, tokens, 24, seed=1, dtype=torch.float32)[:2])
    v = torch.randn(2, 3, tokens, 20, device=KERNEL_DEVICE, requires_grad=True)
    out = _run("triton", q, k, v, case)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref, ref_grads = _reference(q, k, v, case)
    assert out.dtype == torch.float32 and out.shape == (2, 3, tokens, 20)
    assert relative_error(out.double(), ref) < 1e-5
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert relative_error(grad.double(), ref_grad) < 1e-5


@needs_triton
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_triton_kernel_in_half_precision_is_as_close_as_its_dtype_allows(dtype, tolerance):
    q, k, v = (t.to(KERNEL_DEVICE) for t in random_qkv(1, 3, 56, 16, seed=2, dtype=torch.float32))
    out = _run("triton", *(t.to(dtype) for t in (q, k, v)), "2d_class_token")
    ref, _ = _reference(*(t.to(dtype).float() for t in (q, k, v)), "2d_class_token")
    assert out.dtype == dtype
    assert relative_error(out.double(), ref) < tolerance


@needs_triton
def test_triton_kernel_reads_strided_heads_and_returns_heads_merged_for_free():
    """q, k, v as the model makes them (views into one fused qkv projection) are read in place; the
    output is a (B, N, H, dv) buffer, so merging the heads needs no copy."""
    batch, tokens, heads, head_dim = 2, 56, 3, 16
    qkv = torch.randn(batch, tokens, 3, heads, head_dim, device=KERNEL_DEVICE)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    assert not q.is_contiguous()
    out = _run("triton", q, k, v, "2d_class_token")
    expected = _run("triton", q.contiguous(), k.contiguous(), v.contiguous(), "2d_class_token")
    assert torch.equal(out, expected)
    assert out.transpose(1, 2).is_contiguous()


@needs_triton
@pytest.mark.parametrize(
    ("name", "kwargs", "size"),
    [
        ("vir_tiny_patch16_224", dict(decay="2d", depth=2), 64),  # 2D, class token last
        ("vir_tiny_patch16_224", dict(multipass=True, depth=2), 48),  # 1D, sequence ++ reversed
        ("vir_tiny_patch16_224", dict(decay="2d", directions=4, pooling="avg", depth=2), 48),
        ("hvir_tiny", dict(depths=(1, 1, 1, 1)), 128),  # 2D stages, head_dim 40
    ],
)
def test_models_train_and_infer_alike_on_the_triton_and_torch_backends(name, kwargs, size):
    torch.manual_seed(0)
    # LayerScale 1: at its default (1e-5) the mixer barely reaches the logits, which would hide a wrong kernel.
    # eval: BatchNorm's running statistics and no dropout, so the two passes see the same network.
    model = create_model(name, num_classes=5, img_size=size, layer_scale_init=1.0, **kwargs).to(KERNEL_DEVICE).eval()
    x = torch.randn(2, 3, size, size, device=KERNEL_DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        model.set_retention_backend(backend)
        model.zero_grad()
        logits = model(x)
        logits.square().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (logits.detach(), grads)
    assert model.retention_backend == "triton"
    assert 0 < relative_error(results["triton"][0], results["torch"][0]) < 1e-4  # two different computations
    assert results["triton"][1].keys() == results["torch"][1].keys()
    for param, grad in results["triton"][1].items():
        assert relative_error(grad, results["torch"][1][param]) < 1e-3, param


@needs_triton
def test_triton_backend_traces_into_one_graph():
    """``torch.compile`` sees the kernel as one op (``torch.library.triton_op``): no graph break."""
    q, k, v = (t.to(KERNEL_DEVICE) for t in random_qkv(1, 3, 56, 16, dtype=torch.float32))

    def layer(q, k, v):
        return _run("triton", q, k, v, "2d_class_token") * 2

    explained = dynamo.explain(layer)(q, k, v)
    dynamo.reset()
    assert explained.graph_break_count == 0
    assert explained.graph_count == 1


# ------------------------------------------------------------------------------------------------
# Choosing a backend, and refusing one that cannot run the call
# ------------------------------------------------------------------------------------------------


def test_auto_on_the_cpu_is_the_torch_backend_bit_for_bit():
    q, k, v = random_qkv(2, 3, 56, 8, dtype=torch.float32)
    for case in ("1d", "2d_class_token"):
        assert torch.equal(_run("auto", q, k, v, case), _run("torch", q, k, v, case))


@pytest.mark.parametrize(
    ("installed", "kwargs", "expected"),
    [
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=True), "fla"),
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=False), "triton"),
        ({"triton"}, dict(one_d=True), "triton"),
        (set(), dict(one_d=False), "torch"),
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=True, step=True), "fla"),
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=False, step=True), "torch"),
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=True, mode="recurrent"), "torch"),
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=True, dtype=torch.float64), "torch"),
        # fla would take TF32 products: fp32 goes to the Triton kernel (IEEE) unless TF32 is allowed
        ({"triton", "fla.ops.simple_gla"}, dict(one_d=True, dtype=torch.float32), "triton"),
        # head dims the kernel's tiles cannot hold: torch
        ({"triton"}, dict(one_d=False, dtype=torch.float32, head_dim=256), "torch"),
        ({"triton"}, dict(one_d=False, dtype=torch.bfloat16, head_dim=256), "triton"),
    ],
)
def test_auto_on_cuda_takes_the_first_fused_backend_that_can_run_the_call(monkeypatch, installed, kwargs, expected):
    monkeypatch.setattr(backends_module, "_installed", lambda module: module in installed)
    kwargs = {"dtype": torch.bfloat16, **kwargs}
    assert backends_module.resolve_backend("auto", torch.device("cuda"), **kwargs) == expected


def test_auto_takes_fla_for_fp32_where_tf32_is_allowed(monkeypatch):
    monkeypatch.setattr(backends_module, "_installed", lambda module: True)
    allowed = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: set, then restore
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        assert backends_module.resolve_backend("auto", torch.device("cuda"), torch.float32, one_d=True) == "fla"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def test_auto_under_torch_compile_takes_the_traceable_triton_kernel_over_fla(monkeypatch):
    monkeypatch.setattr(backends_module, "_installed", lambda module: True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert backends_module.resolve_backend("auto", torch.device("cuda"), torch.bfloat16, one_d=True) == "triton"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda q, k, v: retention(q, k, v, RATES, backend="fla"),
            "backend='fla' cannot run this call: its kernels run on CUDA devices only, not on cpu. Backends that can:",
        ),
        (
            lambda q, k, v: retention(q, k, v, RATES, grid_shape=(7, 8), backend="fla"),
            "backend='fla' cannot run this call: it computes 1D decay only",
        ),
        (
            lambda q, k, v: retention(q.double(), k.double(), v.double(), RATES, backend="triton"),
            "backend='triton' cannot run this call: it takes float16, bfloat16 or float32 inputs, not torch.float64",
        ),
        (
            lambda q, k, v: retention_step(q, k, v, RATES, grid_cols=8, backend="triton"),
            "backend='triton' cannot run this call: its flash-style kernel computes whole sequences and carries no",
        ),
        (
            lambda q, k, v: retention(
                q.repeat(1, 1, 1, 32), k.repeat(1, 1, 1, 32), v.repeat(1, 1, 1, 32), RATES, backend="triton"
            ),
            "backend='triton' cannot run this call: its kernel takes head dims up to 128 in torch.float32, not 256",
        ),
        (
            lambda q, k, v: retention(q, k, v, RATES, backend="cuda"),
            "backend='cuda' is unknown; expected one of ('auto', 'torch', 'triton', 'fla')",
        ),
    ],
)
def test_a_backend_that_cannot_run_the_call_gets_one_error_naming_those_that_can(call, message):
    q, k, v = random_qkv(1, 3, 56, 8, dtype=torch.float32)
    with pytest.raises(ValueError) as err:
        call(q, k, v)
    assert str(err.value).startswith(message)
    if "cannot run" in message:
        assert "'torch'" in str(err.value).split("Backends that can:")[1]


def test_triton_on_the_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = random_qkv(1, 3, 20, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="it runs on CUDA devices .or the CPU under TRITON_INTERPRET=1., not on cpu"):
        retention(q, k, v, RATES, backend="triton")


def test_models_refuse_an_unknown_backend_when_built_and_when_switched():
    with pytest.raises(ValueError, match="backend='gpu' is unknown"):
        create_model("vir_tiny_patch16_224", num_classes=2, img_size=32, retention_backend="gpu")
    with pytest.raises(ValueError, match="backend='gpu' is unknown"):
        create_model("vit_tiny_patch16_224", num_classes=2, img_size=32, retention_backend="gpu")
    model = create_model("hvir_tiny", num_classes=2)
    with pytest.raises(ValueError, match="backend='gpu' is unknown"):
        model.set_retention_backend("gpu")
    assert model.retention_backend == "auto"


# ------------------------------------------------------------------------------------------------
# fla (CUDA only: its chunk kernels cannot run in Triton's interpreter)
# ------------------------------------------------------------------------------------------------

needs_fla = pytest.mark.skipif(
    not CUDA or importlib.util.find_spec("fla") is None, reason="fla's kernels need CUDA and fla-core"
)


@needs_fla
def test_fla_backend_equals_the_torch_backend_forward_gradients_and_streaming_state(monkeypatch):
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")  # fla's fp32 products in IEEE fp32 (TF32 by default)
    q, k, v = (t.cuda() for t in random_qkv(2, 3, 300, 64, dtype=torch.float32, requires_grad=True))
    out = retention(q, k, v, RATES, scale=0.125, backend="fla")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = retention(q, k, v, RATES, scale=0.125, backend="torch", mode="chunkwise")
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert relative_error(out, ref) < 1e-4
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert relative_error(grad, ref_grad) < 1e-4
    with torch.no_grad():
        first, state = retention_step(q[:, :, :130], k[:, :, :130], v[:, :, :130], RATES, scale=0.125, backend="fla")
        second, _ = retention_step(
            q[:, :, 130:], k[:, :, 130:], v[:, :, 130:], RATES, state, scale=0.125, backend="fla"
        )
    assert state.dtype == torch.float32
    assert relative_error(torch.cat([first, second], 2), ref.detach()) < 1e-4


@needs_triton
@pytest.mark.slow
def test_gpu_script_dry_run_checks_every_backend_and_writes_the_csv_columns(tmp_path):
    """experiments/gpu/fused_kernels.py on the CPU at toy sizes (DRY=1): the script's own test before
    it spends GPU time. Its exactness checks pass, and the CSV has exactly the agreed columns."""
    import csv
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    csv_path, checks_path = tmp_path / "gpu.csv", tmp_path / "checks.json"
    env = {**os.environ, "DRY": "1", "PYTHONPATH": str(root)}
    subprocess.run(
        [
            sys.executable,
            "experiments/gpu/fused_kernels.py",
            "--csv",
            str(csv_path),
            "--checks",
            str(checks_path),
            "--skip",
            "graph_breaks",
            "--resolutions",
            "32",
            "--dtypes",
            "bf16",
            "--deadline-s",
            "600",
        ],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
    )
    checks = json.loads(checks_path.read_text())
    op_errors = {k: v for k, v in checks.items() if k.startswith("op_")}
    assert {"op_2d_cls_fp32_triton_vs_torch", "op_2d_dir4_float64_chunkwise_vs_parallel"} <= op_errors.keys()
    assert all(0 <= error < 1e-5 for error in op_errors.values()), op_errors
    assert all(0 < checks[f"model_{m}_fp32_triton_vs_torch"] < 1e-4 for m in ("vir_s_1d", "vir_s_2d", "hvir_t"))
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["device", "dtype", "task", "model", "backend", "resolution", "batch", "ms", "peak_mb"]
    measured = {(r[2], r[3], r[4]) for r in rows[1:] if float(r[7]) > 0}
    for task in ("infer", "train"):
        assert {
            (task, "vit_small_patch16_224", "torch"),
            (task, "vir_small_patch16_224", "triton"),
            (task, "vir_small_patch16_224_2d", "triton"),
            (task, "hvir_tiny", "triton"),
        } <= measured
