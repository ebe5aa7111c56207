"""One plotting convention: red = positive, integer ticks, labelled axes, a labelled colour bar;
every heatmap in jtlens goes through jtlens.heatmap."""

import io
import pathlib
import re

import numpy as np
import pytest

from jtlens import heatmap
from jtlens.heatmap import css_colour, draw, heatmap_figure, panels_figure, pyplot


def _pixels(fig):
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(heatmap.png_bytes(fig)))[..., :3]


def test_positive_is_red_and_negative_blue_in_png_and_html():
    fig, ax = pyplot().subplots(figsize=(2, 1))
    draw(ax, np.array([[-1.0, 1.0]]), xlabel="x", ylabel="y")
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    px = _pixels(fig)
    left, right = px[px.shape[0] // 2, px.shape[1] // 4], px[px.shape[0] // 2, 3 * px.shape[1] // 4]
    assert right[0] > 2 * right[2] and left[2] > 2 * left[0], (left, right)
    assert css_colour(1, 1) == "rgb({},{},{})".format(*heatmap.RED)
    assert css_colour(-1, 1) == "rgb({},{},{})".format(*heatmap.BLUE)
    assert css_colour(0, 1) == "rgb(255,255,255)"
    assert css_colour(0.5, 1, signed=False).startswith("rgb(2") and css_colour(-1, 1, False) == \
        "rgb(255,255,255)"


def test_integer_ticks_axis_labels_and_legend():
    fig = heatmap_figure(np.arange(30 * 9).reshape(30, 9) - 100.0, xlabel="head", ylabel="layer",
                         label="logit")
    ax, bar = fig.axes
    assert list(ax.get_yticks()) == list(range(30)) and list(ax.get_xticks()) == list(range(9))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    assert "red = positive" in bar.get_ylabel() and "logit" in bar.get_ylabel()
    lo, hi = ax.images[0].get_clim()
    assert lo == -hi == -169.0  # symmetric about zero: 9 * 30 - 1 - 100
    pyplot().close(fig)
    many = heatmap_figure(np.zeros((100, 3)), xlabel="x", ylabel="y", signed=False)
    ticks = many.axes[0].get_yticks()
    assert all(float(t).is_integer() for t in ticks) and 0 < len(ticks) <= heatmap.MAX_TICK_LABELS
    assert "red = high" in many.axes[1].get_ylabel()
    pyplot().close(many)
    fig = panels_figure([("a", np.ones((2, 3))), ("b", -np.ones((2, 3)))], xlabel="pos",
                        ylabel="layer")
    assert [a.get_title() for a in fig.axes[:2]] == ["a", "b"]
    assert fig.axes[0].images[0].get_clim() == fig.axes[1].images[0].get_clim() == (-1.0, 1.0)
    pyplot().close(fig)


def test_no_other_module_picks_a_colour_map():
    root = pathlib.Path(heatmap.__file__).parents[1]  # the whole package
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "heatmap.py" and re.search(r"cmap\s*=|\.imshow\(|\.colorbar\(", p.read_text())]
    assert offenders == []


def test_svg_heatmap_refuses_what_it_cannot_draw():
    """The report's SVG heatmaps refuse a non-2-d array and labels that do not fit the axis,
    naming the shape and the count, as the matplotlib heatmaps do."""
    from jtlens.report.svg import heatmap_svg

    with pytest.raises(ValueError, match=r"2-d array; got shape \(2, 3, 4\)"):
        heatmap_svg(np.zeros((2, 3, 4)), xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match="2 tick labels for an axis of 3"):
        heatmap_svg(np.zeros((2, 3)), xlabel="x", ylabel="y", col_labels=["a", "b"])
    svg = heatmap_svg(np.array([[0.0, -2.0], [1.0, np.nan]]), xlabel="x", ylabel="y")
    assert svg.count("<rect") == 4 + 2 and "-2</title>" in svg  # cells, frame, key; a value on hover
