import pytest

from fmnist.models import ARCHITECTURES, build_model, describe_layers, format_layer_table, layer_table


def test_paper_parameter_counts_match_the_report():
    assert build_model("paper").count_params() == 590_346
    assert build_model("paper-baseline").count_params() == 565_386


def test_paper_layer_table_matches_the_report_shapes():
    rows = {r.name: r for r in layer_table(build_model("paper"))}
    assert rows["conv1"].output_shape == "(None, 26, 26, 32)" and rows["conv1"].params == 320
    assert rows["conv3"].output_shape == "(None, 3, 3, 128)" and rows["conv3"].params == 73_856
    assert rows["dense1"].params == 295_168 and rows["probabilities"].params == 5_130
    assert "590,346" in format_layer_table(list(rows.values()))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_outputs_probabilities(arch):
    import numpy as np

    model = build_model(arch)
    out = np.asarray(model(np.full((2, 28, 28, 1), 128.0, "float32")))
    assert out.shape == (2, 10)
    assert np.allclose(out.sum(1), 1.0, atol=1e-5)


def test_widths_and_dropout_are_parameters():
    small = build_model("modern", widths=(8, 16, 32))
    assert small.count_params() < build_model("modern").count_params()
    model = build_model("paper", dropout=0.5)
    rates = [l.rate for l in model.layers if type(l).__name__ == "Dropout"]
    assert rates == [0.5] * 4
    with pytest.raises(ValueError, match="widths"):
        build_model("paper", widths=(1, 2))
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet999")


@pytest.mark.parametrize("arch,widths,dropout", [
    ("paper", None, None), ("paper-baseline", None, None), ("paper-baseline", (8, 16, 32, 64), (0.2, 0.3)),
    ("modern", None, None), ("modern", (16, 32), (0.0, 0.0)), ("modern", (24, 48, 96, 192), (0.1, 0.2)),
    ("paper", (8, 16, 16, 32, 32, 32), 0.0),
])
def test_layer_table_without_tensorflow_equals_keras(arch, widths, dropout):
    """The web app's layer table (computed from the layer specs, no TensorFlow) is Keras's own."""
    assert describe_layers(arch, widths, dropout) == layer_table(build_model(arch, widths, dropout))
