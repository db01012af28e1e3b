"""The default model shipped in assets/: it loads on a fresh install and keeps its promise."""

import numpy as np
import pytest

from fmnist.keras_backend import load_model
from fmnist.runs import DEFAULT_MODEL_DIR, load_metrics, resolve_run, verify_run
from fmnist.training import TrainConfig, predict_probabilities

@pytest.mark.slow
def test_shipped_model_verifies_and_is_the_default(shipped_model):
    info = verify_run(DEFAULT_MODEL_DIR)
    assert info.status == "completed" and info.reason == "" and info.is_default
    assert info.bundles.get("openvino") == "ok"  # ships its IR too
    assert resolve_run(None) == DEFAULT_MODEL_DIR
    model = load_model(DEFAULT_MODEL_DIR)
    out = np.asarray(model(np.zeros((1, 28, 28, 1), "float32")))
    assert out.shape == (1, 10) and abs(out.sum() - 1) < 1e-5


@pytest.mark.slow
@pytest.mark.integration
def test_shipped_model_reaches_its_claimed_test_accuracy(shipped_model, real_dataset):
    claimed = load_metrics(DEFAULT_MODEL_DIR)["test_accuracy"]
    config = TrainConfig.from_dict(verify_run(DEFAULT_MODEL_DIR).config)
    probs = predict_probabilities(load_model(DEFAULT_MODEL_DIR), real_dataset.x_test, config.tta_flip,
                                  tta_shift=config.tta_shift)
    accuracy = float(np.mean(probs.argmax(1) == real_dataset.y_test))
    assert abs(accuracy - claimed) <= 0.001
    assert accuracy >= 0.935
