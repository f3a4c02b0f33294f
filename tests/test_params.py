import pytest

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.params import TrainParams, parse_params


def test_defaults_are_the_readme_model():
    p = TrainParams()
    assert (p.epochs, p.batch_size, p.model, p.learning_rate) == (10, 32, "mlp", 0.001)


@pytest.mark.parametrize("values,needle", [
    ({"epochs": 0}, "parameter epochs=0 is invalid"),
    ({"min_accuracy": 1.5}, "parameter min_accuracy=1.5 is invalid"),
    ({"model": "resnet"}, "parameter model='resnet' is invalid: Input should be 'mlp' or 'cnn'"),
    ({"batch_size": 0}, "parameter batch_size=0 is invalid"),
    ({"learning_rate": 0}, "parameter learning_rate=0 is invalid"),
    ({"epoch": 3}, "parameter epoch=3 is invalid: Extra inputs are not permitted"),
])
def test_out_of_range_parameters_are_one_line_errors(values, needle):
    with pytest.raises(ConfigError) as err:
        parse_params(**values)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)
