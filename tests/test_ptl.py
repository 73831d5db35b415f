"""The ptl network: shapes, LTL/PTL against slow references written from the paper's equations,
edge cases, residual reconstruction, the loss, the shipped weights, maps, and training."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harmony_core import imaging
from harmony_core.errors import InputError
from harmony_core.methods.classical import _seam_values, poisson_affine, poisson_offset
from harmony_core.methods.ptl import (
    MAP_NAMES,
    PAPER_WEIGHTS,
    SHIPPED_WEIGHTS,
    PTLMethod,
    PTLPaperMethod,
    resize_window,
    spread_blocks,
)
from harmony_core.models.ptl_net import (
    LTL,
    PTL,
    PTLConfig,
    PTLNet,
    apply_affine,
    block_means,
    compose_affine,
    foreground_mse_loss,
)
from harmony_core.types import HarmonizationRequest


def test_parameter_count_matches_the_paper() -> None:
    model = PTLNet(PTLConfig(width=1.0))  # the paper's width
    total = sum(p.numel() for p in model.parameters())
    ltl = sum(p.numel() for p in model.ltl.parameters())
    ptl = sum(p.numel() for p in model.ptl.parameters())
    print(f"ptl network: {total:,} parameters (LTL {ltl:,}, PTL {ptl:,})")
    assert 9.3e6 < total < 9.6e6  # paper: 9.48M
    assert ptl == 64 * 16 * 16 * 64 + 64  # Linear(C*16*16 -> C) at C = 64
    assert (model.ptl.block, model.ptl.stride) == (16, 4)
    assert F.unfold(torch.zeros(1, 1, 128, 128), 16, stride=4).shape[-1] == 29 * 29  # 841 blocks


def test_forward_shapes_and_small_variant() -> None:
    torch.manual_seed(0)
    model = PTLNet(PTLConfig(width=0.25)).eval()
    image = torch.rand(2, 3, 256, 256)
    mask = torch.zeros(2, 1, 256, 256)
    mask[:, :, 60:150, 90:200] = 1
    with torch.no_grad():
        out = model(image, mask).image
    assert out.shape == image.shape
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError):
        PTLNet(PTLConfig(image_size=128))


def _mask(h: int, w: int, seed: int) -> torch.Tensor:
    """A blob covering roughly a third of the map, as 1 x 1 x h x w."""
    g = torch.Generator().manual_seed(seed)
    noise = F.interpolate(torch.rand(1, 1, 3, 3, generator=g), size=(h, w), mode="bilinear", align_corners=False)
    return (noise > noise.flatten().quantile(0.65)).float()


def ltl_reference(layer: LTL, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eqs. 1-2 for one image with loops and explicit single-head attention."""
    c, h, w = features.shape[1:]
    attention = layer.attention_layer
    wq, wk, wv = attention.in_proj_weight.chunk(3)
    bq, bk, bv = attention.in_proj_bias.chunk(3)
    t = features[0].reshape(c, -1).T  # L x C
    q, k, v = t @ wq.T + bq, t @ wk.T + bk, t @ wv.T + bv
    sa = torch.softmax(q @ k.T / math.sqrt(c), dim=-1) @ v
    t = t + sa @ attention.out_proj.weight.T + attention.out_proj.bias
    t = (t - t.mean(0)) / torch.sqrt(t.var(0, unbiased=False) + layer.norm.eps)
    fg = (F.adaptive_avg_pool2d(mask, (h, w)) > 0.5).flatten()
    out = t.clone()
    tb = t[~fg]
    for i in torch.nonzero(fg).flatten():
        r = torch.softmax(t[i] @ tb.T / math.sqrt(c), dim=0) @ tb
        out[i] = layer.fuse(torch.cat([t[i], r]))
    return out.T.reshape(1, c, h, w)


def ptl_reference(layer: PTL, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eqs. 3-5 for one image, block by block."""
    c, h, w = features.shape[1:]
    k, s = layer.block, layer.stride
    soft = F.adaptive_avg_pool2d(mask, (h, w))[0, 0]
    mb = 1 - soft
    f = features[0]
    mus, sigmas, tokens, valid = [], [], [], []
    for top in range(0, h - k + 1, s):
        for left in range(0, w - k + 1, s):
            block, patch = f[:, top:top + k, left:left + k], mb[top:top + k, left:left + k]
            area = patch.sum()
            mu = (block * patch).sum(dim=(1, 2)) / area.clamp_min(1e-8)
            var = ((block - mu[:, None, None]) ** 2 * patch).sum(dim=(1, 2)) / area.clamp_min(1e-8)
            sigma = torch.sqrt(var + layer.eps)
            normalized = (block - mu[:, None, None]) / sigma[:, None, None] * patch
            mus.append(mu)
            sigmas.append(sigma)
            tokens.append(layer.project(normalized.flatten()))
            valid.append(bool(patch.mean() >= layer.min_coverage))
    mu, sigma, cb = torch.stack(mus), torch.stack(sigmas), torch.stack(tokens)
    valid_t = torch.tensor(valid)
    fg = (soft > 0.5).flatten()
    flat = f.reshape(c, -1).T.clone()
    tf = flat[fg]
    cf = (tf - tf.mean(0)) / torch.sqrt(tf.var(0, unbiased=False) + layer.eps)
    logits = cf @ cb[valid_t].T / math.sqrt(c)
    weights = torch.softmax(logits, dim=-1)
    flat[fg] = cf * (weights @ sigma[valid_t]) + weights @ mu[valid_t]
    return flat.T.reshape(1, c, h, w)


def test_ltl_matches_the_equations() -> None:
    torch.manual_seed(1)
    layer = LTL(8).eval()
    features, mask = torch.randn(1, 8, 6, 6), _mask(24, 24, 1)
    with torch.no_grad():
        torch.testing.assert_close(layer(features, mask)[0], ltl_reference(layer, features, mask), atol=1e-5, rtol=1e-4)


def test_ptl_matches_the_equations() -> None:
    torch.manual_seed(2)
    config = PTLConfig(block_divisor=4, stride_divisor=8, ptl_write="replace")  # 16 px map: 4x4 blocks, stride 2, 7x7 blocks
    layer = PTL(6, 16, config)
    features, mask = torch.randn(1, 6, 16, 16) * 2 + 0.5, _mask(32, 32, 2)
    with torch.no_grad():
        out = layer(features, mask)[0]
        torch.testing.assert_close(out, ptl_reference(layer, features, mask), atol=1e-4, rtol=1e-4)
    background = (F.adaptive_avg_pool2d(mask, (16, 16)) <= 0.5).expand_as(features)
    assert torch.equal(out[background], features[background])


def test_ptl_add_variant_adds_the_translation() -> None:
    torch.manual_seed(2)
    replace = PTL(6, 16, PTLConfig(block_divisor=4, stride_divisor=8, ptl_write="replace"))
    add = PTL(6, 16, PTLConfig(block_divisor=4, stride_divisor=8, ptl_write="add"))
    add.load_state_dict(replace.state_dict())
    features, mask = torch.randn(1, 6, 16, 16), _mask(32, 32, 2)
    foreground = (F.adaptive_avg_pool2d(mask, (16, 16)) > 0.5).expand_as(features)
    with torch.no_grad():
        expected = torch.where(foreground, features + replace(features, mask)[0], features)
        torch.testing.assert_close(add(features, mask)[0], expected)


def test_ptl_batches_like_single_images() -> None:
    torch.manual_seed(3)
    layer = PTL(4, 16, PTLConfig(block_divisor=4, stride_divisor=8))
    features = torch.randn(2, 4, 16, 16)
    masks = torch.cat([_mask(16, 16, 4), _mask(16, 16, 5)])
    with torch.no_grad():
        both = layer(features, masks)[0]
        for i in range(2):
            torch.testing.assert_close(both[i:i + 1], layer(features[i:i + 1], masks[i:i + 1])[0])


def test_no_background_and_no_foreground_pass_through() -> None:
    torch.manual_seed(4)
    ptl = PTL(4, 16, PTLConfig(block_divisor=4, stride_divisor=8))
    ltl = LTL(4).eval()
    features = torch.randn(1, 4, 16, 16)
    everything, nothing = torch.ones(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(ptl(features, everything)[0], features)  # no background block
        assert torch.equal(ptl(features, nothing)[0], features)  # no foreground location
        assert torch.equal(ltl(features, everything)[0], features)  # no background token
        out = ltl(features, nothing)[0]  # background tokens keep the self-attended, normalized T
    assert torch.isfinite(out).all() and not torch.equal(out, features)
    # A foreground so large that no block keeps 25% background: PTL must leave it alone too.
    almost = torch.ones(1, 1, 16, 16)
    almost[..., 0, 0] = 0
    with torch.no_grad():
        assert torch.equal(ptl(features, almost)[0], features)


@pytest.mark.slow
def test_gradients_are_finite_on_edge_cases() -> None:
    torch.manual_seed(5)
    model = PTLNet(PTLConfig(width=0.25))
    image = torch.rand(3, 3, 256, 256)
    mask = torch.zeros(3, 1, 256, 256)
    mask[0] = 1  # all foreground
    mask[2, :, 100:180, 40:90] = 1  # a normal object; sample 1 has no foreground at all
    foreground_mse_loss(model(image, mask).image, torch.rand_like(image), mask).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_residual_reconstruction_keeps_the_background() -> None:
    torch.manual_seed(6)
    model = PTLNet(PTLConfig(width=0.25, head="residual", prior="none")).eval()
    torch.nn.init.normal_(model.to_rgb.weight)  # it starts at zero: the composite unchanged
    image = torch.rand(1, 3, 256, 256)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 30:90, 100:220] = 1
    with torch.no_grad():
        out = model(image, mask).image
    outside = (mask == 0).expand_as(image)
    torch.testing.assert_close(out[outside], image[outside], atol=1e-6, rtol=0)
    assert (out[~outside] - image[~outside]).abs().max() > 1e-3


def test_affine_head_starts_at_the_prior_and_keeps_the_background() -> None:
    torch.manual_seed(6)
    model = PTLNet(PTLConfig(width=0.25)).eval()
    image = torch.rand(2, 3, 256, 256)
    mask = torch.zeros(2, 1, 256, 256)
    mask[..., 30:90, 100:220] = 1
    prior = torch.zeros(2, 12)
    prior[1, 0], prior[1, 9] = -0.2, 0.05  # red scaled by 0.8, plus 0.05
    with torch.no_grad():
        out = model(image, mask, prior)
    torch.testing.assert_close(out.image[0], image[0])  # zero-initialized head: the identity
    expected = image[1].clone()
    expected[0] = image[1, 0] * 0.8 + 0.05
    torch.testing.assert_close(out.image[1], torch.where(mask[1].bool(), expected, image[1]))
    torch.nn.init.normal_(model.to_params.weight, std=0.1)
    with torch.no_grad():
        changed = model(image, mask, prior).image
    outside = (mask == 0).expand_as(image)
    assert torch.equal(changed[outside], image[outside])
    assert (changed[~outside] - out.image[~outside]).abs().max() > 1e-3


def test_compose_affine_is_applying_one_after_the_other() -> None:
    torch.manual_seed(9)
    outer, inner, image = torch.randn(2, 12, 5, 7) * 0.2, torch.randn(2, 12) * 0.2, torch.rand(2, 3, 5, 7)
    inner_map = inner[:, :, None, None].expand(2, 12, 5, 7)
    torch.testing.assert_close(apply_affine(compose_affine(outer, inner), image),
                               apply_affine(outer, apply_affine(inner_map, image)), atol=1e-5, rtol=1e-5)


def test_poisson_affine_takes_the_border_colour_and_keeps_texture() -> None:
    """A textured object pasted 40 grey levels too bright into a flat background: the map fitted
    to the Poisson blend removes the offset but keeps the texture's contrast."""
    rng = np.random.default_rng(0)
    background = np.array([90.0, 120.0, 150.0])
    real = np.broadcast_to(background, (64, 64, 3)).copy()
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    texture = rng.normal(0, 12, size=(int(mask.sum()), 1))
    real[mask] = background + texture
    composite = real.copy()
    composite[mask] += 40
    params = poisson_affine(np.clip(composite, 0, 255).astype(np.uint8), mask)
    matrix, offset = np.eye(3) + params[:9].reshape(3, 3), params[9:]
    fixed = (composite[mask] / 255.0) @ matrix.T + offset
    assert np.abs(fixed.mean(axis=0) * 255 - real[mask].mean(axis=0)).max() < 6  # was 40
    assert 0.7 < np.diag(matrix).mean() < 1.3  # the texture's contrast is kept, not flattened
    assert not poisson_affine(composite.astype(np.uint8), np.zeros((64, 64), bool)).any()


def test_seam_values_match_a_loop_over_neighbours() -> None:
    rng = np.random.default_rng(2)
    image, mask = rng.normal(size=(9, 11, 3)), rng.random((9, 11)) > 0.6
    total, count = np.zeros_like(image), np.zeros(mask.shape)
    for y, x in zip(*np.nonzero(~mask)):
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            if 0 <= y + dy < 9 and 0 <= x + dx < 11 and mask[y + dy, x + dx]:
                total[y, x] += image[y, x] - image[y + dy, x + dx]
                count[y, x] += 1
    got_total, got_count = _seam_values(image, mask)
    np.testing.assert_allclose(got_total, total)
    np.testing.assert_array_equal(got_count, count)


def test_coarse_poisson_offset_stays_close_to_the_banded_one() -> None:
    """The prior's solve (coarse grid, no exact border band) against the banded one on a smooth
    scene: the same offset inside the object up to a few grey levels."""
    yy, xx = np.mgrid[0:96, 0:96] / 96.0
    image = np.stack([80 + 60 * yy, 120 + 40 * xx, 150 - 50 * yy * xx], axis=-1)
    mask = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.12
    image[mask] += 35
    banded, coarse = poisson_offset(image, mask, 400), poisson_offset(image, mask, 400, border_band=False)
    assert mask.sum() > 400 and not coarse[~mask].any()
    assert np.abs(coarse[mask] - banded[mask]).mean() < 2.0 and abs(banded[mask].mean() + 35) < 8


def test_block_means_and_window_resize_match_torch() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 5, 32, 32)
    torch.testing.assert_close(block_means(x, 8, 4), F.avg_pool2d(x, 8, 4))
    torch.testing.assert_close(block_means(x, 6, 4), F.avg_pool2d(x, 6, 4))  # sizes without cells
    grid = torch.randn(12, 16, 16)
    full = F.interpolate(grid[None], size=(70, 45), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(resize_window(grid, (70, 45), slice(5, 61), slice(0, 30)), full[:, 5:61, :30])


def test_foreground_loss_formula() -> None:
    out, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2, :2] = 1  # 4 pixels -> clamped to A_min
    mask[1] = 1
    out[:, 0] = 0.1  # error 25.5 in the red channel everywhere
    expected_0 = 4 * 25.5**2 / 100
    expected_1 = 16 * 25.5**2 / 100
    loss = foreground_mse_loss(out, target, mask, min_area=100)
    assert loss.item() == pytest.approx((expected_0 + expected_1) / 2, rel=1e-5)
    assert foreground_mse_loss(out, target, mask, min_area=1).item() == pytest.approx(25.5**2, rel=1e-5)


def test_save_and_load_round_trip(tmp_path) -> None:
    torch.manual_seed(7)
    model = PTLNet(PTLConfig(width=0.25)).eval()
    model.save_pretrained(tmp_path)
    loaded = PTLNet.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.half().float(), b) if a.is_floating_point() else torch.equal(a, b), name


def test_spread_blocks_covers_footprints() -> None:
    weights = torch.zeros(7 * 7)
    weights[0] = 1.0  # the top-left 4x4 block
    out = spread_blocks(weights, torch.ones(16, 16), block=4, stride=2)
    assert out[:4, :4].eq(1).all() and out.sum() == 16


# --- the shipped weights through the method ---------------------------------------------------

@pytest.fixture(scope="module")
def shipped() -> PTLMethod:
    method = PTLMethod()
    if not method.available():
        pytest.fail(f"the shipped ptl weights must load: {method.available().reason}")
    return method


def _cat_request(**extra) -> HarmonizationRequest:
    from tests.conftest import ROOT

    composite = imaging.load_rgb(ROOT / "examples" / "cat_composite.jpg")
    mask = imaging.load_mask(ROOT / "examples" / "cat_mask.png")
    return HarmonizationRequest(composite=composite, mask=mask, **extra)


def test_shipped_weights_load_and_harmonize(shipped: PTLMethod) -> None:
    assert shipped.weights == SHIPPED_WEIGHTS
    request = _cat_request()
    result = shipped.run(request)
    assert result.image.shape == request.composite.shape
    assert np.array_equal(result.image[~request.mask], request.composite[~request.mask])
    assert not np.array_equal(result.image[request.mask], request.composite[request.mask])
    assert result.metadata["weights"] == str(SHIPPED_WEIGHTS)


def test_maps_are_normalized_sized_and_zero_on_the_object(shipped: PTLMethod) -> None:
    request = _cat_request()
    maps = shipped.run(request).maps
    assert set(maps) == set(MAP_NAMES)
    for name, value in maps.items():
        assert value.shape == request.mask.shape, name
        assert value.min() >= 0 and value.max() == pytest.approx(1.0), name
        assert np.all(value[request.mask] == 0), name


def test_shipped_paper_weights_are_the_paper_network() -> None:
    """weights/ptl-paper: the residual network of the paper (no prior) at width 0.5, with maps like ptl's."""
    method = PTLPaperMethod()
    assert method.available(), method.available().reason
    config = method.model.config
    assert (config.head, config.prior, config.width, config.ptl_write) == ("residual", "none", 0.5, "add")
    assert hasattr(method.model, "to_rgb") and not hasattr(method.model, "to_params")  # eq. 7's RGB output
    assert {p.name for p in PAPER_WEIGHTS.iterdir()} >= {"README.md", "config.json", "model.safetensors", "curve.csv"}
    request = _cat_request()
    result = method.run(request)
    assert result.metadata["weights"] == str(PAPER_WEIGHTS) and set(result.maps) == set(MAP_NAMES)
    assert np.array_equal(result.image[~request.mask], request.composite[~request.mask])
    assert not np.array_equal(result.image[request.mask], request.composite[request.mask])


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> PTLMethod:
    """A randomly initialized small network: its attention differs from location to location
    whatever the shipped weights have learned, so the test does not depend on training."""
    folder = tmp_path_factory.mktemp("ptl-random")
    torch.manual_seed(8)
    PTLNet(PTLConfig(width=0.25, ptl_write="add")).save_pretrained(folder)
    return PTLMethod(weights=folder)


def test_point_map_follows_the_point(untrained: PTLMethod) -> None:
    base = _cat_request()
    ys, xs = np.nonzero(base.mask)
    top = (int(xs[np.argmin(ys)]), int(ys.min()))
    bottom = (int(xs[np.argmax(ys)]), int(ys.max()))
    first = untrained.run(_cat_request(point=top)).maps
    second = untrained.run(_cat_request(point=bottom)).maps
    for name in ("ptl point contribution", "ltl point attention"):
        assert np.abs(first[name] - second[name]).max() > 0.01, name
    for name in ("ptl background contribution", "ltl attention"):
        assert np.array_equal(first[name], second[name]), name


def _textured_request() -> HarmonizationRequest:
    rng = np.random.default_rng(0)
    composite = np.full((768, 1024, 3), 120, np.uint8)
    composite[:, :512] = (60, 110, 170)
    mask = np.zeros((768, 1024), bool)
    mask[200:600, 300:800] = True
    composite[mask] = rng.integers(100, 220, size=(int(mask.sum()), 3), dtype=np.uint8)  # pixel noise
    return HarmonizationRequest(composite=composite, mask=mask)


def test_full_resolution_keeps_detail(tmp_path) -> None:
    """Residual head: the change is the upsampled 256-px residual, smooth, so the texture survives."""
    torch.manual_seed(10)
    model = PTLNet(PTLConfig(width=0.25, head="residual", prior="none"))
    torch.nn.init.normal_(model.to_rgb.weight, std=0.05)
    model.save_pretrained(tmp_path)
    request = _textured_request()
    result = PTLMethod(weights=tmp_path).run(request).image
    composite = request.composite
    change = result.astype(np.float32) - composite.astype(np.float32)
    inner = change[210:590, 310:790]
    assert np.abs(inner).mean() > 0.5  # it does change the object
    # Neighbouring pixels change by almost the same amount, whereas the texture differs wildly.
    assert np.abs(np.diff(inner, axis=1)).mean() < 1.0
    assert np.abs(np.diff(composite[210:590, 310:790].astype(np.float32), axis=1)).mean() > 30


def test_shipped_affine_head_maps_full_resolution_colours(shipped: PTLMethod) -> None:
    """Affine head: every output pixel is a smoothly varying 3x4 map of its own input colour, so the
    object's pixel texture survives exactly up to that map (one global fit explains the inner
    region to within a few grey levels) and keeps its contrast."""
    request = _textured_request()
    result = shipped.run(request).image.astype(np.float64)[210:590, 310:790].reshape(-1, 3)
    source = request.composite.astype(np.float64)[210:590, 310:790].reshape(-1, 3)
    design = np.c_[source, np.ones(len(source))]
    fitted = design @ np.linalg.lstsq(design, result, rcond=None)[0]
    assert np.sqrt(((fitted - result) ** 2).mean()) < 3.0
    assert result.std(axis=0).min() > 0.5 * source.std(axis=0).min()
    assert np.abs(result - source).mean() > 0.5  # it does change the object


def test_missing_weights_say_what_to_do(tmp_path) -> None:
    state = PTLMethod(weights=tmp_path).available()
    assert not state and "config.json" in state.reason and "train-ptl" in state.reason


# --- training ------------------------------------------------------------------------------------

def _photos(root) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = [f"p{i}" for i in range(12)]
    for name in names:
        base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        image = np.asarray(imaging.resize_rgb(base, (300, 280)))
        mask = np.zeros((280, 300), bool)
        top, left = rng.integers(20, 120, size=2)
        mask[top:top + 100, left:left + 120] = True
        imaging.save_image(image, root / "images" / f"{name}.png")
        imaging.save_image(mask, root / "masks" / f"{name}.png")


def _train_args(data, out, steps: int, **extra) -> argparse.Namespace:
    options = dict(data=str(data), out=str(out), steps=steps, batch_size=2, lr=1e-3, lr_drop=0.5, width=0.25,
                   seed=0, workers=0, val_every=2, val_samples=2, max_minutes=None, export=None, device="cpu",
                   threads=None, ptl_write="add", init=None, head="residual", prior="none", recipes=None)
    options.update(extra)
    return argparse.Namespace(**options)


@pytest.mark.slow
def test_training_is_deterministic_resumable_and_exports(tmp_path) -> None:
    from harmony_core.train_ptl import CURVE_CSV, CURVE_PNG, train

    _photos(tmp_path / "photos")
    straight = torch.load(train(_train_args(tmp_path / "photos", tmp_path / "a", 4)), weights_only=False)
    train(_train_args(tmp_path / "photos", tmp_path / "b", 4, max_minutes=0.0))  # stops after one step
    resumed = torch.load(train(_train_args(tmp_path / "photos", tmp_path / "b", 4, export=str(tmp_path / "w"))),
                         weights_only=False)
    assert resumed["step"] == straight["step"] == 4
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert [row["step"] for row in resumed["curve"]] == [1, 2, 4]
    for name in (CURVE_CSV, CURVE_PNG, "config.json", "model.safetensors", "training.json"):
        assert (tmp_path / "w" / name).is_file(), name
    assert PTLMethod(weights=tmp_path / "w").available()
    # --init: start from exported weights (lr 0 keeps them, so the step-1 checkpoint holds them).
    exported = PTLNet.from_pretrained(tmp_path / "w").state_dict()
    init = torch.load(train(_train_args(tmp_path / "photos", tmp_path / "c", 1, lr=0.0, init=str(tmp_path / "w"))),
                      weights_only=False)
    assert init["step"] == 1 and torch.equal(init["model"]["to_rgb.weight"], exported["to_rgb.weight"])
    assert exported["to_rgb.weight"].abs().sum() > 0  # not the zero initialization
    with pytest.raises(InputError, match="match --width"):
        train(_train_args(tmp_path / "photos", tmp_path / "e", 1, init=str(tmp_path / "w"), width=0.5))


@pytest.mark.slow
def test_affine_training_starts_from_residual_weights_and_learns(tmp_path) -> None:
    """--init from a residual-head folder keeps every shared layer; the affine head (fed the
    Poisson prior) starts at the identity and moves; the export loads with its head and prior."""
    from harmony_core.train_ptl import train

    _photos(tmp_path / "photos")
    train(_train_args(tmp_path / "photos", tmp_path / "r", 2, export=str(tmp_path / "residual")))
    state = torch.load(train(_train_args(tmp_path / "photos", tmp_path / "a", 3, head="affine", prior="poisson",
                                         init=str(tmp_path / "residual"), export=str(tmp_path / "affine"),
                                         recipes="edit,channel_mix")),
                       weights_only=False)
    residual = PTLNet.from_pretrained(tmp_path / "residual").state_dict()
    assert state["config"]["head"] == "affine" and state["config"]["prior"] == "poisson"
    assert state["args"]["recipes"] == "edit,channel_mix"
    assert state["model"]["to_params.weight"].abs().sum() > 0  # trained away from zero
    assert "to_rgb.weight" not in state["model"] and "encoder.0.0.weight" in residual
    loaded = PTLMethod(weights=tmp_path / "affine")
    assert loaded.model.config.head == "affine" and loaded.model.config.prior == "poisson"
    result = loaded.run(_cat_request())
    assert set(result.maps) == set(MAP_NAMES)


def test_shards_see_each_sample_once_per_step() -> None:
    from harmony_core.evaluate import Shard
    from harmony_core.train_ptl import shard_indices

    parts = [shard_indices(3, 40, 8, Shard(rank, 2)) for rank in range(2)]
    for step in range(3, 5):
        seen = sorted(i for part in parts for i in part[(step - 3) * 4:(step - 2) * 4])
        assert seen == list(range(step * 8, step * 8 + 8))
    assert shard_indices(3, 40, 8, Shard()) == range(24, 40)
    with pytest.raises(InputError, match="multiple"):
        shard_indices(0, 40, 3, Shard(0, 2))


@pytest.mark.slow
def test_data_parallel_training_in_two_processes(tmp_path) -> None:
    """`accelerate launch` with 2 CPU processes (gloo): one checkpoint and curve, from the main process."""
    import subprocess
    import sys

    from tests.conftest import ROOT, free_port

    _photos(tmp_path / "photos")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "harmony_core", "train-ptl",
               "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "ddp"), "--steps", "2",
               "--batch-size", "4", "--width", "0.25", "--workers", "0", "--val-every", "2", "--val-samples", "2",
               "--threads", "1", "--device", "cpu", "--export", str(tmp_path / "w")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and [row["step"] for row in state["curve"]] == [2]
    assert math.isfinite(state["curve"][0]["train_loss"])
    assert PTLMethod(weights=tmp_path / "w").available()
