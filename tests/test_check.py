"""Tests for corrlib._check: every message names the argument, the expected and the actual."""

import pytest
import torch

from corrlib._check import check_choice, check_image, check_shape, check_tensor


class TestCheckTensor:
    def test_returns_tensor(self):
        x = torch.zeros(2)
        assert check_tensor(x, "x") is x

    @pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, None, "img"])
    def test_type_error_names_argument_and_type(self, bad):
        with pytest.raises(
            TypeError, match=rf"Argument kps must be a torch\.Tensor, got {type(bad).__name__}\."
        ):
            check_tensor(bad, "kps")


class TestCheckShape:
    def test_returns_letter_sizes_in_order(self):
        assert check_shape(torch.zeros(2, 5, 2), ("B", "N", 2), "kps") == {"B": 2, "N": 5}
        assert list(check_shape(torch.zeros(1, 3, 4, 6), ("B", "C", "H", "W"), "f").values()) == [
            1,
            3,
            4,
            6,
        ]

    def test_ints_and_stars_are_not_bound(self):
        assert check_shape(torch.zeros(3, 7, 2), ("*", "N", 2), "p") == {"N": 7}
        assert check_shape(torch.zeros(3, 2), (3, 2), "p") == {}

    def test_wrong_number_of_dims(self):
        with pytest.raises(ValueError) as e:
            check_shape(torch.zeros(5, 2), ("B", "N", 2), "kps")
        assert str(e.value) == "Argument kps must have shape (B, N, 2) (3 dims), got shape (5, 2)."

    def test_wrong_exact_size(self):
        with pytest.raises(ValueError) as e:
            check_shape(torch.zeros(1, 5, 3), ("B", "N", 2), "kps")
        assert (
            str(e.value)
            == "Argument kps must have shape (B, N, 2); dim 2 should be 2, got shape (1, 5, 3)."
        )

    def test_repeated_letter_must_agree(self):
        assert check_shape(torch.zeros(4, 4), ("N", "N"), "m") == {"N": 4}
        with pytest.raises(ValueError) as e:
            check_shape(torch.zeros(4, 3), ("N", "N"), "m")
        assert (
            str(e.value)
            == "Argument m must have shape (N, N); dim 1 (N) should be 4, got shape (4, 3)."
        )

    def test_sizes_bound_elsewhere_appear_in_the_message(self):
        b = check_shape(torch.zeros(2, 3, 4, 4), ("B", "C", "H", "W"), "f_src")["B"]
        with pytest.raises(
            ValueError,
            match=(
                r"Argument f_trg must have shape \(2, 3, Ht, Wt\); "
                r"dim 0 should be 2, got shape \(1, 3, 4, 4\)\."
            ),
        ):
            check_shape(torch.zeros(1, 3, 4, 4), (b, 3, "Ht", "Wt"), "f_trg")

    def test_non_tensor_is_type_error(self):
        with pytest.raises(TypeError, match=r"Argument kps must be a torch\.Tensor, got list"):
            check_shape([[0.0, 0.0]], ("N", 2), "kps")


class TestCheckChoice:
    def test_valid_value_is_returned(self):
        assert check_choice("tps", "kind", ("affine", "tps")) == "tps"
        assert check_choice("b", "mode", iter(["a", "b"])) == "b"  # any iterable

    def test_message_lists_valid_values(self):
        with pytest.raises(ValueError) as e:
            check_choice("spline", "kind", ("affine", "homography", "tps"))
        assert str(e.value) == (
            "Unknown value 'spline' for argument kind. Valid values are {affine, homography, tps}."
        )

    def test_is_case_sensitive(self):
        with pytest.raises(ValueError, match="Unknown value 'TPS' for argument kind"):
            check_choice("TPS", "kind", ("tps",))


class TestCheckImage:
    def test_rgb_passes(self):
        img = torch.zeros(3, 4, 5)
        assert check_image(img) is img
        assert check_image(torch.zeros(2, 3, 4, 5)).shape == (2, 3, 4, 5)
        assert check_image(img, "src", batched=False) is img

    def test_grey_gives_advice(self):
        with pytest.raises(ValueError) as e:
            check_image(torch.zeros(1, 8, 8), "src")
        msg = str(e.value)
        assert msg.startswith(
            "Argument src must have 3 channels (RGB) in dim 0, got 1 channels (shape (1, 8, 8));"
        )
        assert (
            "grey image" in msg
            and "img.expand(3, -1, -1)" in msg
            and "corrlib.data.read_image" in msg
        )

    def test_grey_batched_advice_matches_the_layout(self):
        with pytest.raises(ValueError) as e:
            check_image(torch.zeros(2, 1, 8, 8), "images")
        msg = str(e.value)
        assert "in dim 1, got 1 channels (shape (2, 1, 8, 8))" in msg
        assert "img.expand(-1, 3, -1, -1)" in msg
        torch.zeros(2, 1, 8, 8).expand(-1, 3, -1, -1)  # the advice runs

    def test_rgba_gives_advice(self):
        with pytest.raises(ValueError) as e:
            check_image(torch.zeros(4, 8, 8), "trg")
        msg = str(e.value)
        assert "Argument trg" in msg and "got 4 channels" in msg
        assert "RGBA image: drop alpha with img[:3]" in msg and "corrlib.data.read_image" in msg
        with pytest.raises(ValueError, match=r"drop alpha with img\[:, :3\]"):
            check_image(torch.zeros(2, 4, 8, 8), "trg")

    def test_other_channel_counts(self):
        with pytest.raises(
            ValueError, match=r"got 2 channels \(shape \(2, 8, 8\)\); channels must be RGB\."
        ):
            check_image(torch.zeros(2, 8, 8))

    def test_wrong_dims(self):
        with pytest.raises(ValueError) as e:
            check_image(torch.zeros(8, 8), "image")
        assert str(e.value) == "Argument image must have shape (3, H, W), got shape (8, 8)."
        with pytest.raises(
            ValueError, match=r"Argument x must have shape \(B, 3, H, W\), got shape \(3, 8, 8\)\."
        ):
            check_image(torch.zeros(3, 8, 8), "x", batched=True)
        with pytest.raises(
            ValueError, match=r"Argument x must have shape \(3, H, W\), got shape \(1, 3, 8, 8\)\."
        ):
            check_image(torch.zeros(1, 3, 8, 8), "x", batched=False)

    def test_non_tensor(self):
        with pytest.raises(TypeError, match=r"Argument image must be a torch\.Tensor, got ndarray"):
            import numpy as np

            check_image(np.zeros((3, 4, 4)))
