"""SAGE mixing: exact agreement with a naive reference, the official canvas strategy, the API contract."""

from __future__ import annotations

import copy
import importlib.util
import io
import math
import tarfile
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.loss import SoftTargetCrossEntropy

from tests.sage_reference import reference_best_shifts, reference_sage, reference_saliency, zero_shift
from train.sage import (
    SageMix,
    best_shifts,
    candidate_shifts,
    sage_forward_backward,
    sage_mix,
    saliency_from_grad,
    shift_images,
    softmax_bce,
)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
CIFAR_TAR = REPO.parent / "shared" / "data" / "cifar10" / "train.tar"


def _maps(kind: str, n: int, h: int, w: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Saliency-like pairs; 'blobs' and 'plateau' produce many exactly tied candidate shifts."""
    s1, s2 = torch.rand(n, h, w, generator=gen), torch.rand(n, h, w, generator=gen)
    if kind == "zeros":
        s1[:, : h // 2] = 0
        s2[:, :, w // 3 :] = 0
        s1[:, -2:, -3:] = 0.25  # constant patches: equal values, shuffled positions
    elif kind in ("blobs", "plateau"):
        if kind == "blobs":
            s1[:, h // 3 :] = 0
        else:  # dense map with a flat low half: ties where naive float sums break them by pixel order
            s1[:, h // 2 :] = 0.05
        s2[:, :, :] = 0
        s2[:, 1:3, 2:4] = torch.rand(n, 2, 2, generator=gen)
    return s1 / s1.sum(dim=(1, 2), keepdim=True) * 0.4, s2 / s2.sum(dim=(1, 2), keepdim=True) * 0.6


@pytest.mark.parametrize("size", [(8, 8), (16, 16), (32, 32), (12, 20)])
@pytest.mark.parametrize("rand_pos", [1.0, 0.1])
@pytest.mark.parametrize("kind", ["dense", "zeros", "blobs", "plateau"])
def test_best_shifts_equal_naive_reference(size, rand_pos, kind):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((size, rand_pos, kind)).encode()))
    s1, s2 = _maps(kind, 3, *size, gen)
    shifts = candidate_shifts(*size, rand_pos, gen)
    assert torch.equal(best_shifts(s1, s2, shifts), reference_best_shifts(s1, s2, shifts))


def test_best_shifts_tie_goes_to_first_candidate():
    s1 = torch.zeros(1, 6, 6)
    s1[0, 0, 0] = 1.0
    s2 = torch.zeros(1, 6, 6)
    s2[0, 3, 3] = 1.0  # every shift keeping the dot visible and off (0, 0) scores the same
    shifts = torch.tensor([[-3, -3], [1, 1], [0, 2], [-1, 0]])
    assert best_shifts(s1, s2, shifts).tolist() == [[1, 1]]
    assert best_shifts(s1, s2, shifts.flip(0)).tolist() == [[-1, 0]]


def test_candidate_shifts_follow_the_official_construction():
    for w, rand_pos in [(8, 0.1), (8, 1.0), (32, 0.01)]:
        n = 2 * w - 1
        axis = torch.linspace(1, 2 * w - 1, n, dtype=torch.long)
        xv, yv = torch.meshgrid(axis, axis, indexing="xy")
        order = torch.randperm(n * n, generator=torch.Generator().manual_seed(7))
        coord = torch.stack((xv.flatten(), yv.flatten()))[:, order[: int(n * n * rand_pos)]]
        # The official canvas moves the partner by coord - w: coord[0] vertically, coord[1] horizontally.
        expected = torch.stack([coord[0] - w, coord[1] - w], dim=1)
        got = candidate_shifts(w, w, rand_pos, torch.Generator().manual_seed(7))
        assert torch.equal(got, expected)
    wide = candidate_shifts(4, 6, 1.0, torch.Generator().manual_seed(0))
    assert len({tuple(s) for s in wide.tolist()}) == 7 * 11
    assert wide[:, 0].abs().max() == 3 and wide[:, 1].abs().max() == 5
    assert len(candidate_shifts(8, 8, 1e-6)) == 1  # the official code would crash on an empty set


def test_shift_images_is_a_zero_filled_translation():
    images = torch.randn(5, 3, 7, 9)
    shifts = torch.tensor([[0, 0], [2, -3], [-6, 8], [6, -8], [-1, 4]])
    moved = shift_images(images, shifts)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        assert torch.equal(moved[i], zero_shift(images[i], dy, dx))


def test_saliency_matches_reference_and_torchvision_blur():
    grad = torch.randn(4, 3, 12, 10)
    s = saliency_from_grad(grad)
    assert s.shape == (4, 12, 10) and s.dtype == torch.float32
    torch.testing.assert_close(s, reference_saliency(grad), rtol=1e-5, atol=1e-7)
    from torchvision.transforms import GaussianBlur  # what the official main.py applies

    official = GaussianBlur(kernel_size=(5, 5), sigma=(1.0, 1.0))(grad.abs().mean(dim=1, keepdim=True))[:, 0]
    assert torch.equal(s, official)


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_sage_mix_equals_naive_reference(size):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, *size, generator=gen)
    saliency = torch.rand(6, *size, generator=gen)
    saliency[2, : size[0] // 2] = 0  # zero-saliency areas use the official 0/0 rule
    target = torch.randint(0, 10, (6,), generator=gen)
    perm = torch.randperm(6, generator=gen)
    shifts = candidate_shifts(*size, 0.3, gen)
    mixed, weight, chosen = sage_mix(x, saliency, perm, 0.37, shifts)
    ref_mixed, ref_target, ref_weight, ref_chosen = reference_sage(x, saliency, perm, 0.37, shifts, target, 10)
    assert torch.equal(chosen, ref_chosen)
    torch.testing.assert_close(mixed, ref_mixed)
    torch.testing.assert_close(weight, ref_weight)


def _tiny_cnn(seed: int = 0, batchnorm: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    norm = torch.nn.BatchNorm2d(8) if batchnorm else torch.nn.Identity()
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), norm, torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


def _cifar_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not CIFAR_TAR.exists():
        pytest.skip(f"needs the CIFAR-10 tar at {CIFAR_TAR} (the project's shared data, beside the repo)")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images, labels = [], []
    with tarfile.open(CIFAR_TAR) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".jpg"):
                rgb = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                images.append(torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(32, 32, 3))
                labels.append(classes.index(member.name.split("/")[-2]))
                if len(images) == n:
                    break
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25, torch.tensor(labels)


def test_real_cifar_saliency_matches_reference():
    x, y = _cifar_batch(16)
    x.requires_grad_()
    F.cross_entropy(_tiny_cnn()(x), y).backward()
    saliency = saliency_from_grad(x.grad)
    torch.testing.assert_close(saliency, reference_saliency(x.grad), rtol=1e-5, atol=1e-9)
    x = x.detach()
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(16, generator=gen)
    for count, rand_pos in [(16, 0.1), (4, 1.0)]:
        shifts = candidate_shifts(32, 32, rand_pos, gen)
        sub = perm[:count].argsort()  # a self-contained permutation of the first `count` images
        mixed, weight, chosen = sage_mix(x[:count], saliency[:count], sub, 0.55, shifts)
        ref_mixed, ref_target, ref_weight, ref_chosen = reference_sage(
            x[:count], saliency[:count], sub, 0.55, shifts, y[:count], 10)
        assert torch.equal(chosen, ref_chosen)
        torch.testing.assert_close(mixed, ref_mixed)
        torch.testing.assert_close(weight, ref_weight)


def test_sagemix_replays_the_reference_with_its_own_draws():
    x, grad = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    target = torch.randint(0, 5, (8,))
    kwargs = dict(num_classes=5, alpha=0.8, upper_lambda=0.9, rand_pos=0.2, label_smoothing=0.1)
    mixed, soft = SageMix(**kwargs, generator=torch.Generator().manual_seed(4))(x, target, grad)
    lam, perm, shifts = SageMix(**kwargs, generator=torch.Generator().manual_seed(4)).sample(8, 16, 16)
    ref_mixed, ref_target, _, _ = reference_sage(x, saliency_from_grad(grad), perm, lam, shifts, target, 5, 0.1)
    torch.testing.assert_close(mixed, ref_mixed)
    torch.testing.assert_close(soft, ref_target)


def test_outputs_weights_and_soft_targets():
    mixer = SageMix(num_classes=7, rand_pos=0.05, label_smoothing=0.1, generator=torch.Generator().manual_seed(0))
    criterion = SoftTargetCrossEntropy()
    for _ in range(5):
        x, grad = torch.randn(10, 3, 20, 20), torch.randn(10, 3, 20, 20)
        target = torch.randint(0, 7, (10,))
        mixed, soft = mixer(x, target, grad)
        assert mixed.shape == x.shape and mixed.dtype == x.dtype
        assert soft.shape == (10, 7) and soft.dtype == torch.float32
        assert ((mixer.last_weights >= 0) & (mixer.last_weights <= 1)).all()
        assert (soft >= 0).all()
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(10))
        assert torch.isfinite(criterion(torch.randn(10, 7), soft))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the mixing itself stays in full precision
        mixed_bf16, soft_bf16 = SageMix(num_classes=7, generator=torch.Generator().manual_seed(1))(x, target, grad)
    mixed, soft = SageMix(num_classes=7, generator=torch.Generator().manual_seed(1))(x, target, grad)
    assert torch.equal(mixed_bf16, mixed) and torch.equal(soft_bf16, soft)
    lams = [mixer.sample(4, 8, 8)[0] for _ in range(200)]
    assert all(0 <= lam <= 0.7 for lam in lams)
    assert SageMix(num_classes=3, alpha=0.0, upper_lambda=0.6).sample(4, 8, 8)[0] == pytest.approx(0.3)


def test_switch_and_prob_zero_leave_the_batch_alone():
    x, grad, target = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 1])
    for mixer in [SageMix(num_classes=3, prob=0.0), SageMix(num_classes=3, mix_enabled=False)]:
        mixed, soft = mixer(x, target, grad)
        assert mixed is x
        assert torch.equal(soft, F.one_hot(target, 3).float())
    mixer = SageMix(num_classes=3, label_smoothing=0.3)
    mixer.mix_enabled = False
    mixed, soft = mixer(x, target, grad)
    assert mixed is x and torch.allclose(soft, F.one_hot(target, 3).float() * 0.7 + 0.1)
    mixer.mix_enabled = True
    assert not torch.equal(mixer(x, target, grad)[0], x)


@pytest.mark.parametrize("name, value", [
    ("num_classes", 0), ("alpha", -1.0), ("upper_lambda", 0.0), ("upper_lambda", 1.5), ("rand_pos", 0.0),
    ("kernel_size", 4), ("sigma", 0.0), ("label_smoothing", 1.0), ("prob", 1.5), ("generator", 3),
    ("num_classes", True), ("alpha", "1"), ("rand_pos", float("nan")), ("prob", None),
])
def test_invalid_arguments_name_the_argument(name, value):
    kwargs = {"num_classes": 3, name: value}
    with pytest.raises(ValueError, match=name):
        SageMix(**kwargs)


def test_invalid_call_arguments_name_the_argument():
    mixer, x = SageMix(num_classes=3), torch.randn(4, 3, 8, 8)
    with pytest.raises(ValueError, match="target"):
        mixer(x, torch.zeros(5, dtype=torch.long), torch.randn_like(x))
    with pytest.raises(ValueError, match="input_grad"):
        mixer(x, torch.zeros(4, dtype=torch.long), torch.randn(4, 3, 8, 9))
    with pytest.raises(ValueError, match="update_ratio"):
        sage_forward_backward(_tiny_cnn(), SoftTargetCrossEntropy(), x, torch.zeros(4, dtype=torch.long), mixer,
                              1.5, 3)


def test_same_seed_same_output():
    x, grad, target = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))

    def run(seed: int) -> list[torch.Tensor]:
        mixer = SageMix(num_classes=4, prob=0.7, rand_pos=0.1, generator=torch.Generator().manual_seed(seed))
        return [t for _ in range(4) for t in mixer(x, target, grad)]

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("update_ratio, use_scaler, loss", [
    (0.0, False, "ce"), (0.5, False, "ce"), (1.0, False, "ce"), (0.5, True, "ce"), (0.5, False, "official")])
def test_forward_backward_combines_clean_and_mixed_gradients(update_ratio, use_scaler, loss):
    gen = torch.Generator().manual_seed(2)
    x, target = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    criterion = softmax_bce if loss == "official" else SoftTargetCrossEntropy()
    model = _tiny_cnn(batchnorm=True)
    by_hand = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if use_scaler else None
    mixer = SageMix(num_classes=10, rand_pos=0.2, generator=torch.Generator().manual_seed(9))
    stats = sage_forward_backward(model, criterion, x, target, mixer, update_ratio, 10, scaler=scaler, loss=loss)

    params = list(by_hand.parameters())
    x_hand = x.clone().requires_grad_()
    if loss == "official":  # the authors' code: BCELoss on the softmax against the one-hot, both passes
        loss_clean = torch.nn.BCELoss()(by_hand(x_hand).softmax(1), F.one_hot(target, 10).float())
    else:
        loss_clean = F.cross_entropy(by_hand(x_hand), target)
    input_grad, *grad_clean = torch.autograd.grad(loss_clean, [x_hand, *params])
    mixed, soft = SageMix(num_classes=10, rand_pos=0.2, generator=torch.Generator().manual_seed(9))(
        x, target, input_grad)
    loss_mix = (torch.nn.BCELoss()(by_hand(mixed).softmax(1), soft) if loss == "official"
                else criterion(by_hand(mixed), soft))
    grad_mix = torch.autograd.grad(loss_mix, params)

    factor = 1024.0 if use_scaler else 1.0
    for p, gc, gm in zip(model.parameters(), grad_clean, grad_mix, strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad, factor * ((1 - update_ratio) * gc + update_ratio * gm),
                                   rtol=1e-4, atol=1e-6)
    assert stats["loss_clean"] == pytest.approx(loss_clean.item(), rel=1e-5)
    assert stats["loss_mix"] == pytest.approx(loss_mix.item(), rel=1e-5)
    assert 0 <= stats["lam"] <= 1


def test_both_forwards_run_under_autocast_with_amp():
    """The SAGE step honours --amp: the clean and the mixed forward both run under the autocast
    context it is given (checked on CPU with bf16; CUDA uses the same code with fp16)."""
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _tiny_cnn()

        def forward(self, x):
            seen.append(torch.is_autocast_enabled("cpu"))
            return self.net(x)

    gen = torch.Generator().manual_seed(3)
    x, target = torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    mixer = SageMix(num_classes=10, rand_pos=0.2, generator=torch.Generator().manual_seed(1))
    stats = sage_forward_backward(Probe(), SoftTargetCrossEntropy(), x, target, mixer, 0.5, 10,
                                  scaler=torch.amp.GradScaler("cpu"),
                                  autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert seen == [True, True] and math.isfinite(stats["loss_mix"])


def test_canvas_strategy_agrees_on_chosen_shifts():
    spec = importlib.util.spec_from_file_location("sage_canvas", REPO / "bench" / "sage_canvas.py")
    canvas = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(canvas)
    gen = torch.Generator().manual_seed(5)
    s1, s2 = _maps("dense", 4, 12, 12, gen)
    shifts = candidate_shifts(12, 12, 1.0, gen)
    assert torch.equal(canvas.canvas_best_shifts(s1.double(), s2.double(), shifts), best_shifts(s1, s2, shifts))
    x, saliency = torch.randn(4, 3, 12, 12, generator=gen), torch.rand(4, 12, 12, generator=gen)
    perm = torch.tensor([2, 0, 3, 1])
    mixed, weight, chosen = sage_mix(x, saliency, perm, 0.45, shifts)
    c_mixed, c_weight, c_chosen = canvas.canvas_sage_mix(x, saliency, perm, 0.45, shifts)
    assert torch.equal(chosen, c_chosen)
    torch.testing.assert_close(mixed, c_mixed)
    torch.testing.assert_close(weight, c_weight)
