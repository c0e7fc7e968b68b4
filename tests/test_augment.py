"""Tests for vir_lightning.data.augment: RandAugment ops and sampling, MixUp/CutMix mixing and soft targets.

Images are real Fashion-MNIST digits (28x28 uint8) read straight from the IDX file, plus an RGB version made
by tinting the channels differently, so the ops see natural edges, flat background and a full value range.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # keep albumentations from checking PyPI on import

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import fashion_mnist_images  # noqa: E402

from vir_lightning.data.augment import (  # noqa: E402
    RAND_AUGMENT_OPS,
    SIGNED_OPS,
    MixupCutmix,
    RandAugment,
    smooth_one_hot,
)

NUM_IMAGES = 8
SIDE = 28


@pytest.fixture(scope="module")
def gray_images() -> np.ndarray:
    """NUM_IMAGES real Fashion-MNIST images, (N, 28, 28) uint8 (make test installs the data)."""
    images, _ = fashion_mnist_images(NUM_IMAGES, split="train")
    return images.copy()


@pytest.fixture(scope="module")
def rgb_images(gray_images: np.ndarray) -> np.ndarray:
    """An RGB version: red = the digit, green = a dimmed copy, blue = its negative, (N, 28, 28, 3) uint8."""
    red = gray_images
    green = (gray_images.astype(np.float32) * 0.6).astype(np.uint8)
    blue = 255 - gray_images
    return np.stack([red, green, blue], axis=-1)


@pytest.fixture()
def image(rgb_images: np.ndarray) -> np.ndarray:
    return rgb_images[0]


def _op(name: str, img: np.ndarray, magnitude: float, fill: int = 128) -> np.ndarray:
    return RAND_AUGMENT_OPS[name](img, magnitude, fill)


# ---------------------------------------------------------------------------------------------------------
# RandAugment: shapes and the pipeline
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
@pytest.mark.parametrize("layout", ["HxW", "HxWx1", "HxWx3"])
def test_every_op_keeps_shape_and_uint8_dtype_for_each_layout(
    name: str, layout: str, gray_images: np.ndarray, rgb_images: np.ndarray
) -> None:
    img = {"HxW": gray_images[1], "HxWx1": gray_images[1][:, :, None], "HxWx3": rgb_images[1]}[layout]
    before = img.copy()
    out = RandAugment().apply(img, ops=[(name, 7.0), (name, -7.0) if name in SIGNED_OPS else (name, 3.0)])
    assert out.shape == img.shape
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(img, before)  # the input is never written to


@pytest.mark.parametrize("layout", ["HxW", "HxWx1", "HxWx3"])
def test_randaugment_in_compose_keeps_shape_and_dtype(layout: str, gray_images, rgb_images) -> None:
    pipeline = A.Compose([RandAugment(num_ops=4, magnitude=9)], seed=0)
    for i in range(NUM_IMAGES):
        img = {"HxW": gray_images[i], "HxWx1": gray_images[i][:, :, None], "HxWx3": rgb_images[i]}[layout]
        out = pipeline(image=img)["image"]
        assert out.shape == img.shape and out.dtype == np.uint8


def test_randaugment_changes_most_images_at_magnitude_9(rgb_images: np.ndarray) -> None:
    # With 2 ops, each applied with p=0.5, about 70% of draws should run a non-identity op.
    pipeline = A.Compose([RandAugment(num_ops=2, magnitude=9.0)], seed=0)
    draws = [(img, pipeline(image=img)["image"]) for _ in range(8) for img in rgb_images]
    changed = sum(not np.array_equal(before, after) for before, after in draws)
    assert changed / len(draws) > 0.5


def test_randaugment_with_zero_ops_returns_the_image_unchanged(image: np.ndarray) -> None:
    pipeline = A.Compose([RandAugment(num_ops=0, magnitude=10.0)], seed=0)
    for _ in range(5):
        np.testing.assert_array_equal(pipeline(image=image)["image"], image)


def test_randaugment_is_deterministic_under_compose_seed(rgb_images: np.ndarray) -> None:
    def run(seed: int) -> list[np.ndarray]:
        pipeline = A.Compose([RandAugment(num_ops=3)], seed=seed)
        return [pipeline(image=img)["image"] for _ in range(3) for img in rgb_images]

    first, again, other = run(0), run(0), run(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_randaugment_works_before_normalize_in_compose(image: np.ndarray) -> None:
    pipeline = A.Compose([RandAugment(), A.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3)], seed=0)
    out = pipeline(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_replay_compose_reapplies_the_same_ops(image: np.ndarray) -> None:
    pipeline = A.ReplayCompose([RandAugment(num_ops=3, magnitude=9.0)])  # ReplayCompose takes no seed in 2.0.8
    pipeline.set_random_seed(3)
    for _ in range(5):
        result = pipeline(image=image)
        ops = result["replay"]["transforms"][0]["params"]["ops"]
        assert all(name in RAND_AUGMENT_OPS for name, _ in ops)
        replayed = A.ReplayCompose.replay(result["replay"], image=image)["image"]
        np.testing.assert_array_equal(replayed, result["image"])


def test_randaugment_rejects_float_images(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        RandAugment().apply(image.astype(np.float32), ops=[("Invert", 5.0)])


# ---------------------------------------------------------------------------------------------------------
# RandAugment: sampling of ops and magnitudes
# ---------------------------------------------------------------------------------------------------------


def test_each_op_is_applied_with_probability_one_half() -> None:
    aug = RandAugment(num_ops=4000)
    aug.set_random_seed(0)
    ops = aug.get_params()["ops"]
    assert 1800 < len(ops) < 2200
    names = [name for name, _ in ops]
    assert set(names) == set(RAND_AUGMENT_OPS)  # drawn from every op
    counts = np.array([names.count(n) for n in RAND_AUGMENT_OPS])
    assert counts.min() > 0.6 * len(ops) / len(RAND_AUGMENT_OPS)  # roughly uniform


def test_zero_magnitude_std_uses_the_magnitude_exactly() -> None:
    aug = RandAugment(num_ops=500, magnitude=6.0, magnitude_std=0.0)
    aug.set_random_seed(0)
    ops = aug.get_params()["ops"]
    assert {abs(m) for _, m in ops} == {6.0}
    assert all(m == 6.0 for name, m in ops if name not in SIGNED_OPS)
    # Signed ops go both ways.
    assert {np.sign(m) for name, m in ops if name in SIGNED_OPS} == {-1.0, 1.0}


def test_sampled_magnitudes_follow_the_normal_and_are_clipped_to_0_10() -> None:
    aug = RandAugment(num_ops=4000, magnitude=9.0, magnitude_std=0.5)
    aug.set_random_seed(0)
    magnitudes = np.array([abs(m) for _, m in aug.get_params()["ops"]])
    assert magnitudes.min() >= 0.0 and magnitudes.max() == 10.0  # clipped at the top, not above
    unclipped = magnitudes[magnitudes < 10.0]
    assert abs(np.median(magnitudes) - 9.0) < 0.1
    assert 0.3 < unclipped.std() < 0.5  # a truncated N(9, 0.5) has a slightly smaller spread


# ---------------------------------------------------------------------------------------------------------
# RandAugment: the individual ops
# ---------------------------------------------------------------------------------------------------------


def test_identity_returns_the_image(image: np.ndarray) -> None:
    np.testing.assert_array_equal(_op("Identity", image, 9.0), image)


def test_invert_gives_255_minus_x(image: np.ndarray) -> None:
    np.testing.assert_array_equal(_op("Invert", image, 3.0), 255 - image)


def test_solarize_at_magnitude_10_inverts_every_pixel(image: np.ndarray) -> None:
    np.testing.assert_array_equal(_op("Solarize", image, 10.0), 255 - image)


def test_solarize_at_magnitude_5_inverts_only_pixels_at_or_above_128(image: np.ndarray) -> None:
    out = _op("Solarize", image, 5.0)
    bright = image >= 128
    assert bright.any() and (~bright).any()
    np.testing.assert_array_equal(out[bright], 255 - image[bright])
    np.testing.assert_array_equal(out[~bright], image[~bright])


def test_solarize_at_magnitude_0_changes_nothing(image: np.ndarray) -> None:
    np.testing.assert_array_equal(_op("Solarize", image, 0.0), image)


def test_solarize_add_brightens_only_dark_pixels_and_saturates(image: np.ndarray) -> None:
    out = _op("SolarizeAdd", image, 10.0)  # adds 110
    dark = image < 128
    np.testing.assert_array_equal(out[~dark], image[~dark])
    expected = np.minimum(image[dark].astype(int) + 110, 255)
    np.testing.assert_array_equal(out[dark], expected)


@pytest.mark.parametrize(("magnitude", "kept_bits"), [(0.0, 8), (5.0, 6), (9.0, 5), (10.0, 4)])
def test_posterize_keeps_fewer_bits_as_magnitude_grows(image: np.ndarray, magnitude: float, kept_bits: int) -> None:
    out = _op("Posterize", image, magnitude)
    dropped = 8 - kept_bits
    assert not (out & ((1 << dropped) - 1)).any()  # the low bits are cleared
    np.testing.assert_array_equal(out >> dropped, image >> dropped)  # the high bits are kept


def test_autocontrast_stretches_each_channel_to_the_full_range(image: np.ndarray) -> None:
    low_contrast = (64 + image.astype(np.float32) * 0.25).astype(np.uint8)  # values in [64, 127]
    out = _op("AutoContrast", low_contrast, 0.0)
    for c in range(3):
        assert out[..., c].min() == 0 and out[..., c].max() == 255
    # Monotone: ordering of pixel values is preserved within a channel.
    order = np.argsort(low_contrast[..., 0], axis=None, kind="stable")
    assert np.all(np.diff(out[..., 0].ravel()[order].astype(int)) >= 0)


def test_autocontrast_and_equalize_leave_a_constant_image_alone() -> None:
    flat = np.full((SIDE, SIDE, 3), 77, dtype=np.uint8)
    np.testing.assert_array_equal(_op("AutoContrast", flat, 5.0), flat)
    np.testing.assert_array_equal(_op("Equalize", flat, 5.0), flat)


def test_equalize_flattens_the_histogram_monotonically(gray_images: np.ndarray) -> None:
    img = (gray_images[2] // 2)[:, :, None]  # squeeze into [0, 127] so equalisation has work to do
    out = _op("Equalize", img, 0.0)
    order = np.argsort(img, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # order preserving
    assert out.max() > img.max()  # spread over more of the range

    # The equalised cumulative histogram is closer to a straight line than the original.
    def cdf_gap(x: np.ndarray) -> float:
        cdf = np.cumsum(np.bincount(x.ravel(), minlength=256)) / x.size
        return float(np.abs(cdf - np.linspace(0, 1, 256)).max())

    assert cdf_gap(out) < cdf_gap(img)


def test_color_does_nothing_to_grayscale_and_desaturates_rgb(gray_images, image: np.ndarray) -> None:
    gray = gray_images[0][:, :, None]
    np.testing.assert_array_equal(_op("Color", gray, 10.0), gray)
    out = _op("Color", image, -10.0)  # factor 0.1: nearly gray
    spread_before = np.ptp(image.astype(int), axis=2).mean()
    spread_after = np.ptp(out.astype(int), axis=2).mean()
    assert spread_after < 0.2 * spread_before


def test_brightness_scales_pixel_values(image: np.ndarray) -> None:
    darker = _op("Brightness", image, -10.0)  # factor 0.1
    np.testing.assert_allclose(darker, image * 0.1, atol=0.51)
    brighter = _op("Brightness", image, 5.0)  # factor 1.45, saturating at 255
    np.testing.assert_allclose(brighter, np.minimum(image * 1.45, 255), atol=0.51)


def test_contrast_scales_the_spread_around_the_mean(gray_images: np.ndarray) -> None:
    img = gray_images[3][:, :, None]
    low = _op("Contrast", img, -5.0)  # factor 0.55, no clipping possible when shrinking
    assert abs(low.astype(float).std() - 0.55 * img.astype(float).std()) < 1.0
    assert abs(low.mean() - img.mean()) < 1.0


def test_sharpness_at_zero_is_identity_and_never_changes_the_border(image: np.ndarray) -> None:
    np.testing.assert_array_equal(_op("Sharpness", image, 0.0), image)
    for magnitude in (-10.0, 10.0):
        out = _op("Sharpness", image, magnitude)
        assert not np.array_equal(out, image)
        np.testing.assert_array_equal(out[[0, -1]], image[[0, -1]])
        np.testing.assert_array_equal(out[:, [0, -1]], image[:, [0, -1]])


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"])
def test_geometric_ops_are_identity_at_magnitude_0(image: np.ndarray, name: str) -> None:
    np.testing.assert_array_equal(_op(name, image, 0.0), image)


@pytest.mark.parametrize("fill", [0, 128, 255])
def test_rotate_fills_uncovered_corners_with_fill(image: np.ndarray, fill: int) -> None:
    for magnitude in (10.0, -10.0):  # 30 degrees either way uncovers all four corners
        out = _op("Rotate", image, magnitude, fill=fill)
        for y, x in ((0, 0), (0, SIDE - 1), (SIDE - 1, 0), (SIDE - 1, SIDE - 1)):
            assert (out[y, x] == fill).all()


def test_rotate_turns_content_counter_clockwise_about_the_centre(gray_images: np.ndarray) -> None:
    # Keep a patch right of centre that stays inside the frame at any angle, then follow its centroid.
    img = np.zeros((SIDE, SIDE, 1), dtype=np.uint8)
    img[7:21, 14:25, 0] = gray_images[4][7:21, 14:25]
    centre = (SIDE - 1) / 2

    def centroid(a: np.ndarray) -> np.ndarray:
        ys, xs = np.mgrid[:SIDE, :SIDE]
        w = a[..., 0].astype(float)
        return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum() - centre

    dx, dy = centroid(img)
    for magnitude in (10.0, -10.0):
        theta = np.deg2rad(30.0 * magnitude / 10.0)
        # Counter-clockwise on screen, where y points down.
        expected = np.array([dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)])
        np.testing.assert_allclose(centroid(_op("Rotate", img, magnitude, fill=0)), expected, atol=0.3)


@pytest.mark.parametrize("fill", [0, 200])
def test_translate_x_shifts_content_and_fills_the_gap(image: np.ndarray, fill: int) -> None:
    shift = int(0.45 * SIDE)  # 12.6 px at magnitude 10: 12 whole columns are uncovered
    right = _op("TranslateX", image, 10.0, fill=fill)
    assert (right[:, :shift] == fill).all()
    left = _op("TranslateX", image, -10.0, fill=fill)
    assert (left[:, -shift:] == fill).all()
    # An integer shift (magnitude giving exactly 7 px) moves pixels without interpolation.
    seven = _op("TranslateX", image, 7.0 / (0.45 * SIDE) * 10.0, fill=fill)
    np.testing.assert_array_equal(seven[:, 7:], image[:, :-7])


@pytest.mark.parametrize("fill", [0, 200])
def test_translate_y_shifts_content_and_fills_the_gap(image: np.ndarray, fill: int) -> None:
    shift = int(0.45 * SIDE)
    down = _op("TranslateY", image, 10.0, fill=fill)
    assert (down[:shift] == fill).all()
    up = _op("TranslateY", image, -10.0, fill=fill)
    assert (up[-shift:] == fill).all()
    seven = _op("TranslateY", image, 7.0 / (0.45 * SIDE) * 10.0, fill=fill)
    np.testing.assert_array_equal(seven[7:], image[:-7])


def test_shear_x_keeps_the_first_row_and_fills_a_corner(image: np.ndarray) -> None:
    out = _op("ShearX", image, 10.0, fill=255)  # output (x, y) <- input (x + 0.3 y, y)
    np.testing.assert_array_equal(out[0], image[0])  # y = 0 does not move
    assert (out[-1, -1] == 255).all()  # bottom-right samples from beyond the right edge


def test_shear_y_keeps_the_first_column_and_fills_a_corner(image: np.ndarray) -> None:
    out = _op("ShearY", image, -10.0, fill=0)  # output (x, y) <- input (x, y - 0.3 x)
    np.testing.assert_array_equal(out[:, 0], image[:, 0])
    assert (out[0, -1] == 0).all()  # top-right samples from above the top edge


# ---------------------------------------------------------------------------------------------------------
# RandAugment: argument validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_ops": -1}, r"num_ops must be an integer >= 0, got -1"),
        ({"num_ops": 1.5}, r"num_ops must be an integer >= 0, got 1.5"),
        ({"num_ops": True}, r"num_ops must be an integer >= 0, got True"),
        ({"magnitude": 10.5}, r"magnitude must be a number in \[0, 10\], got 10.5"),
        ({"magnitude": -1}, r"magnitude must be a number in \[0, 10\], got -1"),
        ({"magnitude_std": -0.1}, r"magnitude_std must be a finite number >= 0, got -0.1"),
        ({"fill": 256}, r"fill must be an integer in \[0, 255\], got 256"),
    ],
)
def test_randaugment_rejects_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RandAugment(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# smooth_one_hot
# ---------------------------------------------------------------------------------------------------------


def test_smooth_one_hot_puts_the_smoothing_mass_on_every_class() -> None:
    targets = torch.tensor([0, 3, 9])
    out = smooth_one_hot(targets, num_classes=10, smoothing=0.1)
    assert out.shape == (3, 10) and out.dtype == torch.float32
    expected = torch.full((3, 10), 0.01)
    expected[torch.arange(3), targets] = 0.91
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out.sum(1), torch.ones(3))


def test_smooth_one_hot_without_smoothing_is_plain_one_hot() -> None:
    targets = torch.tensor([2, 0, 1])
    torch.testing.assert_close(smooth_one_hot(targets, 3, 0.0), torch.eye(3)[targets])


@pytest.mark.parametrize(
    ("targets", "num_classes", "smoothing", "message"),
    [
        (torch.tensor([0, 1]), 0, 0.1, r"num_classes must be an integer >= 1, got 0"),
        (torch.tensor([0, 1]), 3, 1.0, r"smoothing must be a number in \[0, 1\), got 1.0"),
        (torch.tensor([0, 3]), 3, 0.1, r"targets must lie in \[0, 3\), got values in \[0, 3\]"),
        (torch.tensor([0.0, 1.0]), 3, 0.1, r"targets must have an integer dtype, got torch.float32"),
    ],
)
def test_smooth_one_hot_rejects_invalid_input(targets, num_classes, smoothing, message) -> None:
    with pytest.raises(ValueError, match=message):
        smooth_one_hot(targets, num_classes, smoothing)


# ---------------------------------------------------------------------------------------------------------
# MixupCutmix
# ---------------------------------------------------------------------------------------------------------

NUM_CLASSES = 10
SMOOTHING = 0.1
OFF = SMOOTHING / NUM_CLASSES
ON = 1.0 - SMOOTHING + OFF


@pytest.fixture()
def batch(gray_images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(8, 3, 28, 28) float images and targets where every sample's partner (batch flipped) differs in class.

    Sample i is offset by i, so every pixel of every sample has a distinct value range [i, i + 1]: a mixed
    pixel's origin can be read off its integer part.
    """
    x = torch.from_numpy(gray_images.astype(np.float32) / 256.0)  # in [0, 1), so floor(x) is the offset
    x = x[:, None].expand(-1, 3, -1, -1).clone() + torch.arange(NUM_IMAGES, dtype=torch.float32)[:, None, None, None]
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    return x, y


def _lam_from_targets(soft: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Recover each row's mixing weight from its own class's entry: t = lam * ON + (1 - lam) * OFF."""
    own = soft[torch.arange(len(y)), y].double()
    return (own - OFF) / (ON - OFF)


def test_soft_targets_are_nonnegative_and_rows_sum_to_one(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES, label_smoothing=SMOOTHING)
    torch.manual_seed(0)
    for _ in range(20):
        _, soft = mix(x, y)
        assert soft.shape == (NUM_IMAGES, NUM_CLASSES) and soft.dtype == x.dtype
        assert (soft >= 0).all()
        torch.testing.assert_close(soft.sum(1), torch.ones(NUM_IMAGES))


def test_soft_targets_follow_the_images_dtype(batch) -> None:
    x, y = batch
    _, soft = MixupCutmix(NUM_CLASSES)(x.double(), y)
    assert soft.dtype == torch.float64


def test_mixup_output_is_the_lam_blend_implied_by_the_targets(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=SMOOTHING)
    torch.manual_seed(0)
    for _ in range(10):
        mixed, soft = mix(x, y)
        lam = _lam_from_targets(soft, y)
        assert torch.allclose(lam, lam[0].expand_as(lam), atol=1e-6)  # one lam for the whole batch
        lam = float(lam[0])
        assert 0.0 < lam < 1.0
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=0)
        # The partner's class gets the complementary weight.
        partner = soft[torch.arange(NUM_IMAGES), y.flip(0)].double()
        torch.testing.assert_close(partner, torch.full_like(partner, (1 - lam) * ON + lam * OFF), atol=1e-6, rtol=0)


def _check_cutmix(x: torch.Tensor, y: torch.Tensor, mixed: torch.Tensor, soft: torch.Tensor) -> float:
    """Assert every pixel comes from x or x.flip(0) inside one box, and the box matches lam; return 1 - lam."""
    source = torch.floor(mixed[:, 0])  # the integer part names the sample a pixel came from
    own = torch.arange(NUM_IMAGES, dtype=torch.float32)[:, None, None]
    from_self = source == own
    from_partner = source == own.flip(0)
    assert (from_self | from_partner).all()
    torch.testing.assert_close(mixed[from_self[:, None].expand_as(mixed)], x[from_self[:, None].expand_as(x)])
    pasted = from_partner[0]  # sample 0 and 7 differ, so sample 0 shows the box unambiguously
    assert (from_partner == pasted).all()  # one box for the whole batch (B is even: no sample pairs with itself)
    rows, cols = pasted.any(1).nonzero(), pasted.any(0).nonzero()
    if pasted.any():  # it is a filled rectangle
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert int(box) == int(pasted.sum())
    fraction = float(pasted.sum()) / (SIDE * SIDE)
    lam = _lam_from_targets(soft, y)
    torch.testing.assert_close(lam, torch.full_like(lam, 1.0 - fraction), atol=1e-6, rtol=0)
    return fraction


def test_cutmix_pastes_one_box_from_the_flipped_batch_and_lam_is_its_exact_area(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=SMOOTHING)
    torch.manual_seed(0)
    fractions = [_check_cutmix(x, y, *mix(x, y)) for _ in range(30)]
    # The boxes vary in size, so the check above saw real, partial pastes.
    assert len({round(f, 6) for f in fractions}) > 10
    assert any(0.0 < f < 1.0 for f in fractions)


def test_switch_prob_one_always_picks_cutmix_and_zero_always_mixup(batch) -> None:
    x, y = batch
    torch.manual_seed(1)
    cutmix = MixupCutmix(NUM_CLASSES, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=1.0, label_smoothing=SMOOTHING)
    for _ in range(5):
        _check_cutmix(x, y, *cutmix(x, y))
    mixup = MixupCutmix(NUM_CLASSES, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.0, label_smoothing=SMOOTHING)
    for _ in range(5):
        mixed, soft = mixup(x, y)
        lam = float(_lam_from_targets(soft, y)[0])
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-5, rtol=0)


def test_prob_zero_returns_images_unchanged_with_smoothed_one_hot_targets(batch) -> None:
    x, y = batch
    mixed, soft = MixupCutmix(NUM_CLASSES, prob=0.0, label_smoothing=SMOOTHING)(x, y)
    assert torch.equal(mixed, x)
    torch.testing.assert_close(soft, smooth_one_hot(y, NUM_CLASSES, SMOOTHING))


def test_both_alphas_zero_never_mixes(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0)
    for _ in range(5):
        mixed, soft = mix(x, y)
        assert torch.equal(mixed, x)
        torch.testing.assert_close(soft, torch.eye(NUM_CLASSES)[y])


def test_prob_one_half_mixes_about_half_the_batches(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES, prob=0.5)
    torch.manual_seed(0)
    mixed_calls = sum(not torch.equal(mix(x, y)[0], x) for _ in range(200))
    assert 70 < mixed_calls < 130


def test_mixup_cutmix_is_deterministic_under_torch_manual_seed(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES)

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [t for _ in range(6) for t in mix(x, y)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(("mixup_alpha", "cutmix_alpha"), [(0.8, 0.0), (0.0, 1.0)])
def test_mixup_cutmix_does_not_modify_its_inputs(batch, mixup_alpha: float, cutmix_alpha: float) -> None:
    x, y = batch
    x_before, y_before = x.clone(), y.clone()
    torch.manual_seed(0)
    mix = MixupCutmix(NUM_CLASSES, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)
    for _ in range(5):
        mixed, _ = mix(x, y)
        assert not torch.equal(mixed, x)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"num_classes": 10, "mixup_alpha": -0.1}, r"mixup_alpha must be a finite number >= 0.*got -0.1"),
        ({"num_classes": 10, "cutmix_alpha": -1}, r"cutmix_alpha must be a finite number >= 0.*got -1"),
        ({"num_classes": 10, "prob": 1.5}, r"prob must be a probability in \[0, 1\], got 1.5"),
        ({"num_classes": 10, "switch_prob": -0.5}, r"switch_prob must be a probability in \[0, 1\], got -0.5"),
        ({"num_classes": 10, "label_smoothing": 1.0}, r"label_smoothing must be a number in \[0, 1\), got 1.0"),
    ],
)
def test_mixup_cutmix_rejects_invalid_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixupCutmix(**kwargs)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (torch.zeros(NUM_IMAGES), r"targets must have an integer dtype, got torch.float32"),
        (torch.zeros(NUM_IMAGES, 1, dtype=torch.long), r"targets must be 1D \(batch,\) class indices, got shape"),
        (torch.full((NUM_IMAGES,), NUM_CLASSES), r"targets must lie in \[0, 10\), got values in \[10, 10\]"),
        (torch.full((NUM_IMAGES,), -1), r"targets must lie in \[0, 10\), got values in \[-1, -1\]"),
        (torch.zeros(NUM_IMAGES - 1, dtype=torch.long), r"same batch size, got 8 and 7"),
    ],
)
def test_mixup_cutmix_rejects_invalid_targets(batch, targets: torch.Tensor, message: str) -> None:
    x, _ = batch
    with pytest.raises(ValueError, match=message):
        MixupCutmix(NUM_CLASSES)(x, targets)


def test_mixup_cutmix_rejects_images_that_are_not_4d_float(batch) -> None:
    x, y = batch
    mix = MixupCutmix(NUM_CLASSES)
    with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) floating-point tensor"):
        mix(x[:, 0], y)
    with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) floating-point tensor"):
        mix(x.to(torch.uint8), y)
