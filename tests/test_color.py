"""corrlib.color.standardize_images: MC-CNN's per-image standardisation."""

import pytest
import torch

from corrlib.color import standardize_images


def test_standardize_one_image_and_a_batch_per_item():
    g = torch.Generator().manual_seed(0)
    image = 0.3 + 0.2 * torch.rand(7, 9, generator=g)
    out = standardize_images(image)
    assert out.shape == image.shape
    torch.testing.assert_close(out.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(), torch.tensor(1.0))  # unbiased, as Torch's std
    batch = torch.stack([image[None], 2 * image[None] + 5])  # (2, 1, 7, 9)
    both = standardize_images(batch)
    # statistics per batch item: an affine change of one image's intensities changes nothing
    torch.testing.assert_close(both[0, 0], out)
    torch.testing.assert_close(both[1, 0], out, atol=1e-5, rtol=1e-5)


def test_standardize_constant_image_is_zero_and_bad_input_is_refused():
    assert torch.equal(standardize_images(torch.full((4, 4), 0.7)), torch.zeros(4, 4))
    assert torch.equal(standardize_images(torch.ones(1, 1, 1, 1)), torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"Argument images must be a float \(H, W\) image"):
        standardize_images(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match=r"torch\.uint8"):
        standardize_images(torch.zeros(4, 4, dtype=torch.uint8))


def test_standardize_a_column_image():
    out = standardize_images(torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(out, torch.tensor([[-(0.5**0.5)], [0.5**0.5]]))
