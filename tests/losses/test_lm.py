"""Pure loss functions against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.losses.lm import bits_per_byte, token_cross_entropy


def test_cross_entropy_hand_computed():
    """Two positions, vocab 3. Row 0: logits (0, ln 2, 0) -> p(target 1) = 2 / (1 + 2 + 1) = 1/2,
    loss ln 2. Row 1 is ignored (−100). Sum = mean = ln 2."""
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [5.0, 1.0, 0.0]]])
    targets = torch.tensor([[1, -100]])
    assert token_cross_entropy(logits, targets, "sum").item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert token_cross_entropy(logits, targets, "mean").item() == pytest.approx(math.log(2.0), rel=1e-6)
    none = token_cross_entropy(logits, targets, "none")
    assert none[0, 0].item() == pytest.approx(math.log(2.0), rel=1e-6) and none[0, 1].item() == 0.0


def test_cross_entropy_no_supervised_token_is_zero_not_nan():
    logits = torch.randn(1, 3, 5)
    assert token_cross_entropy(logits, torch.full((1, 3), -100), "mean").item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_cross_entropy_matches_reference_value_and_gradient(dtype):
    """Many rows (more than one chunk), ignored positions; the gradient of the summed loss is
    softmax − onehot on supervised rows and 0 on ignored ones."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(2, 200, 37)).to(dtype).requires_grad_()
    targets = torch.randint(0, 37, (2, 200))
    targets[0, :17] = -100
    loss = token_cross_entropy(logits, targets, "sum")
    loss.backward()
    ref_logits = logits.detach().double()
    ref = F.cross_entropy(ref_logits.reshape(-1, 37), targets.reshape(-1), ignore_index=-100, reduction="sum")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    expected = torch.softmax(ref_logits, -1) - F.one_hot(targets.clamp(min=0), 37)
    expected[targets == -100] = 0
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(logits.grad.double(), expected, atol=tol)


def test_bits_per_byte():
    """8 ln 2 nats over 4 bytes = 8 bits / 4 bytes = 2 bits per byte."""
    assert bits_per_byte(8 * math.log(2), 4) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)
