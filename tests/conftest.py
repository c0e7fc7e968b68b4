"""Shared helpers: an independent brute-force retention and a relative-error measure."""

from __future__ import annotations

import os

import pytest
import torch

# The Triton kernels' tests run them on the CPU through Triton's interpreter, which is chosen when a
# kernel is defined (module import), so it is switched on before any test imports one. Where CUDA is
# present the real kernels run instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual − expected| / max |expected| (the scale-free error used throughout)."""
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual - expected).abs().max() / scale).item()


def brute_force_retention(q, k, v, rates, grid_shape=None, class_token=False, directions=1):
    """Σ_j D[i, j] (q_i·k_j) v_j with D written out pair by pair from docs/design/method.md §1–2 (Python loops)."""
    batch, heads, tokens, _ = q.shape
    out = torch.zeros(batch, heads, tokens, v.shape[-1], dtype=q.dtype)
    if grid_shape is None:
        positions = [(n, 0) for n in range(tokens)]
    else:
        rows, cols = grid_shape
        positions = [(n % cols, n // cols) for n in range(rows * cols)] + ([(cols - 1, rows)] if class_token else [])
    for h in range(heads):
        gamma = float(rates[h])
        for i in range(tokens):
            for j in range(tokens):
                dx = positions[i][0] - positions[j][0]
                dy = positions[i][1] - positions[j][1]
                if grid_shape is None:
                    visible = dx >= 0
                else:
                    upper_left, lower_right = dx >= 0 and dy >= 0, dx <= 0 and dy <= 0
                    visible = {1: upper_left, 2: upper_left or lower_right, 4: True}[directions]
                if visible:
                    weight = gamma ** (abs(dx) + abs(dy))
                    out[:, h, i] += weight * (q[:, h, i] * k[:, h, j]).sum(-1, keepdim=True) * v[:, h, j]
    return out


def random_qkv(batch, heads, tokens, head_dim, value_dim=None, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, tokens, head_dim)] * 2 + [(batch, heads, tokens, value_dim or head_dim)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(requires_grad) for s in shapes]


@pytest.fixture
def rates3():
    """Three heads with short, medium and long horizons (float64)."""
    return torch.tensor([0.5, 0.9, 0.97], dtype=torch.float64)


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_images(count: int, offset: int = 0, split: str = "t10k"):
    """Real 28×28 pixels and labels from Debian's Fashion-MNIST files (split "train" or "t10k")."""
    from vir_lightning.data.fashion_mnist import read_idx

    images = read_idx(f"{FASHION_MNIST}/{split}-images-idx3-ubyte.gz")[offset : offset + count]
    labels = read_idx(f"{FASHION_MNIST}/{split}-labels-idx1-ubyte.gz")[offset : offset + count]
    return images, labels


def write_image_folder(root, per_class_train=8, per_class_val=3, size=32):
    """root/{train,val}/<class>/ from real pixels, in every format the loader must handle:
    grayscale PNG, RGB JPG, RGBA PNG, upper-case suffixes."""
    import cv2
    import numpy as np

    names = {0: "tshirt", 1: "trouser", 7: "sneaker"}
    images, labels = fashion_mnist_images(600)
    counters = dict.fromkeys(names, 0)
    for image, label in zip(images, labels, strict=True):
        label = int(label)
        if label not in names:
            continue
        n = counters[label]
        if n >= per_class_train + per_class_val:
            continue
        counters[label] += 1
        split = "train" if n < per_class_train else "val"
        folder = root / split / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        big = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)
        kind = n % 4
        if kind == 0:
            cv2.imwrite(str(folder / f"{n}.png"), big)  # grayscale
        elif kind == 1:
            tinted = np.stack([big, big // 2, 255 - big], axis=-1)
            cv2.imwrite(str(folder / f"{n}.jpg"), tinted)
        elif kind == 2:
            rgba = np.dstack([big, big, big, np.full_like(big, 200)])
            cv2.imwrite(str(folder / f"{n}.PNG"), rgba)
        else:
            cv2.imwrite(str(folder / f"{n}.JPEG"), np.stack([big] * 3, axis=-1))
    return sorted(names.values())


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_folder")
    write_image_folder(root)
    return root


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """Weights (a plain state_dict) of the quickstart ViR cut down to width 32, depth 2, for the
    commands that need trained weights (predict, validate) without training first."""
    from vir_lightning.models import create_model

    path = tmp_path_factory.mktemp("weights") / "tiny_vir.pt"
    model = create_model(
        "vir_nano_patch4_28", num_classes=10, img_size=28, in_chans=1, embed_dim=32, depth=2, num_heads=2
    )
    torch.save(model.state_dict(), path)
    return str(path)


def require_mm() -> None:
    """Skip a test module when the OpenMMLab tier is not installed — or fail, under VIR_REQUIRE_MM=1
    (``make test`` sets it: there the tier must be present, and a skip would hide a broken install)."""
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
        import mmseg  # noqa: F401
    except ImportError as err:
        if os.environ.get("VIR_REQUIRE_MM"):
            pytest.fail(
                f"VIR_REQUIRE_MM=1 but the OpenMMLab tier is not importable ({err}); run `make mm`", pytrace=False
            )
        pytest.skip(f"OpenMMLab tier not installed ({err}); `make mm` installs it", allow_module_level=True)


def saved_tensor_bytes(fn) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn()`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def declared_entry_points(group: str = "vir_lightning.commands") -> list:
    """The entry points pyproject.toml declares in ``group``, as importlib.metadata would list them
    once installed (an install records them when it runs, so a checkout may be ahead of it)."""
    import re
    from importlib.metadata import EntryPoint
    from pathlib import Path

    # (the table's ``name = "module:function"`` lines read by hand: tomllib is Python 3.11+)
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    table = text.split(f'[project.entry-points."{group}"]', 1)[1].split("\n[", 1)[0]
    return [EntryPoint(name, value, group) for name, value in re.findall(r'^([\w.-]+)\s*=\s*"([^"]+)"', table, re.M)]


@pytest.fixture
def declared_commands(monkeypatch):
    """``python -m vir_lightning`` with the commands pyproject.toml registers (``build-mini-datasets``
    of ``downstream``), whether or not the installed metadata has caught up with it yet."""
    import vir_lightning.cli as cli

    monkeypatch.setattr(cli, "_entry_points", declared_entry_points)
