"""A multilayer perceptron: a sequence of layers, the loss, and BP1, written once against the array API.

Notation (Nielsen's, with PyTorch's weight layout): layer l has weights W^l shaped
``(n_l, n_{l-1})`` and biases b^l; for a batch of row vectors

    z^l = a^{l-1} W^l^T + b^l,      a^l = σ_l(z^l),      a^0 = x.

The backward pass is four equations: BP1 here (the output error, from the loss), and
BP2-BP4 on the lines of ``xpnet.layers.dense``:

    BP1  δ^L = ∇_a C ⊙ σ_L'(z^L)                 output error
    BP2  δ^l = (δ^{l+1} W^{l+1}) ⊙ σ_l'(z^l)       error pushed back through W
    BP3  ∂C/∂b^l = Σ_batch δ^l                    bias gradient = error
    BP4  ∂C/∂W^l = δ^l^T a^{l-1}                  error x previous activation

Between dense layers may sit a normalisation (``norm="layer"``) and dropout, each a
layer of its own (``xpnet.layers``). The flat parameter list ``params`` is what the
optimizers update; each layer reads its own slice of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xpnet import evaluate as inference
from xpnet import train as training
from xpnet.activations import Activation, get_activation
from xpnet.backend import Backend, define_kernel, fused_kernel, get_backend
from xpnet.errors import ConfigError
from xpnet.init import init_name, initial_parameters
from xpnet.inputs import check_inputs, check_targets
from xpnet.layers import NORMS, Pass, param_shapes, stack
from xpnet.losses import NATURAL_OUTPUT, Loss, get_loss, loss_name
from xpnet.memory import network_estimate
from xpnet.modelfile import save_model
from xpnet.names import canonical
from xpnet.precision import get_precision
from xpnet.task import CLASSIFICATION, decide_task


class MLP:
    """A multilayer perceptron: ``sizes`` gives the width of every layer, input first.

    ``activation`` is one name for all hidden layers (the output then follows the
    loss: softmax for cross-entropy, sigmoid for binary cross-entropy, identity for
    MSE and Huber, exponential for Poisson, unless ``output`` says otherwise), or a list
    with one name per layer, output included, as in ``["sigmoid", "sigmoid", "softmax"]``.
    ``huber_delta`` is the Huber loss's threshold δ (``loss="huber"`` only). ``norm="layer"``
    puts a LayerNorm after each hidden layer (``xpnet.layers.norm``); ``dropout`` a dropout layer.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "relu",
        loss: str = "cross_entropy",
        *,
        output: str | None = None,
        init: str | Sequence[str] = "auto",
        dropout: float | Sequence[float] = 0.0,
        norm: str | None = "none",
        backend: str | Backend | None = None,
        device: str | None = None,
        dtype: str = "float32",
        precision: str = "float32",
        seed: int | None = 0,
        huber_delta: float = 1.0,
    ):
        self.sizes = _check_sizes(sizes)
        depth = len(self.sizes) - 1
        self.loss_name = loss_name(loss)
        self.activations = _layer_activations(activation, output, self.loss_name, depth, self.sizes[-1])
        self.loss: Loss = get_loss(self.loss_name, self.activations[-1], huber_delta)
        # Decided once: the training step's metrics ask every step, and the rule looks names up.
        self._classifier = decide_task(self.loss_name, self.activations[-1]) == CLASSIFICATION
        self.inits = [init_name(spec, act.name) for spec, act in zip(_per_layer(init, depth, "init"), self.activations)]
        self.dropout = _check_dropout(dropout, depth)
        self.norm = canonical(norm or "none", NORMS, "norm")
        #: The layers, input side first: Dense (+ norm, dropout) per hidden layer, the output Dense last.
        self.layers = stack(self.sizes, self.activations, self.norm, self.dropout)
        self.backend = get_backend(backend, device)
        self.xp = self.backend.xp
        self.dtype_name = dtype
        self.dtype = self.backend.dtype(dtype)
        #: What the math runs in: the network's dtype, or a half type with float32 masters (xpnet.precision).
        self.precision = get_precision(precision)
        self.compute_dtype = self._compute_dtype()
        # Refused before a byte is drawn: [784, 100000, 100000, 10] would ask for over 100 GiB.
        count = sum(int(np.prod(shape)) for shape in param_shapes(self.layers).values())
        network_estimate(self.sizes, np.dtype(dtype).itemsize, count).check(f"the network {str(self.sizes)[:60]}")
        self.seed = seed
        self.scaling = None
        self._scaling_on_device = self._scaling_kernel_args = None
        self._class_ids = None  #: 0..k-1 on the device (1 for a single sigmoid output), for one-hot targets
        #: Draws the dropout masks on the device; None when no layer drops units.
        self.dropout_rng = self.backend.random_generator(seed) if any(self.dropout) else None
        drawn = iter(initial_parameters(self.sizes, self.inits, seed))
        #: Flat list of every layer's parameters, [W^1, b^1, ...]; optimizers update it in place.
        self.params = [self.backend.upload(p, self.dtype) for layer in self.layers for p in layer.initial(drawn)]

    def _compute_dtype(self):
        if not self.precision.mixed:
            return self.dtype
        if self.dtype_name != "float32":
            raise ConfigError(
                f"precision {self.precision.name!r} keeps float32 master weights; dtype must be float32, "
                f"not {self.dtype_name!r}"
            )
        return self.backend.half_dtype(self.precision.compute)

    @classmethod
    def from_config(cls, config: dict, **options) -> MLP:
        """The network ``config()`` describes (initial weights; load yours over them); ``options``
        (backend, device, dtype, precision, seed) are the caller's, not the file's."""
        dropout = config.get("dropout", 0.0)
        options.setdefault("dtype", config.get("dtype", "float32"))
        return cls(
            config["sizes"],
            activation=config["activations"],
            loss=config.get("loss") or "cross_entropy",
            init=config.get("init") or "auto",
            dropout=dropout if isinstance(dropout, list) else 0.0,
            norm=config.get("norm", "none"),
            huber_delta=config.get("huber_delta", 1.0),
            **options,
        )

    # -- structure ---------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Dense layers, the output included."""
        return len(self.sizes) - 1

    @property
    def param_names(self) -> list[str]:
        """The file name of each entry of ``params`` (``layers.0.weight``, ...), from the layers."""
        return list(param_shapes(self.layers))

    def layer_params(self) -> list[tuple]:
        """``(layer, its slice of params)`` for each layer, input side first."""
        return list(zip(self.layers, self._grouped(self.params)))

    def _grouped(self, params: list) -> list[list]:
        """``params`` cut into each layer's slice, in layer order."""
        groups, start = [], 0
        for layer in self.layers:
            groups.append(params[start : start + len(layer.param_names)])
            start += len(layer.param_names)
        return groups

    @property
    def macs_per_sample(self) -> int:
        """Multiply-adds of one forward pass for one sample (the matmuls' size)."""
        return sum(layer.macs() for layer in self.layers)

    @property
    def num_outputs(self) -> int:
        return self.sizes[-1]

    @property
    def is_classifier(self) -> bool:
        """Outputs are class scores (one per class, argmax is the prediction)."""
        return self._classifier

    def config(self) -> dict:
        """The architecture, enough to rebuild this network (saved in model files)."""
        config = {
            "sizes": list(self.sizes),
            "activations": [act.spec() for act in self.activations],
            "loss": self.loss_name,
            "init": list(self.inits),
            "dropout": list(self.dropout),
            "dtype": self.dtype_name,
            "precision": self.precision.name,
        }
        if self.loss_name == "huber":
            config["huber_delta"] = self.loss.huber_delta
        if self.norm != "none":  # absent otherwise: files without a norm stay as they always were
            config["norm"] = self.norm
        return config

    def __repr__(self) -> str:
        layers = ", ".join(layer.describe() for layer in self.layers)
        dtype = self.precision.name if self.precision.mixed else self.dtype_name
        return f"MLP({layers}; loss={self.loss_name}; {dtype} on {self.backend})"

    # -- host state --------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters under their file names (``param_names``)."""
        return dict(zip(self.param_names, self.backend.to_host_many(self.params)))

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Replace the parameters by host arrays shaped like ``state_dict()``'s."""
        params = []
        for name, shape in param_shapes(self.layers).items():
            if name not in state:
                raise ConfigError(f"parameters lack {name!r} (expected shape {shape})")
            value = np.asarray(state[name])
            if value.shape != shape:
                raise ConfigError(f"parameter {name!r} has shape {value.shape}, expected {shape}")
            params.append(self.backend.upload(value, self.dtype))
        self.params = params

    # -- the math ----------------------------------------------------------------

    def _pass(self, train: bool) -> Pass:
        return Pass(self.xp, train, self.dtype, self.compute_dtype, self._dropout_mask)

    def forward(self, x, *, logits: bool = False, params: list | None = None, dtype=None):
        """Network output a^L for a batch ``x`` (rows are samples), no dropout;
        ``(z^L, a^L)`` with ``logits=True``, for losses computed from the logits.
        ``params`` (laid out as ``self.params``) in ``dtype``: a pass in another float type."""
        ctx = self._pass(train=False) if dtype is None else Pass(self.xp, False, dtype, dtype, self._dropout_mask)
        *body, head = self.layers
        *groups, head_params = self._grouped(self._compute_params() if params is None else params)
        a = x
        for layer, params in zip(body, groups):
            a, _ = layer.forward(ctx, params, a)
        z = ctx.to_master(head.affine(ctx, head_params, a))  # outputs and losses in the master dtype
        a = head.activation.forward(self.xp, z)
        return (z, a) if logits else a

    def backprop(self, x, y, *, train: bool = False, loss_scale=None, weights=None):
        """Loss, gradients and output for one batch: ``(C, [∂C/∂W^1, ∂C/∂b^1, ...], a^L)``.

        ``y`` holds float targets shaped like the output (see ``targets``). With
        ``train=True`` dropout is applied (inverted: kept units scaled by 1/(1-p)).
        Under mixed precision the passes run in the half type and the loss, BP1 and the
        gradients returned are float32; ``loss_scale`` (a 0-d device array, float16's loss
        scaling) multiplies δ^L before the backward pass and divides the gradients after.
        ``weights``: None (the plain batch mean), or each row's share of the batch's weight,
        a column ``(N, 1)`` in the master dtype (``xpnet.weights.batch_shares``).
        """
        ctx = self._pass(train)
        groups = self._grouped(self._compute_params())
        cost, z, out, caches = self._forward_pass(ctx, x, y, groups, weights)
        head = self.layers[-1]
        delta = self.loss.delta(self.xp, z, out, y, head.activation, weights)  # BP1
        if loss_scale is not None:
            delta = delta * loss_scale
        grads = [None] * len(self.layers)
        back, grads[-1] = head.backward_delta(ctx, groups[-1], caches[-1], ctx.to_compute(delta), len(self.layers) > 1)
        for k in reversed(range(len(self.layers) - 1)):
            back, grads[k] = self.layers[k].backward(ctx, groups[k], caches[k], back, input_error=k > 0)
        return cost, [self._unscaled(g, loss_scale) for layer_grads in grads for g in layer_grads], out

    def _forward_pass(self, ctx: Pass, x, y, groups: list, weights=None):
        """The training forward pass: ``(C, z^L, a^L, each layer's cache)``."""
        *body, head = self.layers
        caches, a = [], x
        for layer, params in zip(body, groups):
            a, cache = layer.forward(ctx, params, a)
            caches.append(cache)
        # a^L and the loss together (a fused loss shares their work), in the master dtype
        z = ctx.to_master(head.affine(ctx, groups[-1], a))
        out, cost = self.loss.output_and_value(self.xp, z, y, head.activation, weights)
        caches.append(head.cache(a, z))
        return cost, z, out, caches

    def _compute_params(self) -> list:
        """The parameters the passes run with: the masters, cast to the half type under mixed precision."""
        if not self.precision.mixed:
            return self.params
        return [self.xp.astype(p, self.compute_dtype) for p in self.params]

    def _unscaled(self, grad, loss_scale):
        grad = self.xp.astype(grad, self.dtype) if self.precision.mixed else grad
        return grad if loss_scale is None else grad / loss_scale

    def gradients(self, x, y):
        """``(loss, [(∂C/∂W, ∂C/∂b), ...])`` for a batch, one record per layer with parameters: ``.W``
        and ``.b`` for a dense layer, ``.gamma`` and ``.beta`` for a norm; for teaching and checks.

        ``x`` and ``y`` may be host arrays; ``y`` may be class labels or targets.
        """
        x = check_inputs(self, x, "x")
        y = check_targets(self, y, x.shape[0])
        with self.backend.activated():
            x = self.prepare(self.to_device(x))
            cost, grads, _ = self.backprop(x, self.targets(self.to_device(y, labels=True)))
        return cost, [layer.named(group) for layer, group in zip(self.layers, self._grouped(grads)) if group]

    def _dropout_mask(self, shape, rate):
        keep = self.dropout_rng.uniform(shape, self.dtype) >= rate  # drawn in float32: CuPy draws no halves
        return self.xp.astype(keep, self.compute_dtype) / (1.0 - rate)

    # -- inputs and targets ------------------------------------------------------

    def set_scaling(self, scaling) -> None:
        """Make the network scale raw inputs itself: x -> (x - shift) * scale.

        ``scaling`` has host ``shift`` and ``scale`` (numbers or per-feature arrays),
        as ``xpnet.data.Scaling`` does; it travels with the model file, so raw uint8
        images can be fed to a trained model.
        """
        self.scaling = scaling
        if scaling is None:
            self._scaling_on_device = self._scaling_kernel_args = None
            return
        # In the master dtype (float32 under mixed precision), cast to the half type after: a scale
        # above 65504 (a std under ~1.5e-5) is inf in float16, and x - shift in half loses a feature
        # with mean 1000 and std 0.56 (off by 0.5 std); Scaling.apply and ONNX export scale in float32.
        on_device, kernel_args = [], []
        for value in (scaling.shift, scaling.scale):
            value = np.asarray(value, dtype=np.float64)
            per_feature = self.backend.upload(np.broadcast_to(value, (self.sizes[0],)), self.dtype)
            on_device.append(float(value) if value.ndim == 0 else per_feature)
            kernel_args.append(per_feature)  # arrays, so they fix the kernel's S to the master dtype
        self._scaling_on_device, self._scaling_kernel_args = tuple(on_device), tuple(kernel_args)

    #: The fused CuPy form of ``prepare``: a raw batch (uint8 pixels, say) cast and scaled in one pass,
    #: the arithmetic in S (the master dtype), the result rounded once to T (the compute dtype).
    SCALE_KERNEL = define_kernel("scale_inputs", "X x, S shift, S scale", "T out", "out = (x - shift) * scale;")

    def prepare(self, x):
        """A batch of raw inputs as the first layer wants them: compute dtype, scaled (in the master dtype)."""
        kernel = fused_kernel(self.xp, self.SCALE_KERNEL) if self._scaling_on_device is not None else None
        if kernel is not None:  # the cast and the scaling in one pass
            return kernel(x, *self._scaling_kernel_args, self.xp.empty(x.shape, dtype=self.compute_dtype))
        if self._scaling_on_device is None:
            return x if x.dtype == self.compute_dtype else self.xp.astype(x, self.compute_dtype)
        fresh = x.dtype != self.dtype
        if fresh:
            x = self.xp.astype(x, self.dtype)
        shift, scale = self._scaling_on_device
        if not fresh:
            x = (x - shift) * scale
        else:  # x is our own copy (the cast made it): scale it in place, with no second batch-sized array.
            if not (isinstance(shift, float) and shift == 0.0):
                x -= shift
            x *= scale
        return x if self.dtype == self.compute_dtype else self.xp.astype(x, self.compute_dtype)

    def to_device(self, data, *, labels: bool = False):
        """``data`` on this network's device, uploaded once: uint8 stays uint8, integer labels
        become int32, other floats the network dtype. Arrays already in the backend's
        namespace are used as they are; ``prepare`` casts and scales each batch."""
        if self.backend.owns(data):
            return data
        if self.backend.same_library(data):  # on another device of this library: copied across
            return self.backend.copy(data)
        return self.backend.upload(*self.device_form(data, labels=labels))

    def device_form(self, data, *, labels: bool = False) -> tuple[np.ndarray, Any]:
        """``(host array, dtype)`` that ``to_device`` uploads host ``data`` as (None: its own dtype)."""
        data = np.asarray(data)
        if data.dtype == np.uint8 and not labels:
            return data, None
        if labels and data.dtype.kind in "iub":
            return data.astype(np.int32, copy=False), None
        return data, self.dtype

    def targets(self, y, smoothing: float = 0.0):
        """Float targets shaped like the output: one-hot rows for integer class labels.

        ``smoothing`` ε > 0 gives label smoothing: 1 - ε + ε/k on the true class, ε/k elsewhere
        (k classes; a single sigmoid output stands for k = 2).
        """
        xp = self.xp
        if xp.isdtype(y.dtype, "integral") and self.is_classifier:
            if y.ndim != 1:
                raise ConfigError(f"class labels must be 1-D, not shaped {tuple(y.shape)}")
            # A single (sigmoid) output scores class 1, as predict reads it: its target is y == 1.
            if self._class_ids is None:  # made once: this runs every training step
                first = 1 if self.num_outputs == 1 else 0
                device = self.backend.device_of(y)
                self._class_ids = xp.arange(first, first + self.num_outputs, dtype=xp.int32, device=device)
            onehot = xp.astype(y[:, None] == self._class_ids[None, :], self.dtype)
            if smoothing:
                onehot = onehot * (1.0 - smoothing) + smoothing / max(self.num_outputs, 2)
            return onehot
        if y.ndim == 1:
            y = xp.reshape(y, (-1, 1))
        if y.shape[1] != self.num_outputs:
            raise ConfigError(f"targets have {y.shape[1]} columns but the network has {self.num_outputs} outputs")
        return y if y.dtype == self.dtype else xp.astype(y, self.dtype)

    # -- the user-facing API ---------------------------------------------------------

    def fit(self, X, y, **options):
        """Train on ``(X, y)``; see ``xpnet.train.fit`` for the options. Returns the history."""
        return training.fit(self, X, y, **options)

    def predict_proba(self, X, batch_size: int = 4096, dtype: str | None = None):
        """Network outputs for ``X``, in ``X``'s namespace (host NumPy in, NumPy out); ``dtype="float64"``
        computes them in float64 (a row's outputs then do not depend on its batch-mates; see ``xpnet.evaluate``)."""
        with self.backend.activated():
            return inference.predict_outputs(self, X, batch_size=batch_size, dtype=dtype)

    def predict(self, X, batch_size: int = 4096):
        """Class labels for classifiers (argmax of the outputs), else the outputs."""
        with self.backend.activated():
            return inference.predict(self, X, batch_size=batch_size)

    def evaluate(self, X, y, batch_size: int = 4096, sample_weight=None) -> dict[str, float]:
        """``{"loss": ..., "accuracy": ...}`` (regression: ``loss``, ``mse`` and ``r2``), weighted by
        ``sample_weight`` where given."""
        with self.backend.activated():
            return inference.evaluate(self, X, y, batch_size=batch_size, sample_weight=sample_weight)

    def save(self, path, **metadata) -> None:
        """Write this model to a safetensors file (see ``xpnet.modelfile``): ``training``, ``class_names``."""
        unknown = sorted(set(metadata) - {"training", "class_names", "history", "optimizer"})
        if unknown:
            raise ConfigError(f"MLP.save: unknown arguments {', '.join(unknown)}; it takes training and class_names")
        save_model(path, self, **metadata)


def _check_sizes(sizes) -> list[int]:
    try:
        if isinstance(sizes, (str, bytes)):  # "784" would otherwise become [7, 8, 4]
            raise TypeError
        sizes = [int(n) for n in sizes]
    except (TypeError, ValueError):
        raise ConfigError(f"sizes must be a list of layer widths such as [784, 128, 10], not {sizes!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise ConfigError(f"sizes needs at least an input and an output width, all >= 1; got {sizes}")
    return sizes


def _per_layer(spec, depth: int, what: str) -> list:
    if isinstance(spec, (str, int, float)) or spec is None:
        return [spec] * depth
    spec = list(spec)
    if len(spec) != depth:
        raise ConfigError(f"{what} lists {len(spec)} entries but the network has {depth} layers")
    return spec


def _layer_activations(activation, output, loss, depth, outputs: int) -> list[Activation]:
    if isinstance(activation, (str, Activation)):
        names = [activation] * (depth - 1) + [output or NATURAL_OUTPUT[loss]]
    else:
        if output is not None:
            raise ConfigError("give the output activation either in the activation list or as output=, not both")
        names = _per_layer(activation, depth, "activation")
    activations = [get_activation(name) for name in names]
    if activations[-1].name == "softmax" and outputs == 1:
        raise ConfigError(
            "a softmax over 1 output is always 1, so it predicts one class whatever the input; give the "
            "network 2 outputs, or 1 sigmoid output with loss='binary_cross_entropy'"
        )
    return activations


def _check_dropout(dropout, depth) -> list[float]:
    if isinstance(dropout, (int, float)):
        rates = [float(dropout)] * (depth - 1) + [0.0]  # never drop the outputs
    else:
        rates = [float(r) for r in _per_layer(dropout, depth, "dropout")]
    for rate in rates:
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"dropout rates must be in [0, 1), not {rate}")
    if rates[-1]:
        raise ConfigError(f"dropout on the output layer ({rates[-1]}) is not supported; give 0 for the last layer")
    return rates


def architecture_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every parameter's file name and shape for an architecture (``config()``, a file's), nothing allocated."""
    activations = [get_activation(spec) for spec in config["activations"]]
    return param_shapes(stack(config["sizes"], activations, config.get("norm", "none")))
