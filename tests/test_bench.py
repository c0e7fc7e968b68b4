"""`python -m vir_lightning bench`, the ViT baseline it compares against, and `mode="auto"`."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import random_qkv, relative_error

from vir_lightning.benchmarks import throughput
from vir_lightning.benchmarks.retention_op import crossover
from vir_lightning.cli import main
from vir_lightning.models import MultiHeadAttention, create_model
from vir_lightning.retention import AUTO_PARALLEL_MAX_TOKENS, resolve_mode, retention
from vir_lightning.retention.modes import decayed_cumsum

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# -- the ViT baseline ----------------------------------------------------------------------------


def test_vit_baseline_has_vir_blocks_and_parameter_count_with_attention_mixers():
    vit, vir = create_model("vit_small_patch16_224"), create_model("vir_small_patch16_224")
    assert sum(p.numel() for p in vit.parameters()) == sum(p.numel() for p in vir.parameters())
    assert vit.retention_layers() == [] and vit.retention_mode == "parallel"
    assert all(isinstance(block.attn, MultiHeadAttention) for block in vit.blocks)


def test_attention_mixer_is_softmax_attention_over_all_tokens():
    torch.manual_seed(0)
    layer = MultiHeadAttention(dim=12, num_heads=3).double()
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    q, k, v = layer.qkv(x).reshape(2, 7, 3, 3, 4).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-1, -2)) / math.sqrt(4)).softmax(-1)  # non-causal: every pair
    expected = layer.proj((weights @ v).transpose(1, 2).reshape(2, 7, 12))
    assert relative_error(layer(x), expected) <= 1e-12


def test_attention_token_mixer_rejects_retention_only_options():
    with pytest.raises(ValueError, match="token_mixer='attention'"):
        create_model("vit_nano_patch16_224", decay="2d")
    with pytest.raises(ValueError, match="token_mixer='fast' is unknown"):
        create_model("vir_nano_patch16_224", token_mixer="fast")


# -- mode="auto" ---------------------------------------------------------------------------------


def test_auto_mode_runs_parallel_up_to_the_measured_crossover_and_chunkwise_beyond():
    cpu = torch.device("cpu")
    limit_1d, limit_2d = AUTO_PARALLEL_MAX_TOKENS["cpu"]["1d"], AUTO_PARALLEL_MAX_TOKENS["cpu"]["2d"]
    assert resolve_mode("auto", limit_1d, None, cpu) == "parallel"
    assert resolve_mode("auto", limit_1d + 1, None, cpu) == "chunkwise"
    assert resolve_mode("auto", limit_2d, (1, limit_2d), cpu) == "parallel"
    assert resolve_mode("auto", limit_2d + 1, (1, limit_2d + 1), cpu) == "chunkwise"
    assert resolve_mode("recurrent", 10**6, None, cpu) == "recurrent"  # explicit modes are kept


@pytest.mark.parametrize("tokens", [5, AUTO_PARALLEL_MAX_TOKENS["cpu"]["1d"] + 3])
def test_auto_mode_output_equals_parallel_on_both_sides_of_the_crossover(tokens, rates3):
    q, k, v = random_qkv(1, 3, tokens, 4, seed=tokens)
    assert relative_error(retention(q, k, v, rates3, mode="auto"), retention(q, k, v, rates3)) <= 1e-10


def test_model_in_auto_mode_gives_the_logits_of_parallel_mode():
    torch.manual_seed(0)
    model = create_model("vir_nano_patch16_224", img_size=32, layer_scale_init=1.0).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        model.set_retention_mode("auto")
        assert relative_error(model(x), expected) <= 1e-10


def test_crossover_is_the_longest_length_where_parallel_still_wins():
    rows = [
        {"decay": "1d", "mode": mode, "tokens": tokens, "time_ms": t}
        for mode, tokens, t in [
            ("parallel", 64, 1.0),
            ("chunkwise", 64, 2.0),
            ("parallel", 256, 3.0),
            ("chunkwise", 256, 3.5),
            ("parallel", 1024, 9.0),
            ("chunkwise", 1024, 4.0),
        ]
    ]
    assert crossover(rows, "1d") == 256
    assert crossover([r for r in rows if r["tokens"] == 1024], "1d") == 0


# -- the scan behind batched chunkwise -------------------------------------------------------------


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])  # two code paths: stacked steps, in place
def test_decayed_cumsum_matches_its_definition(exclusive, requires_grad):
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=requires_grad)  # (batch, heads, steps, feature)
    log_gamma = torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64).log()
    out = decayed_cumsum(x, log_gamma, dim=2, exclusive=exclusive)
    for i in range(6):
        last = i - 1 if exclusive else i  # exclusive: the inclusive sum of the step before
        terms = (torch.exp((last - j) * log_gamma)[:, None] * x[:, :, j] for j in range(last + 1))
        expected = sum(terms, torch.zeros(2, 3, 4))
        assert torch.allclose(out[:, :, i], expected.double(), atol=1e-12)


# -- the command ---------------------------------------------------------------------------------

SMALL = [
    "--models",
    "vir_nano_patch16_224",
    "vit_nano_patch16_224",
    "--resolutions",
    "32",
    "64",
    "--batch-sizes",
    "1",
    "--repeats",
    "1",
    "--min-seconds",
    "0",
]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_bench_writes_csv_markdown_and_plots_for_every_configuration(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(["bench", *SMALL, "--modes", "parallel", "chunkwise", "--tasks", "inference", "train", "--out", str(out)])
        == 0
    )
    rows = _rows(out / "results.csv")
    # inference: 2 ViR modes + the ViT, training: ViR parallel + the ViT; two resolutions each
    assert len(rows) == (3 + 2) * 2
    assert {(r["task"], r["mode"]) for r in rows} == {
        ("inference", "parallel"),
        ("inference", "chunkwise"),
        ("inference", "sdpa"),
        ("train", "parallel"),
        ("train", "sdpa"),
    }
    for row in rows:
        assert not row.get("error"), row
        assert float(row["images_per_s"]) > 0 and float(row["peak_mb"]) >= 0
        assert row["machine_torch"] == torch.__version__ and row["machine_device"] == "cpu"
        assert float(row["time_min_ms"]) <= float(row["time_ms"]) <= float(row["time_max_ms"])
    # Same widths and depth: the FLOP counts of ViR and of the ViT (SDPA counted too) agree closely.
    flops = {(r["task"], r["mode"], r["resolution"]): float(r["gflop"]) for r in rows}
    for task in ("inference", "train"):
        for res in ("32", "64"):
            vir, vit = flops[task, "parallel", res], flops[task, "sdpa", res]
            assert vit > 0 and abs(vir - vit) / vit < 0.05
    report = (out / "results.md").read_text()
    assert "| vir_nano_patch16_224 chunkwise |" in report and "×)" in report and "## train, batch 1" in report
    for name in ("throughput_inference_b1.png", "memory_inference_b1.png", "throughput_train_b1.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_sdpa_flops_are_counted_on_the_cpu():
    from torch.utils.flop_counter import FlopCounterMode

    throughput._register_cpu_sdpa_flops()
    q = torch.randn(1, 2, 64, 32)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 2 * (2 * 2 * 64 * 64 * 32)  # QKᵀ and AV, 2 heads


def test_bench_skips_configurations_predicted_not_to_fit(tmp_path, capsys):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                *SMALL,
                "--tasks",
                "inference",
                "--modes",
                "parallel",
                "--max-memory-gb",
                "0.0001",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = _rows(out / "results.csv")
    assert rows and all(r["error"].startswith("skipped: predicted") for r in rows)
    assert "Skipped (predicted not to fit)" in (out / "results.md").read_text()


def test_streaming_runs_above_the_whole_image_limit_and_other_forms_are_skipped(tmp_path):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--models",
                "vir_nano_patch16_224",
                "--resolutions",
                "64",
                "128",
                "--batch-sizes",
                "1",
                "--tasks",
                "inference",
                "--modes",
                "chunkwise",
                "streaming",
                "--band-rows",
                "2",
                "--whole-image-max-resolution",
                "64",
                "--repeats",
                "1",
                "--min-seconds",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {(r["mode"], r["resolution"]): r for r in _rows(out / "results.csv")}
    assert rows[("chunkwise", "128")]["error"].startswith("skipped: whole-image form")
    assert not rows[("streaming", "128")]["error"] and float(rows[("streaming", "128")]["images_per_s"]) > 0
    assert "streaming band 2" in (out / "results.md").read_text()


def test_streaming_memory_prediction_does_not_grow_with_the_height():
    with torch.device("meta"):
        model = create_model("vir_small_patch16_224")
    cfg = dict(task="inference", mode="streaming", batch=1, chunk_size=None)
    inputs = [4 * 3 * r * r / 2**30 for r in (1024, 8192)]
    small, large = (throughput._predicted_gb(model, {**cfg, "resolution": r}) for r in (1024, 8192))
    assert large - inputs[1] < 1.2 * (small - inputs[0])


def test_parallel_memory_prediction_grows_with_the_square_of_the_tokens():
    with torch.device("meta"):
        model = create_model("vir_small_patch16_224")
    cfg = dict(task="inference", mode="parallel", batch=1)
    small, large = (throughput._predicted_gb(model, {**cfg, "resolution": r}) for r in (1024, 2048))
    assert large > 10 * small > 0
    chunkwise = throughput._predicted_gb(model, {**cfg, "mode": "chunkwise", "resolution": 2048})
    assert chunkwise < large / 20


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--models", "vir_smal_patch16_224"], "unknown model"),
        (["--models", "vir_nano_patch16_224", "--resolutions", "100"], "not multiples of"),
        (["--models", "vir_nano_patch16_224", "--batch-sizes", "0"], "positive integer"),
        (["--models", "vir_nano_patch16_224", "--baseline", "vit_tiny_patch16_224"], "--baseline"),
        (["--device", "tpu"], "not supported"),
    ],
)
def test_bench_rejects_bad_arguments_before_running_anything(argv, message, tmp_path, capsys):
    assert main(["bench", *argv, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err
    assert not (tmp_path / "b").exists()


def test_out_of_memory_in_a_worker_is_recorded_not_raised(monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 GB")

    monkeypatch.setattr(throughput, "measure", no_memory)
    cfg = dict(
        task="inference",
        model="vir_nano_patch16_224",
        mode="parallel",
        chunk_size=None,
        resolution=32,
        batch=1,
        device="cpu",
        dtype="float32",
        threads=1,
        repeats=1,
        min_seconds=0,
        allocator="system",
    )
    assert throughput._worker(cfg) == {"error": "OOM"}


def test_keep_freed_memory_takes_effect_with_glibc():
    # In a child process: it changes the allocator for the rest of the process it runs in, and the
    # test suite must keep returning freed memory.
    code = "from vir_lightning.benchmarks.measure import keep_freed_memory; print(keep_freed_memory())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "True"  # Linux/glibc here; elsewhere it returns False and changes nothing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_mode_agrees_with_parallel_on_cuda(rates3):
    q, k, v = (t.cuda() for t in random_qkv(2, 3, 300, 16, seed=1))
    expected = retention(q, k, v, rates3.cuda())
    for mode in ("chunkwise", "recurrent", "auto"):
        assert relative_error(retention(q, k, v, rates3.cuda(), mode=mode), expected) <= 1e-10


def test_bench_measures_hierarchical_models_too(tmp_path):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "--models",
                "hvir_nano",
                "--resolutions",
                "64",
                "--batch-sizes",
                "1",
                "--tasks",
                "inference",
                "--modes",
                "chunkwise",
                "--repeats",
                "1",
                "--min-seconds",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (row,) = _rows(out / "results.csv")
    assert not row.get("error") and float(row["images_per_s"]) > 0
    assert int(row["tokens"]) == (64 // 16) ** 2  # the longest retention sequence: stage 3, stride 16


def test_auto_mode_has_its_own_crossover_for_training():
    cpu = torch.device("cpu")
    limit = AUTO_PARALLEL_MAX_TOKENS["cpu"]["2d_train"]
    assert resolve_mode("auto", limit, (1, limit), cpu, training=True) == "parallel"
    assert resolve_mode("auto", limit + 1, (1, limit + 1), cpu, training=True) == "chunkwise"


def test_bench_training_rows_with_and_without_checkpointing_and_two_option_sets(tmp_path):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                *SMALL,
                "--resolutions",
                "32",
                "--tasks",
                "train",
                "--train-modes",
                "chunkwise",
                "--grad-checkpointing",
                "off",
                "on",
                "--model-kwargs",
                "",
                '{"decay": "2d"}',
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = _rows(out / "results.csv")
    vir = {(r["model_kwargs"], r["grad_checkpointing"]) for r in rows if r["mode"] == "chunkwise"}
    assert vir == {("", "False"), ("", "True"), ('{"decay": "2d"}', "False"), ('{"decay": "2d"}', "True")}
    assert [r["grad_checkpointing"] for r in rows if r["mode"] == "sdpa"] == ["False"]  # the baseline once
    assert all(not r.get("error") for r in rows)
    assert "chunkwise +grad ckpt" in (out / "results.md").read_text()


def test_bench_backbone_times_training_and_mmdetection_baselines(tmp_path, capsys):
    pytest.importorskip("mmdet")
    csv_path = tmp_path / "backbone.csv"
    assert (
        main(
            [
                "bench-backbone",
                "--model",
                "hvir_nano",
                "--size",
                "64",
                "96",
                "--modes",
                "parallel",
                "chunkwise",
                "--tasks",
                "inference",
                "train",
                "--baselines",
                "resnet50",
                "--repeats",
                "1",
                "--min-seconds",
                "0",
                "--csv",
                str(csv_path),
            ]
        )
        == 0
    )
    rows = _rows(csv_path)
    assert [(r["task"], r["model"], r["mode"]) for r in rows] == [
        (task, model, mode)
        for task in ("inference", "train")
        for model, mode in (("hvir_nano", "parallel"), ("hvir_nano", "chunkwise"), ("resnet50", "mmdet"))
    ]
    assert all(not r.get("error") and float(r["time_ms"]) > 0 for r in rows)
    assert 23.4 < float(rows[2]["params_m"]) < 23.6  # MMDetection's ResNet-50 without its classifier: 23.5 M
    chunkwise = next(r for r in rows if r["task"] == "inference" and r["mode"] == "chunkwise")
    assert float(chunkwise["rel_diff"]) < 1e-5
