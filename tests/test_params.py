"""Run parameters: one model per flow, from which the UI's form, the command line and the defaults come."""

import pytest

from mnist_pipeline.errors import ConfigError
from mnist_pipeline.params import TrainParams, parse_params

pytestmark = pytest.mark.unit


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
    ({"min_class_recall": -0.1}, "parameter min_class_recall=-0.1 is invalid"),
    ({"approval_timeout": 0}, "parameter approval_timeout=0 is invalid"),
])
def test_out_of_range_parameters_are_one_line_errors(values, needle):
    with pytest.raises(ConfigError) as err:
        parse_params(**values)
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)


@pytest.mark.parametrize("flow_name, schema", [("train_flow", "TrainParams"), ("tune_flow", "TuneParams")])
def test_each_flows_form_and_command_line_are_its_parameter_model(flow_name, schema):
    """Declared once: the UI's run form (the flow's signature) and `python flows/X.py --help` list
    the model's fields, with its defaults and descriptions, and nothing else."""
    import importlib

    from prefect.utilities.callables import parameter_schema

    import mnist_pipeline.params as params
    from mnist_pipeline.params import command_line

    model = getattr(params, schema)
    flow = getattr(importlib.import_module(f"flows.{flow_name}"), flow_name)
    form = parameter_schema(flow.fn)
    assert list(form.properties) == list(model.model_fields)
    for name, field in model.model_fields.items():
        assert form.properties[name].get("default") == field.default, name
        assert field.description and field.description in flow.fn.__doc__
    options = {a.dest for a in command_line(model, "x")._actions if a.dest != "help"}
    assert options == set(model.model_fields)


def test_an_option_left_out_takes_the_models_default_and_a_bad_one_is_one_line(capsys):
    from mnist_pipeline.params import command_line

    parser = command_line(TrainParams, "x")
    assert TrainParams(**vars(parser.parse_args(["--model", "cnn"]))).batch_size == 256  # the cnn's own
    assert TrainParams(**vars(parser.parse_args(["--allow-regression"]))).allow_regression is True
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--epochs", "abc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "--epochs: invalid int value: 'abc'" in err


def test_approval_is_off_by_default_and_asked_for_on_the_command_line():
    from mnist_pipeline.params import command_line

    assert (TrainParams().require_approval, TrainParams().approval_timeout) == (False, 24 * 3600)
    asked = TrainParams(**vars(command_line(TrainParams, "x").parse_args(
        ["--require-approval", "--approval-timeout", "600", "--min-class-recall", "0.95"])))
    assert (asked.require_approval, asked.approval_timeout, asked.min_class_recall) == (True, 600, 0.95)
