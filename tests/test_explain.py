"""Explain and doubt (issue 14), the core library: calibration, unfamiliar-input scores, nearest
training items, occlusion maps, Grad-CAM, feature maps and filters.

Pure functions are checked on hand-made arrays with known answers. The Keras parts use a tiny
`modern` model trained for a few seconds on a synthetic task of four shapes at random places, where
the right explanation is known: the pixels of the shape. The sanity check of Adebayo et al. (2018):
maps of the trained model point at the shape and agree with a second trained model, while maps of the
same architecture with randomised weights differ clearly.
"""

from __future__ import annotations

import numpy as np
import pytest

from fmnist import calibration as cal
from fmnist import explain as ex
from fmnist import familiarity as fam

# ---------------------------------------------------------------- calibration


def sample_calibrated(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities softmax(z) whose labels are drawn from softmax(z / T): exactly calibrated at T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3.0, size=(n, 10))
    true_probs = cal.softmax(logits / temperature)
    labels = np.array([rng.choice(10, p=p) for p in true_probs])
    return cal.softmax(logits).astype(np.float32), labels


def test_fit_temperature_recovers_the_temperature_that_calibrates():
    probs, labels = sample_calibrated(4000, 2.0, seed=0)
    t = cal.fit_temperature(probs, labels)
    assert 1.8 < t < 2.2
    before = cal.expected_calibration_error(probs, labels)
    after = cal.expected_calibration_error(cal.apply_temperature(probs, t), labels)
    assert before > 0.08 and after < 0.03
    assert cal.negative_log_likelihood(probs, labels, t) < cal.negative_log_likelihood(probs, labels)


def test_temperature_scaling_keeps_the_answer_and_works_on_probabilities_with_zeros():
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]], np.float32)
    scaled = cal.apply_temperature(probs, 3.0)
    assert np.all(np.isfinite(scaled)) and np.allclose(scaled.sum(axis=1), 1.0, atol=1e-6)
    assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert scaled[1].max() < probs[1].max()  # T > 1 softens
    assert np.allclose(cal.apply_temperature(probs[1:], 1.0), probs[1:], atol=1e-6)
    with pytest.raises(ValueError):
        cal.apply_temperature(probs, 0.0)


def test_ece_and_reliability_diagram_by_hand():
    # two items at confidence 0.9 (one right), two at 0.6 (both right); 15 bins
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    d = cal.reliability_diagram(probs, labels)
    assert d["count"].sum() == 4 and len(d["count"]) == 15
    hi, lo = np.searchsorted(d["upper"], 0.9), np.searchsorted(d["upper"], 0.6)
    assert d["count"][hi] == 2 and d["accuracy"][hi] == 0.5 and d["confidence"][hi] == pytest.approx(0.9)
    assert d["count"][lo] == 2 and d["accuracy"][lo] == 1.0
    assert cal.expected_calibration_error(probs, labels) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)


def test_calibration_report_fits_on_validation_and_measures_the_other_split():
    val_probs, val_labels = sample_calibrated(3000, 0.5, seed=1)  # overconfident the other way: T < 1
    probs, labels = sample_calibrated(3000, 0.5, seed=2)
    report = cal.calibration_report(val_probs, val_labels, probs, labels)
    assert 0.4 < report["temperature"] < 0.6
    assert report["ece"] < report["ece_uncalibrated"] and report["nll"] < report["nll_uncalibrated"]
    assert len(report["reliability"]["count"]) == 15 and sum(report["reliability"]["count"]) == 3000
    with pytest.raises(ValueError, match="labels"):
        cal.fit_temperature(probs, labels[:-1])


# ---------------------------------------------------------------- familiarity and neighbours


def clusters(n_per_class: int, seed: int, centre_scale: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, centre_scale, size=(10, 16))
    labels = np.repeat(np.arange(10), n_per_class)
    return centres[labels] + rng.normal(0, 1.0, size=(len(labels), 16)), labels


def test_mahalanobis_score_separates_far_inputs_and_the_threshold_flags_the_chosen_fraction():
    train, labels = clusters(200, seed=0)
    model = fam.fit_gaussian(train, labels, l2_normalise=False)
    heldout, _ = clusters(100, seed=1)
    near, _ = clusters(50, seed=2)
    far = np.random.default_rng(3).normal(0, 1.0, size=(300, 16)) * 15
    s_held, s_near, s_far = (fam.mahalanobis_score(model, f) for f in (heldout, near, far))
    assert fam.auroc(s_near, s_far) > 0.99
    threshold = fam.choose_threshold(s_held, flag_fraction=0.05)
    assert 0.03 <= fam.flagged_fraction(s_held, threshold) <= 0.06
    assert fam.flagged_fraction(s_near, threshold) < 0.12 and fam.flagged_fraction(s_far, threshold) > 0.95
    # the nearest class by Mahalanobis distance is the true class for these well separated clusters
    assert (fam.mahalanobis_distances(model, near).argmin(axis=1) == np.repeat(np.arange(10), 50)).mean() > 0.99


def test_gaussian_model_round_trips_through_plain_arrays_and_refuses_bad_ones():
    train, labels = clusters(30, seed=0)
    model = fam.fit_gaussian(train, labels)
    again = fam.GaussianModel.from_arrays({k: np.array(v) for k, v in model.to_arrays().items()})
    assert np.allclose(fam.mahalanobis_score(model, train), fam.mahalanobis_score(again, train))
    assert again.l2_normalise is True
    with pytest.raises(ValueError, match="do not fit"):
        fam.GaussianModel.from_arrays({"means": model.means, "precision": model.precision[:3]})
    with pytest.raises(ValueError, match="every class"):
        fam.fit_gaussian(train[labels != 4], labels[labels != 4])


def test_auroc_energy_and_max_softmax_by_hand():
    assert fam.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert fam.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert fam.auroc([0.1, 0.5], [0.5, 0.2]) == pytest.approx(0.625)  # 2.5 of 4 pairs, the tie half
    logits = np.array([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    assert fam.energy_score(logits) == pytest.approx(-np.log(np.exp(logits).sum(axis=1)))
    assert fam.max_softmax_score(cal.softmax(logits)) == pytest.approx([1 - cal.softmax(logits)[0, 0], 2 / 3])


def test_knn_score_and_the_combined_score():
    train, _ = clusters(100, seed=0)
    near, _ = clusters(20, seed=1)
    far = np.random.default_rng(2).normal(0, 5.0, size=(50, 16))
    k_near, k_far = fam.knn_score(train, near, k=5), fam.knn_score(train, far, k=5)
    assert fam.auroc(k_near, k_far) > 0.95
    assert fam.knn_score(train, train[:1] * 3.0, k=1)[0] == pytest.approx(0.0, abs=1e-3)  # scale-free
    combined = fam.combined_score({"a": np.array([1.0, 4.0, 0.5]), "b": np.array([3.0, 1.0, 0.5])},
                                  {"a": 2.0, "b": 2.0})
    assert combined.tolist() == [1.5, 2.0, 0.25]  # above 1: one signal over its threshold
    with pytest.raises(ValueError, match="one threshold per score"):
        fam.combined_score({"a": np.ones(2)}, {"b": 1.0})


def test_outlier_exposure_detector_learns_a_boundary_that_distance_misses_and_weighs_sets_equally():
    # familiar: items near the training clusters, and a shifted "photo" set far from them; unfamiliar:
    # a small set as far from the clusters as the photos, but on the other side. Distance to the
    # training items cannot tell photos from the outliers; the detector learns which side is which.
    train, _ = clusters(100, seed=0)
    rng = np.random.default_rng(5)
    direction = np.zeros(16)
    direction[0] = 12.0
    photos = train[:150] + direction + rng.normal(0, 1.0, (150, 16))
    outliers = train[150:180] - direction + rng.normal(0, 1.0, (30, 16))  # only 30 items: weighed like 1,000
    familiar = {"training_items": train, "photos": photos}
    detector = fam.fit_detector(familiar, {"outliers": outliers})
    held_photos = train[200:300] + direction + rng.normal(0, 1.0, (100, 16))
    held_outliers = train[300:400] - direction + rng.normal(0, 1.0, (100, 16))
    distance = {k: fam.nearest_neighbours(train, x, k=5)[1][:, -1] for k, x in (("photos", held_photos),
                                                                                ("outliers", held_outliers))}
    assert 0.25 < fam.auroc(distance["photos"], distance["outliers"]) < 0.75
    found = {k: fam.detector_score(detector, x) for k, x in (("photos", held_photos), ("outliers", held_outliers))}
    assert fam.auroc(found["photos"], found["outliers"]) > 0.99
    assert np.all((found["outliers"] > 0) & (found["outliers"] < 1))
    # every set weighs the same however many items it holds: ten copies of the outliers change nothing
    tenfold = fam.fit_detector(familiar, {"outliers": np.tile(outliers, (10, 1))})
    assert np.allclose(fam.detector_score(tenfold, held_outliers), found["outliers"], rtol=0.05, atol=1e-4)
    again = fam.LinearDetector.from_arrays({k: np.array(v) for k, v in detector.to_arrays().items()})
    assert np.allclose(fam.detector_score(again, held_outliers), found["outliers"], atol=1e-6)
    with pytest.raises(ValueError, match="inputs"):
        fam.detector_score(detector, held_outliers[:, :5])
    with pytest.raises(ValueError, match="finite"):
        fam.LinearDetector.from_arrays({"detector_weights": np.full(16, np.nan), "detector_bias": np.array(0.0)})
    with pytest.raises(ValueError, match="both sides"):
        fam.fit_detector(familiar, {"outliers": outliers[:0]})


def test_detector_inputs_are_two_unit_vectors_side_by_side():
    x = fam.detector_inputs(np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]))
    assert x.shape == (2, 5)
    assert np.allclose(x[0], [0.6, 0.8, 0.0, 1.0, 0.0]) and np.allclose(x[1], [0.0, 0.0, 1.0, 0.0, 0.0])


def test_cross_validated_detector_scores_every_item_once_by_a_detector_that_did_not_see_it():
    train, _ = clusters(30, seed=0)
    rng = np.random.default_rng(1)
    outliers = train[:40] + rng.normal(0, 1.0, (40, 16))
    outliers[:, 0] += 15.0  # on one side of the training clusters: a linear boundary can learn it
    cv = fam.cross_validated_detector({"items": train}, {"outliers": outliers}, {"val": train[:20]}, folds=4)
    assert set(cv["scores"]) == {"items", "outliers"} and len(cv["others"]) == 4
    for name, x in (("items", train), ("outliers", outliers)):
        assert cv["scores"][name].shape == (len(x),) and sorted(set(cv["fold"][name].tolist())) == [0, 1, 2, 3]
        assert np.bincount(cv["fold"][name]).min() >= len(x) // 4  # folds of (nearly) equal size
    assert all(o["val"].shape == (20,) for o in cv["others"])
    # each held-out score equals what a detector fitted without that fold gives
    f = 2
    keep = {k: cv["fold"][k] != f for k in ("items", "outliers")}
    refit = fam.fit_detector({"items": train[keep["items"]]}, {"outliers": outliers[keep["outliers"]]})
    held = ~keep["outliers"]
    assert np.allclose(cv["scores"]["outliers"][held], fam.detector_score(refit, outliers[held]), atol=1e-6)
    assert fam.auroc(cv["scores"]["items"], cv["scores"]["outliers"]) > 0.95


def test_projection_keeps_neighbours_and_round_trips():
    train, labels = clusters(100, seed=0)
    query, query_labels = clusters(10, seed=1)
    projection = fam.fit_projection(train, dims=4)
    assert projection.components.shape == (4, 16)
    assert np.allclose(projection.components @ projection.components.T, np.eye(4), atol=1e-5)
    reduced = fam.project(projection, train)
    assert np.allclose(reduced.mean(axis=0), 0, atol=1e-5)
    nearest, _ = fam.nearest_neighbours(reduced.astype(np.float16), fam.project(projection, query), k=1)
    assert (labels[nearest[:, 0]] == query_labels).mean() > 0.95  # ten clusters survive in 4 dimensions
    again = fam.Projection.from_arrays(projection.to_arrays())
    assert np.array_equal(fam.project(again, query), fam.project(projection, query))
    with pytest.raises(ValueError, match="do not fit"):
        fam.Projection.from_arrays({"mean": np.zeros(3), "components": np.zeros((2, 4))})


def test_nearest_neighbours_match_brute_force():
    rng = np.random.default_rng(0)
    ref, query = rng.normal(size=(700, 8)), rng.normal(size=(30, 8))
    idx, dist = fam.nearest_neighbours(ref, query, k=4, chunk=7)
    full = np.linalg.norm(query[:, None] - ref[None], axis=2)
    assert (idx == np.argsort(full, axis=1)[:, :4]).all()
    assert np.allclose(dist, np.sort(full, axis=1)[:, :4], atol=1e-4)
    assert fam.nearest_neighbours(ref, ref[5:6], k=1)[0][0, 0] == 5


# ---------------------------------------------------------------- occlusion through any predictor


class CountingPredictor:
    """Class 1's probability grows with the brightness of rows 10..13, columns 5..8; counts calls."""

    def __init__(self):
        self.calls = 0

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = ex.as_batch(images)[..., 0]
        p1 = x[:, 10:14, 5:9].mean(axis=(1, 2)) / 255.0 * 0.9
        probs = np.zeros((len(x), 10), np.float32)
        probs[:, 1] = p1
        probs[:, 0] = 1.0 - p1
        return probs


def test_occlusion_uses_one_call_and_points_at_the_pixels_that_matter():
    images = np.full((3, 28, 28), 255, np.uint8)
    predictor = CountingPredictor()
    out = ex.occlusion_maps(predictor.predict_proba, images, targets=[1, 1, 0])
    assert predictor.calls == 1
    maps = out["maps"]
    assert maps.shape == (3, 28, 28) and maps.dtype == np.float32
    assert out["targets"].tolist() == [1, 1, 0] and out["probabilities"].shape == (3, 10)
    assert maps[0, 10:14, 5:9].min() > 0.1  # hiding the region lowers class 1
    assert np.abs(maps[0, 20:, 20:]).max() == 0  # pixels far from it change nothing
    assert maps[2, 10:14, 5:9].max() < -0.1  # for class 0 the same region counts against
    default = ex.occlusion_maps(predictor.predict_proba, images[:1])
    assert default["targets"].tolist() == [1]  # the predicted class by default
    assert ex.occlusion_maps(predictor.predict_proba, images[:0])["maps"].shape == (0, 28, 28)
    with pytest.raises(ValueError, match="class indices"):
        ex.occlusion_maps(predictor.predict_proba, images[:1], targets=[10])
    with pytest.raises(ValueError, match="2 targets"):
        ex.occlusion_maps(predictor.predict_proba, images[:1], targets=[1, 1])


def test_occlusion_windows_cover_every_pixel():
    for patch, stride in ((6, 2), (5, 3), (28, 1), (1, 1)):
        cover = np.zeros((28, 28), int)
        for r, c in ex.occlusion_windows(patch, stride):
            assert 0 <= r <= 28 - patch and 0 <= c <= 28 - patch
            cover[r:r + patch, c:c + patch] += 1
        assert cover.min() >= 1
    with pytest.raises(ValueError):
        ex.occlusion_windows(0, 2)


def test_maps_compared_by_rank_correlation():
    a = np.arange(784.0).reshape(28, 28)
    assert ex.rank_correlation(a, a ** 2) == pytest.approx(1.0)
    assert ex.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert ex.rank_correlation(a, np.zeros_like(a)) == 0.0
    assert np.abs(ex.normalise_map(-a)).max() == pytest.approx(1.0)


# ---------------------------------------------------------------- Keras: a tiny trained model

SHAPES = [(4, 14), (14, 4), (8, 8), (12, 12)]  # bar, column, block, frame


def shapes_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of one of four bright shapes at a random place on faint noise, labels and shape masks."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, size=(n, 28, 28)).astype(np.uint8)
    labels = np.arange(n) % len(SHAPES)
    masks = np.zeros((n, 28, 28), bool)
    for i, c in enumerate(labels):
        h, w = SHAPES[c]
        r, s = rng.integers(0, 28 - h + 1), rng.integers(0, 28 - w + 1)
        masks[i, r:r + h, s:s + w] = True
        if c == 3:
            masks[i, r + 3:r + h - 3, s + 3:s + w - 3] = False
    x[masks] = 220
    return x, labels, masks


def train_tiny(seed: int):
    import keras

    from fmnist.models import build_model

    x, y, _ = shapes_task(800, seed=100)
    model = build_model("modern", widths=(8, 16), seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x[..., None].astype(np.float32), y, epochs=4, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def tiny_models():
    """Two models trained from different seeds, and the same architecture with random weights."""
    from fmnist.models import build_model

    return train_tiny(0), train_tiny(7), build_model("modern", widths=(8, 16), seed=123)


@pytest.fixture(scope="module")
def probe():
    return shapes_task(16, seed=1)


def keras_predict(model):
    return lambda images: np.asarray(model(ex.as_batch(images), training=False))


def on_shape(maps: np.ndarray, masks: np.ndarray, top: int = 30) -> float:
    """Mean fraction of each map's `top` highest pixels that lie on the shape."""
    return float(np.mean([m.ravel()[np.argsort(-h.ravel())[:top]].mean() for h, m in zip(maps, masks)]))


def mean_rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([ex.rank_correlation(x, y) for x, y in zip(a, b)]))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["occlusion", "grad-cam"])
def test_randomisation_sanity_check(tiny_models, probe, method):
    """Adebayo et al. (2018): a map that survives randomising the weights explains nothing."""
    trained, retrained, random = tiny_models
    x, y, masks = probe
    assert (keras_predict(trained)(x).argmax(axis=1) == y).mean() >= 0.9

    def maps(model):
        if method == "occlusion":
            return ex.occlusion_maps(keras_predict(model), x, y)["maps"]
        return ex.grad_cam(model, x, y)["maps"]

    a, b, r = maps(trained), maps(retrained), maps(random)
    assert on_shape(a, masks) > 0.6 and on_shape(b, masks) > 0.6
    assert on_shape(r, masks) < on_shape(a, masks) - 0.3
    with_random, with_retrained = mean_rank_correlation(a, r), mean_rank_correlation(a, b)
    assert with_random < 0.4, f"{method} maps barely change when the weights are randomised"
    assert with_retrained > with_random + 0.3


@pytest.mark.slow
def test_grad_cam_targets_and_layer(tiny_models, probe):
    trained = tiny_models[0]
    x, y, _ = probe
    assert ex.last_conv_stage(trained) == "relu1_2"  # the 14x14 stage of a two-stage model
    out = ex.grad_cam(trained, x[:4])
    assert out["maps"].shape == (4, 28, 28) and (out["maps"] >= 0).all()
    assert out["targets"].tolist() == keras_predict(trained)(x[:4]).argmax(axis=1).tolist()
    early = ex.grad_cam(trained, x[:4], targets=y[:4], layer="relu0_1")["maps"]
    assert early.shape == (4, 28, 28)
    with pytest.raises(ValueError, match="targets"):
        ex.grad_cam(trained, x[:4], targets=[0])
    with pytest.raises(ValueError, match="class indices"):
        ex.grad_cam(trained, x[:1], targets=[-1])


@pytest.mark.slow
def test_feature_maps_filters_and_features(tiny_models, probe):
    trained = tiny_models[0]
    x, _, _ = probe
    stages = ex.stage_activations(trained, x[0])
    assert [(s["name"], s["maps"].shape) for s in stages] == [
        ("relu0_1", (8, 28, 28)), ("pool1", (8, 14, 14)), ("relu1_1", (16, 14, 14)), ("relu1_2", (16, 14, 14))]
    assert all(s["maps"].min() >= 0 for s in stages)  # after ReLU
    assert ex.first_layer_filters(trained).shape == (8, 3, 3)
    kernel = trained.get_layer("conv0_1").get_weights()[0]
    assert np.array_equal(ex.first_layer_filters(trained)[2], kernel[:, :, 0, 2])
    features, logits = ex.penultimate_features(trained, x, batch_size=5)
    assert features.shape == (16, 16) and logits.shape == (16, 10)
    assert np.allclose(cal.softmax(logits), keras_predict(trained)(x), atol=1e-5)
    sets = ex.feature_sets(trained, x[:3], ["relu0_1", "relu1_2"])
    assert np.allclose(sets["relu0_1"][0], stages[0]["maps"].mean(axis=(1, 2)), atol=1e-5)
    assert sets["relu1_2"].shape == (3, 16) and np.allclose(sets["penultimate"], features[:3], atol=1e-5)


# ---------------------------------------------------------------- the shipped model through OpenVINO


@pytest.mark.slow
def test_occlusion_agrees_across_keras_and_openvino(shipped_model, tiny_dataset):
    """The same occlusion maps through every backend of the shipped model (one call each)."""
    from fmnist.backends import get_backend

    images = tiny_dataset.x_test[:2]
    maps = {name: ex.occlusion_maps(get_backend(shipped_model, name, cache=False, tta=False).predict_proba,
                                    images, targets=[0, 1])["maps"]
            for name in ("keras", "openvino-fp32", "openvino-int8")}
    assert np.abs(maps["openvino-fp32"] - maps["keras"]).max() < 1e-3
    assert mean_rank_correlation(maps["openvino-int8"], maps["keras"]) > 0.8


@pytest.mark.slow
def test_openvino_features_match_keras(shipped_model, tiny_dataset):
    """Features for the unfamiliar score without TensorFlow: the FP32 IR's penultimate features, logits
    and first-stage means equal Keras's; INT8's stay close."""
    from fmnist.backends import get_backend
    from fmnist.keras_backend import load_model

    images = tiny_dataset.x_test[:40]
    model = load_model(shipped_model)
    first = ex.activation_layers(model)[0]
    keras_sets = ex.feature_sets(model, images, [first])
    for name, tolerance in (("openvino-fp32", 1e-4), ("openvino-int8", None)):
        backend = get_backend(shipped_model, name, cache=False, tta=False)
        sets = ex.openvino_feature_sets(ex.openvino_feature_model(backend.model), images, batch_size=16)
        pairs = [(sets["penultimate"], keras_sets["penultimate"]), (sets["logits"], keras_sets["logits"]),
                 (sets["first_stage"], keras_sets[first])]
        for ov_value, keras_value in pairs:
            assert ov_value.shape == keras_value.shape
            if tolerance:
                assert np.abs(ov_value - keras_value).max() < tolerance * max(1.0, np.abs(keras_value).max())
            else:
                assert np.corrcoef(ov_value.ravel(), keras_value.ravel())[0, 1] > 0.95
