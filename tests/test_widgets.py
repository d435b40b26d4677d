"""The correspondence explorer: a click queries every method, draws its match and score map."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.backend_bases import MouseEvent

from corrlib import eval as ev
from corrlib.widgets import CorrespondenceExplorer


@pytest.fixture
def shifted_pair():
    """A textured 96x96 image and the same image shifted by (+7, +3) px, with 3 keypoints."""
    g = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(
        torch.rand(1, 3, 24, 24, generator=g), size=(96, 96), mode="bilinear"
    )[0]
    src = (base * 255).to(torch.uint8)
    trg = torch.roll(src, shifts=(3, 7), dims=(1, 2))
    src_kps = torch.tensor([[30.0, 40.0], [50.0, 20.0], [60.0, 60.0]])
    return {
        "src_img": src,
        "trg_img": trg,
        "src_kps": src_kps,
        "trg_kps": src_kps + torch.tensor([7.0, 3.0]),
        "src_name": "a",
        "trg_name": "b",
    }


def _press(fig, ax, x, y):
    dx, dy = ax.transData.transform((x, y))
    MouseEvent("button_press_event", fig.canvas, dx, dy, button=1)._process()


def test_click_on_the_source_queries_every_method(shifted_pair, one_thread):
    daisy = ev.get_method("daisy", max_side=None)
    ex = CorrespondenceExplorer([shifted_pair], ["identity", daisy])
    fig = ex.figure()
    _press(fig, ex._axes[0], 41.0, 52.0)  # a free point, away from the keypoints
    assert ex.point.tolist() == pytest.approx([41.0, 52.0], abs=1e-6)
    assert ex.keypoint is None and set(ex.matches) == {"identity", "daisy@original"}
    assert ex.matches["identity"].tolist() == pytest.approx([41.0, 52.0], abs=1e-6)
    # DAISY finds the shift on this texture (within two pixels)
    assert ex.matches["daisy@original"].tolist() == pytest.approx([48.0, 55.0], abs=2.0)
    assert ex.last_latency_s is not None and ex.last_latency_s > 0
    labels = [t.get_text() for t in ex._axes[1].get_legend().get_texts()]
    assert labels == ["identity", "daisy@original"]


def test_click_near_a_keypoint_snaps_and_shows_the_ground_truth(shifted_pair, one_thread):
    ex = CorrespondenceExplorer([shifted_pair], ["identity", ev.get_method("daisy")])
    ex.figure()
    ex.click(51.5, 21.0)  # 1.8 px from keypoint 1
    assert ex.keypoint == 1 and ex.point.tolist() == [50.0, 20.0]
    labels = [t.get_text() for t in ex._axes[1].get_legend().get_texts()]
    assert labels[0] == "ground truth"
    assert labels[1] == "identity (7.6 px off)"  # sqrt(7^2 + 3^2)
    assert ex.heat == "daisy@original" and ex._colorbar is not None


def test_score_map_peaks_at_the_match(shifted_pair, one_thread):
    daisy = ev.get_method("daisy")
    scores, grid = daisy.score_map(
        shifted_pair["src_img"], shifted_pair["trg_img"], torch.tensor([40.0, 50.0])
    )
    k = int(scores.flatten().argmax())
    w = scores.shape[1]
    best = grid.to_pixels(torch.tensor([[k % w, k // w]], dtype=torch.float32))[0]
    assert best.tolist() == pytest.approx([47.0, 53.0], abs=grid.step[0])
    assert float(scores.max()) <= 1.0 + 1e-5


def test_widget_and_errors(shifted_pair):
    ex = CorrespondenceExplorer([shifted_pair, shifted_pair], {"id": ev.get_method("identity")})
    box = ex.widget()
    assert len(box.children) == 4 and ex.heat is None  # identity has no score map
    readout = box.children[-1]
    assert readout.value.startswith("query: none yet")
    ex.select_keypoint(2)
    assert ex.matches["id"].tolist() == [60.0, 60.0]
    assert readout.value == ex.readout() and "id (60.0, 60.0)" in readout.value
    ex.select_pair(1)
    assert ex.point is None and ex.pair_index == 1
    with pytest.raises(ValueError, match="outside the 96x96"):
        ex.query(200.0, 5.0)
    with pytest.raises(ValueError, match="pair must be"):
        CorrespondenceExplorer([shifted_pair], ["identity"], pair=3)
    with pytest.raises(TypeError, match="CorrespondenceMethod"):
        CorrespondenceExplorer([shifted_pair], [3])


def test_the_source_does_not_move_when_the_first_click_adds_the_colour_bar(shifted_pair):
    ex = CorrespondenceExplorer([shifted_pair], ["identity", ev.get_method("daisy", max_side=96)])
    fig = ex.figure()
    fig.canvas.draw()
    before = ex._axes[0].get_window_extent().bounds
    ex.click(41.0, 52.0)
    fig.canvas.draw()
    assert ex._colorbar is not None
    assert ex._axes[0].get_window_extent().bounds == pytest.approx(before)


def test_the_figure_is_not_left_to_pyplot(shifted_pair):
    import matplotlib.pyplot as plt

    ex = CorrespondenceExplorer([shifted_pair], ["identity"])
    fig = ex.figure()
    assert fig.number not in plt.get_fignums()  # a later plt.show() does not show it again


def test_without_a_live_backend_the_widget_shows_a_redrawn_png(shifted_pair):
    ex = CorrespondenceExplorer([shifted_pair], ["identity"])
    box = ex.widget()
    image = box.children[2]
    first = bytes(image.value)
    assert image.format == "png" and first.startswith(b"\x89PNG")
    ex.select_keypoint(1)  # redraws: the image changes
    assert bytes(image.value) != first


def test_the_widget_does_not_stall_a_headless_run(tmp_path, shifted_pair):
    # an Output widget cleared with wait=True and given a figure made papermill wait for the
    # cell until its timeout; the explorer now draws into an Image widget
    import nbformat
    import papermill as pm

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import torch\n"
            "from corrlib.widgets import CorrespondenceExplorer\n"
            "img = torch.rand(3, 48, 48)\n"
            "pair = {'src_img': img, 'trg_img': img, 'src_kps': torch.tensor([[10.0, 12.0]]),\n"
            "        'trg_kps': torch.tensor([[10.0, 12.0]])}\n"
            "explorer = CorrespondenceExplorer([pair], ['identity'])\n"
            "explorer.widget()"
        )
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "explorer.ipynb"
    nbformat.write(nb, str(path))
    pm.execute_notebook(
        str(path), str(tmp_path / "out.ipynb"), progress_bar=False, execution_timeout=60
    )
    duration = nbformat.read(str(tmp_path / "out.ipynb"), 4).cells[0].metadata.papermill.duration
    assert duration < 45  # a stall would sit at the 60 s timeout
