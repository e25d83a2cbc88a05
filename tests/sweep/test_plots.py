"""pareto.png and pareto.html as a reader meets them: the hypervolume region is the reported
hypervolume, the axes say what they measure, the baseline and the reference point are
marked, prompt labels stay inside the image, and the HTML page is small and offline."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from scrutable.metrics import keys
from scrutable.sweep import plots
from scrutable.sweep.frontier import export_pareto
from scrutable.sweep.pareto import hypervolume
from scrutable.sweep.results import TrialRecord
from scrutable.sweep.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
LONG_PROMPT = " The following is a very long and perfectly readable prompt about movie reviews"
# (alpha, L, dev objective, perplexity, prompt): two alpha = 0 baselines, a long prompt at the
# frontier's far end, a dominated trial and one below SST-2's uniform guess (-log 2).
ROWS = [
    (0.0, 3, -0.42, 5200.0, " ADD unacceptablescrib"),
    (0.0, 6, -0.38, 9100.0, " brawl DefenseTERNATIVEendra broch mesmer"),
    (0.05, 3, -0.45, 900.0, " the film was great"),
    (0.2, 6, -0.50, 310.0, " movie review: it is"),
    (0.8, 3, -0.61, 60.0, " This is a"),
    (2.5, 6, -0.66, 41.0, LONG_PROMPT),
    (0.1, 6, -0.55, 2000.0, " xx yy"),
    (1.2, 3, -0.70, 80.0, " and the"),
]


def records():
    return [
        TrialRecord(
            f"t{i:07d}",
            "TERMINATED",
            {"alpha": alpha, "prompt_length": length},
            {keys.TASK_DEV_OBJECTIVE: objective, keys.PERPLEXITY: perplexity},
            prompt_text=prompt,
        )
        for i, (alpha, length, objective, perplexity, prompt) in enumerate(ROWS)
    ]


@pytest.fixture(scope="module")
def spec():
    return load_spec(REPO / "sweeps" / "quickstart.yaml")


@pytest.fixture(scope="module")
def exported(spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("pareto")
    return export_pareto(records(), spec, out), out


def shoelace(polygon):
    xs, ys = np.array(polygon).T
    return abs(float(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1]))) / 2


@pytest.mark.parametrize("modes", [("max", "min"), ("min", "min"), ("max", "max"), ("min", "max")])
def test_region_area_is_the_hypervolume(modes):
    rng = np.random.default_rng(0)
    directions = ["maximize" if m == "max" else "minimize" for m in modes]
    for _ in range(50):
        points = rng.normal(size=(int(rng.integers(1, 12)), 2))
        reference = [
            float(points[:, k].min() - 0.3) if m == "max" else float(points[:, k].max() + 0.3)
            for k, m in enumerate(modes)
        ]
        reference = [r + rng.normal(scale=0.5) for r in reference]  # some points do not beat it
        polygon = plots.region([tuple(p) for p in points], modes, tuple(reference))
        expected = hypervolume(points, directions, reference)
        assert (shoelace(polygon) if polygon else 0.0) == pytest.approx(expected, abs=1e-9)
        if polygon:
            assert polygon[0] == polygon[-1]  # closed
            edges = zip(polygon, polygon[1:], strict=False)
            assert all(a[0] == b[0] or a[1] == b[1] for a, b in edges)  # a staircase: axis-aligned edges


def test_png_states_what_it_shows(spec, exported):
    summary, _ = exported
    eligible = records()
    frontier_ids = {r.trial_id for r in summary.frontier}
    figure = plots.png_figure(
        eligible,
        frontier_ids,
        spec,
        hypervolume=summary.hypervolume,
        reference=summary.reference,
        reference_source=summary.reference_source,
    )
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel().startswith("perplexity under smollm2-135m (log scale)")
    assert ax.get_ylabel().startswith("dev objective: mean log-probability of the correct label")
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert f"hypervolume {summary.hypervolume:.4g} (region the frontier dominates)" in legend
    assert plots.BASELINE_LABEL in legend and any(t.startswith("reference point") for t in legend)
    assert f"hypervolume {summary.hypervolume:.4g}" in figure.get_suptitle()
    colour_bar = figure.axes[1]
    assert colour_bar.get_yscale() == "log" and "alpha" in colour_bar.get_ylabel()
    renderer = figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text().startswith("'")]
    assert len(labels) == len(summary.frontier) >= 4
    for label in labels:  # inside the axes, hence inside the image
        extent = label.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
    long_label = next(t.get_text() for t in labels if t.get_text().startswith("' The following"))
    assert long_label.endswith("…'") and len(long_label) <= plots.LABEL_CHARS


def test_files_png_sane_html_small_and_offline(exported):
    summary, out = exported
    png = imread(out / "pareto.png")
    assert png.shape[0] >= 600 and png.shape[1] >= 900  # pixels
    assert png[..., :3].std() > 0.05  # drawn on, not blank
    page = (out / "pareto.html").read_text()
    assert (out / "pareto.html").stat().st_size < 1_000_000
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', page)
    assert scripts == [plots.PLOTLY_JS]  # a local file: nothing from the network
    bundle = out / plots.PLOTLY_JS
    assert bundle.stat().st_size > 1_000_000 and b"plotly" in bundle.read_bytes()[:2000].lower()
    assert f"hypervolume {summary.hypervolume:.4g}" in page
    assert "perplexity under smollm2-135m (log scale)" in page
    assert plots.BASELINE_LABEL in page
    assert math.isfinite(summary.hypervolume) and summary.hypervolume > 0
