"""orthogonal_views: axial, coronal and sagittal slices of one scan through one voxel, segmentation overlaid."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.image import imread

from tumorseg import plots
from tumorseg.plots import figure_to_array, orthogonal_views, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (20, 16, 12)  # X, Y, Z: all different, so a swapped axis shows in the shapes


def make_case(shape: tuple[int, int, int] = SHAPE):
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, shape).astype(np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:10, 6:12, 3:9] = 2  # ED cube, centre (6.5, 8.5, 5.5)
    label[10:13, 6:9, 3:5] = 2  # and a lump beside it: centre of mass (6.85, 8.38, 5.35)
    label[6:10, 8:12, 5:9] = 3  # ET block
    label[8:10, 10:12, 7:9] = 1  # NCR block
    return image, label


def slice_indices(fig) -> list[int]:
    """The slice index in each panel's title, "<plane> slice <index> of <size>"."""
    found = [re.fullmatch(r"(\w+) slice (\d+) of (\d+)", ax.get_title()) for ax in fig.axes]
    assert all(found), [ax.get_title() for ax in fig.axes]
    assert [m[1] for m in found] == ["axial", "coronal", "sagittal"]
    assert [int(m[3]) for m in found] == [SHAPE[2], SHAPE[1], SHAPE[0]]
    return [int(m[2]) for m in found]


def test_centre_is_the_tumours_centre_of_mass():
    image, label = make_case()
    fig = orthogonal_views(image, label, title="case 1")
    expected = tuple(int(c) for c in np.rint(np.argwhere(label > 0).mean(axis=0)))
    assert expected == (7, 8, 5)  # the voxel mean over every tumour class, not the cube's centre
    assert fig.centre == expected
    x, y, z = expected
    assert slice_indices(fig) == [z, y, x]
    title = fig.get_suptitle()
    assert title.startswith("case 1, FLAIR") and "centre of mass (7, 8, 5)" in title
    assert "no tumour" not in title
    assert len(fig.axes) == 3


def test_panels_show_the_slices_through_the_centre_in_the_lps_orientation():
    image, label = make_case()
    fig = orthogonal_views(image, label)
    x, y, z = fig.centre
    axial, coronal, sagittal = fig.axes
    for ax, scan, origin in [
        (axial, image[:, :, z].T, "upper"),  # anterior at the top
        (coronal, image[:, y, :].T, "lower"),  # superior at the top
        (sagittal, image[x, :, :].T, "lower"),
    ]:
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), scan)
        assert ax.images[0].origin == ax.images[1].origin == origin
    overlay = np.asarray(axial.images[1].get_array())
    assert overlay.shape == (SHAPE[1], SHAPE[0], 4)
    np.testing.assert_allclose(overlay[y, x, :3], plots.CLASS_COLOURS[3][1])  # (7, 8, 5) is ET
    np.testing.assert_allclose(overlay[y, x, 3], plots.OVERLAY_ALPHA)
    assert overlay[0, 0, 3] == 0  # background left clear
    # crosshairs: on each panel a vertical and a horizontal line at the other two planes
    for ax, (vertical, horizontal) in zip(fig.axes, [(x, y), (x, z), (y, z)]):
        xs = sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1])
        ys = sorted(line.get_ydata()[0] for line in ax.lines if line.get_ydata()[0] == line.get_ydata()[1])
        assert (xs, ys) == ([vertical], [horizontal])
    # one window for all three panels, from the non-zero voxels
    assert len({ax.images[0].get_clim() for ax in fig.axes}) == 1
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["NCR", "ED", "ET"]
    colours = [tuple(patch.get_facecolor()[:3]) for patch in legend.get_patches()]
    np.testing.assert_allclose(colours, [c for _, c in plots.CLASS_COLOURS.values()])


def test_no_tumour_uses_the_volume_centre_and_says_so():
    image, label = make_case()
    fig = orthogonal_views(image, np.zeros_like(label), modality="t2")
    assert fig.centre == (10, 8, 6)
    assert slice_indices(fig) == [6, 8, 10]
    assert fig.get_suptitle().startswith("T2")
    assert "no tumour segmented" in fig.get_suptitle()
    assert not any(np.asarray(ax.images[1].get_array())[..., 3].any() for ax in fig.axes)


def test_given_centre_wins_and_is_checked():
    image, label = make_case()
    fig = orthogonal_views(image, label, centre=(1, 2, 3))
    assert fig.centre == (1, 2, 3)
    assert slice_indices(fig) == [3, 2, 1]
    with pytest.raises(ValueError, match="not a voxel"):
        orthogonal_views(image, label, centre=(20, 0, 0))
    with pytest.raises(ValueError, match="not a voxel"):
        orthogonal_views(image, label, centre=(0, -1, 0))


def test_anisotropic_spacing_sets_each_panels_aspect():
    image, label = make_case()
    fig = orthogonal_views(image, label, spacing=(0.5, 1.0, 3.0))
    axial, coronal, sagittal = fig.axes
    assert axial.get_aspect() == pytest.approx(1.0 / 0.5)  # rows y, columns x
    assert coronal.get_aspect() == pytest.approx(3.0 / 0.5)  # rows z, columns x
    assert sagittal.get_aspect() == pytest.approx(3.0 / 1.0)  # rows z, columns y
    # drawn, each panel's on-screen height / width is the physical one
    figure_to_array(fig)
    for ax, (width, height) in zip(fig.axes, [(20 * 0.5, 16 * 1.0), (20 * 0.5, 12 * 3.0), (16 * 1.0, 12 * 3.0)]):
        box = ax.get_window_extent()
        assert box.height / box.width == pytest.approx(height / width, rel=0.03)
    isotropic = orthogonal_views(image, label)
    assert [ax.get_aspect() for ax in isotropic.axes] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="spacing"):
        orthogonal_views(image, label, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        orthogonal_views(image, label, spacing=(1.0, 1.0))


def test_shape_errors():
    image, label = make_case()
    with pytest.raises(ValueError, match=r"image \(20, 16, 12\), label \(20, 16, 11\)"):
        orthogonal_views(image, label[..., :11])
    with pytest.raises(ValueError, match=r"image \(1, 20, 16, 12\), label \(1, 20, 16, 12\)"):
        orthogonal_views(image[None], label[None])  # same shapes, but 4D
    with pytest.raises(ValueError, match=r"image \(20, 16\), label \(20, 16\)"):
        orthogonal_views(image[..., 0], label[..., 0])


def test_windowing_ignores_background_and_outliers():
    image, label = make_case()
    image[:] = 0
    image[2:18, 2:14, 2:10] = 100
    image[3, 3, 3] = 1e6  # one hot voxel
    low, high = orthogonal_views(image, label).axes[0].images[0].get_clim()
    assert low == pytest.approx(100) and high < 1e5


def test_save_figure_writes_a_readable_png(tmp_path):
    image, label = make_case()
    fig = orthogonal_views(image, label, spacing=(1.0, 1.0, 2.5), title="case 1")
    path = save_figure(fig, tmp_path / "figures" / "views.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    width, height = fig.get_size_inches() * plots.DPI
    assert pixels.shape[:2] == (round(height), round(width))
    assert pixels.std() > 0  # something was drawn


def et_pixels(fig, ax) -> int:
    """Pixels of ``ax``, rendered, in the colour of ET over a black scan (half of it, at alpha 0.5)."""
    pixels = figure_to_array(fig).astype(int)
    box = ax.get_window_extent()  # display pixels, origin at the bottom left
    panel = pixels[pixels.shape[0] - int(box.y1) : pixels.shape[0] - int(box.y0), int(box.x0) : int(box.x1)]
    expected = np.round(255 * plots.OVERLAY_ALPHA * np.array(plots.CLASS_COLOURS[3][1]))
    return int((np.abs(panel - expected) <= 3).all(axis=-1).sum())


def test_et_colour_appears_in_the_rendered_axial_panel():
    image, label = make_case()
    image[label == 3] = 0  # below the window: black, so an ET pixel is exactly half its colour
    fig = orthogonal_views(image, label)
    # axial slice 5 holds 4 x 4 ET voxels, each many pixels wide
    assert et_pixels(fig, fig.axes[0]) > 100
    # none where the slice has no tumour, nor with the same slice and no label
    empty = orthogonal_views(image, label, centre=(0, 0, 0))
    assert et_pixels(empty, empty.axes[0]) == 0
    unlabelled = orthogonal_views(image, np.zeros_like(label), centre=fig.centre)
    assert et_pixels(unlabelled, unlabelled.axes[0]) == 0
