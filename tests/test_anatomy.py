"""The phantoms' anatomy: the ICBM152 template found in nilearn (or a folder given), its derived maps,
and clear errors when it cannot be found."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy import ndimage

from tumorseg.phantoms import anatomy
from tumorseg.phantoms.anatomy import CHANNELS, FILES, TEMPLATE_ENV, TemplateError, load_template, template_folder


def test_derived_maps_are_consistent():
    template = load_template(1.0)
    assert template.maps.shape[0] == len(CHANNELS)
    brain, gm, wm, csf = (template.channel(c) for c in ("brain", "gm", "wm", "csf"))
    assert set(np.unique(brain)) == {0.0, 1.0}
    np.testing.assert_allclose(gm + wm + csf, brain, atol=1e-5)  # tissue fractions fill the brain
    assert 1.7e6 < brain.sum() < 2.0e6  # mm3: the template's brain
    # choroid plexus lies in CSF, periventricular bands in white matter, both deep in the brain
    choroid, periventricular, depth = (template.channel(c) for c in ("choroid", "periventricular", "depth"))
    assert choroid.sum() > 500 and np.all(csf[choroid > 0.5] > 0.3)
    assert periventricular.sum() > 5000 and np.all(periventricular <= wm + 1e-6)
    assert depth[choroid > 0.5].min() > 10
    # blurred for coarse grids, same channels
    coarse = load_template(2.5)
    assert coarse.maps.shape == template.maps.shape
    assert coarse.channel("gm").std() < gm.std()


def test_distance_in_a_box_equals_scipys_on_the_whole_grid():
    rng = np.random.default_rng(0)
    for _ in range(5):
        blob = ndimage.gaussian_filter(rng.random((40, 50, 30)), 3) > 0.52
        blob[:3] = blob[-3:] = False  # zero around the blob: exact everywhere
        blob[:, :3] = blob[:, -3:] = blob[:, :, :2] = blob[:, :, -2:] = False
        assert blob.any()
        np.testing.assert_array_equal(
            anatomy._distance_to_zero(blob, blob, margin=1), ndimage.distance_transform_edt(blob)
        )
        # distance to the blob: exact below the margin, at least the margin beyond
        full = ndimage.distance_transform_edt(~blob)
        boxed = anatomy._distance_to_zero(~blob, blob, margin=6)
        np.testing.assert_array_equal(boxed[full < 6], full[full < 6])
        assert np.all(boxed[full >= 6] >= 6)


def test_a_template_folder_of_ones_own(tmp_path, monkeypatch):
    source = template_folder()
    for name in FILES.values():
        (tmp_path / name).symlink_to(source / name)
    monkeypatch.setenv(TEMPLATE_ENV, str(tmp_path))
    assert template_folder() == tmp_path
    (tmp_path / FILES["wm"]).unlink()
    with pytest.raises(TemplateError, match=f"{TEMPLATE_ENV}=.*lacks {FILES['wm']}"):
        template_folder()


def test_missing_nilearn_says_what_to_install(monkeypatch):
    monkeypatch.delenv(TEMPLATE_ENV, raising=False)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        anatomy.importlib.util, "find_spec", lambda name: None if name == "nilearn" else find_spec(name)
    )
    with pytest.raises(TemplateError, match="pip install nilearn"):
        template_folder()
