"""Classification or regression: the one rule, used by the network, the data loading and the CLI."""

from __future__ import annotations

from xpnet.activations import Activation, get_activation
from xpnet.errors import ConfigError
from xpnet.losses import NATURAL_OUTPUT, REGRESSION_LOSSES, loss_name
from xpnet.names import canonical

CLASSIFICATION = "classification"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, REGRESSION)
#: Output activations whose values are class scores in [0, 1] (argmax is the prediction).
CLASS_OUTPUTS = ("softmax", "sigmoid")


def decide_task(
    loss: str, output: str | Activation | None = None, given: str | None = None, source: str | None = None
) -> str:
    """The task a model with this ``loss`` and ``output`` activation serves.

    The rule: a cross-entropy loss (``cross_entropy``, ``binary_cross_entropy``), or an
    output activation that gives class scores (``softmax``, ``sigmoid``), makes a
    classifier; anything else (MSE or Huber with an identity, tanh, ReLU, ... output,
    Poisson with its exponential one) makes a regression model. ``output=None`` is the
    loss's partner (identity for MSE).

    ``given`` is the task of the data (``--task``, or a named dataset's own); it must
    agree with the model, or this raises a ConfigError naming ``source`` (default:
    ``--task``) and saying what to change.
    """
    loss = loss_name(loss)
    output_name = output.name if isinstance(output, Activation) else get_activation(output or NATURAL_OUTPUT[loss]).name
    classifier = loss not in REGRESSION_LOSSES or output_name in CLASS_OUTPUTS
    task = CLASSIFICATION if classifier else REGRESSION
    if given is None:
        return task
    given = canonical(given, TASKS, "task")
    if given == task:
        return task
    model = f"--loss {loss} with a {output_name} output makes a"
    if task == CLASSIFICATION:
        subject = source or "--task regression says the data"
        raise ConfigError(
            f"{subject} holds regression targets, but {model} classifier; "
            "use --loss mse (with the default linear output)"
        )
    subject = source or "--task classification says the data"
    raise ConfigError(
        f"{subject} holds class labels, but {model} regression model; "
        "use --loss cross_entropy, or --output softmax or sigmoid"
    )
