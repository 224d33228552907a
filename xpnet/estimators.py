"""scikit-learn estimators trained by xpnet: ``XpnetClassifier`` and ``XpnetRegressor``.

They keep scikit-learn's estimator contract (tests/test_sklearn.py runs scikit-learn's own
``parametrize_with_checks`` on them) and take ``MLPClassifier``/``MLPRegressor``'s
hyperparameters, with the same meaning wherever xpnet has the same idea, so a pipeline
switches by changing one import. ``backend=``/``device=`` train on PyTorch or on a CUDA
GPU (``device="cuda"`` is CuPy); inputs and predictions stay host arrays.

Needs ``pip install "xpnet[sklearn]"``; ``import xpnet`` alone never imports scikit-learn.
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from xpnet.errors import ConfigError
from xpnet.network import MLP
from xpnet.optim import SGD, Adam, AdamW
from xpnet.scaling import SCALINGS, Scaling
from xpnet.train import History

_SOLVERS = ("sgd", "adam", "adamw")
_DTYPES = {"float32": np.float32, "float64": np.float64}
#: scikit-learn's activation names that xpnet spells differently.
_ACTIVATION_ALIASES = {"logistic": "sigmoid"}
#: Seeds are drawn below this bound from the estimator's random state.
_SEED_BOUND = 2**31 - 1


class _XpnetMLP(BaseEstimator):
    """What the classifier and the regressor share: settings, the fit loop, pickling.

    Subclasses say how targets become network outputs (``_encode_targets``) and how
    outputs become predictions.
    """

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate_init=0.001,
        schedule="constant",
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        dropout=0.0,
        init="auto",
        scaling=None,
        dtype="float32",
        backend=None,
        device=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.schedule = schedule
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.init = init
        self.scaling = scaling
        self.dtype = dtype
        self.backend = backend
        self.device = device

    # -- settings ----------------------------------------------------------------------

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, numbers.Integral) else sizes
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(isinstance(n, numbers.Integral) and n >= 1 for n in sizes):
            raise ConfigError(
                f"hidden_layer_sizes must be a whole number >= 1 or a sequence of them, "
                f"such as (100,) or (128, 64); got {self.hidden_layer_sizes!r}"
            )
        return [int(n) for n in sizes]

    def _check_settings(self) -> None:
        """Refuse settings xpnet cannot use, naming the parameter (fit time, as scikit-learn does)."""
        if self.solver not in _SOLVERS:
            raise ConfigError(f"solver must be one of {', '.join(_SOLVERS)}, not {self.solver!r}")
        if self.scaling is not None and self.scaling not in SCALINGS:
            raise ConfigError(f"scaling must be None or one of {', '.join(SCALINGS)}, not {self.scaling!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, not {self.dtype!r}")
        whole = {"max_iter": self.max_iter, "n_iter_no_change": self.n_iter_no_change}
        if self.batch_size != "auto":
            whole["batch_size"] = self.batch_size
        for name, value in whole.items():
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, not {value!r}")
        for name, value in {"alpha": self.alpha, "tol": self.tol}.items():
            if not _real(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, not {value!r}")
        if not _real(self.validation_fraction) or not 0 < self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in (0, 1), not {self.validation_fraction!r}")
        self._hidden_sizes()

    def _batch_size(self, n_samples: int) -> int:
        """``batch_size``, or for "auto" the steps of scikit-learn's min(200, n), evened out.

        xpnet's batches have one size (the ``n % batch_size`` left over sit the epoch out);
        scikit-learn ends each epoch on a short batch. "auto" takes as many steps as
        scikit-learn, ceil(n / 200), with n // steps samples each, so under ``steps``
        samples sit out where 200 would leave up to 199.
        """
        if self.batch_size != "auto":
            return min(int(self.batch_size), n_samples)
        steps = -(-n_samples // 200)
        return n_samples // steps

    def _new_optimizer(self, batch_size: int):
        """The update rule ``solver`` names; ``alpha`` is scikit-learn's L2 penalty.

        scikit-learn adds ``alpha * W / batch_size`` to the mean gradient; xpnet's SGD and
        Adam add ``weight_decay * W``, so weight_decay = alpha / batch_size gives the same
        step. AdamW takes ``alpha`` as its decoupled rate (W <- W (1 - lr alpha)).
        """
        lr, schedule = float(self.learning_rate_init), self.schedule
        if self.solver == "sgd":
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            l2 = float(self.alpha) / batch_size
            return SGD(lr, momentum=self.momentum, nesterov=nesterov, weight_decay=l2, schedule=schedule)
        betas = (self.beta_1, self.beta_2)
        if self.solver == "adam":
            return Adam(lr, betas, self.epsilon, weight_decay=float(self.alpha) / batch_size, schedule=schedule)
        return AdamW(lr, betas, self.epsilon, weight_decay=float(self.alpha), schedule=schedule)

    def _new_network(self, n_features: int, n_outputs: int, loss: str, output: str, seed: int) -> MLP:
        activation = _ACTIVATION_ALIASES.get(self.activation, self.activation)
        return MLP(
            [n_features, *self._hidden_sizes(), n_outputs],
            activation=activation,
            loss=loss,
            output=output,
            init=self.init,
            dropout=self.dropout,
            backend=self.backend,
            device=self.device,
            dtype=self.dtype,
            seed=seed,
        )

    # -- training ----------------------------------------------------------------------

    def fit(self, X, y):
        """Train from scratch (or on from the last fit with ``warm_start=True``); returns self."""
        return self._fit(X, y, incremental=False)

    def _fit(self, X, y, *, incremental: bool, classes=None):
        self._check_settings()
        if incremental and self.early_stopping:
            raise ConfigError("partial_fit does not support early_stopping=True (there is no held-out set)")
        fresh = not hasattr(self, "model_") or not (self.warm_start or incremental)
        X, y = validate_data(
            self, X, y, reset=fresh, dtype=_DTYPES[self.dtype], multi_output=True, y_numeric=self._y_numeric
        )
        targets, n_outputs, loss, output = self._encode_targets(y, fresh=fresh, classes=classes)
        if fresh:
            self._random_state = check_random_state(self.random_state)
            seed = int(self._random_state.randint(_SEED_BOUND))
            self.model_ = self._new_network(X.shape[1], n_outputs, loss, output, seed)
            if self.scaling is not None:  # inside the network: saved with it, exported to ONNX with it
                self.model_.set_scaling(Scaling.fit(self.scaling, X))
            self.n_outputs_ = n_outputs
            self.n_layers_ = len(self.model_.sizes)
            self.out_activation_ = self.model_.activations[-1].spec()
            self.t_ = 0
            self.loss_curve_ = []
            self._no_improvement_count = 0
            self.best_loss_ = None if self.early_stopping else np.inf
            self.validation_scores_ = [] if self.early_stopping else None
            self.best_validation_score_ = -np.inf if self.early_stopping else None
        X_train, y_train, validation = self._split(X, targets, incremental)
        batch_size = self._batch_size(X_train.shape[0])
        if not incremental or getattr(self, "_optimizer", None) is None:
            self._optimizer = self._new_optimizer(batch_size)
            self._optimizer_batch_size = batch_size
        self._train(X_train, y_train, batch_size, validation, epochs=1 if incremental else self.max_iter)
        return self

    def _split(self, X, targets, incremental: bool):
        """``(X_train, y_train, validation)``: with early stopping, a stratified held-out set."""
        if not self.early_stopping or incremental:
            return X, targets, None
        stratify = targets if self._stratify and targets.ndim == 1 else None
        X_train, X_val, y_train, y_val = train_test_split(
            X, targets, random_state=self._random_state, test_size=self.validation_fraction, stratify=stratify
        )
        if X_val.shape[0] < 2:
            raise ConfigError(
                f"the validation set holds {X_val.shape[0]} sample(s); early stopping needs at least 2: "
                "raise validation_fraction or give more data"
            )
        return X_train, y_train, (X_val, y_val)

    def _train(self, X, y, batch_size: int, validation, epochs: int) -> None:
        used = X.shape[0] // batch_size * batch_size  # samples an epoch trains on (fixed-size batches)
        rule = _StoppingRule(self, validation, used, stop_allowed=epochs > 1)
        self.n_iter_ = 0
        self.model_.fit(
            X,
            y,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=self._optimizer,
            shuffle=bool(self.shuffle),
            seed=int(self._random_state.randint(_SEED_BOUND)),
            verbose=bool(self.verbose),
            on_epoch_end=rule.epoch_ended,
            should_stop=rule.should_stop,
        )
        if rule.best_state is not None:  # early stopping keeps the best epoch's weights, as scikit-learn does
            self.model_.load_state_dict(rule.best_state)
        if epochs > 1 and not rule.stopped:
            warnings.warn(
                f"{type(self).__name__}: max_iter={self.max_iter} epochs reached and the optimization "
                "has not converged yet",
                ConvergenceWarning,
                stacklevel=4,
            )

    # -- prediction --------------------------------------------------------------------

    def _outputs(self, X) -> np.ndarray:
        """The network's outputs for raw ``X``, checked against what ``fit`` saw, as float64
        (scikit-learn's type for predictions; the network itself computes in ``dtype``)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=_DTYPES[self.model_.dtype_name])
        return self._raw_outputs(X).astype(np.float64)

    def _raw_outputs(self, X) -> np.ndarray:
        """Outputs for ``X`` already validated (the held-out set of early stopping)."""
        return np.asarray(self.model_.predict_proba(X))

    # -- persistence -------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the trained network to a safetensors model file: the format for sharing models.

        Pickles (which scikit-learn and joblib need) can run code when loaded; a model
        file never does, and ``xpnet.load_model``, ``python -m xpnet predict`` and
        ``python -m xpnet export --onnx`` read it.
        """
        check_is_fitted(self)
        names = [str(c) for c in getattr(self, "classes_", [])]
        self.model_.save(path, class_names=names)

    def __getstate__(self):
        """The network as host arrays (device arrays and modules do not pickle)."""
        state = dict(super().__getstate__())
        if isinstance(state.get("model_"), MLP):
            state["model_"] = _PortableNetwork.of(state["model_"], state.get("_optimizer"))
            state["_optimizer"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        portable = self.__dict__.get("model_")
        if isinstance(portable, _PortableNetwork):
            self.model_ = portable.network(self.backend, self.device)
            if portable.optimizer_buffers is not None:
                self._optimizer = portable.optimizer(self.model_, self._new_optimizer(self._optimizer_batch_size))


class _StoppingRule:
    """scikit-learn's rule for ending training, applied after each epoch of ``fit``.

    Without early stopping: stop once the training loss has not improved by ``tol`` for
    more than ``n_iter_no_change`` epochs. With it: the same on the validation score,
    keeping the weights of the best-scoring epoch.
    """

    def __init__(self, estimator: _XpnetMLP, validation, samples_per_epoch: int, stop_allowed: bool):
        self.estimator = estimator
        self.validation = validation
        self.samples_per_epoch = samples_per_epoch
        self.stop_allowed = stop_allowed
        self.stopped = False
        self.best_state = None

    def should_stop(self) -> bool:
        return self.stopped

    def epoch_ended(self, history: History) -> None:
        est = self.estimator
        record = history.records[-1]
        est.n_iter_ += 1
        est.t_ += self.samples_per_epoch
        est.loss_ = record["loss"]
        est.loss_curve_.append(record["loss"])
        if self.validation is not None:
            score = est._validation_score(*self.validation)
            est.validation_scores_.append(score)
            improved = score >= est.best_validation_score_ + est.tol
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                self.best_state = est.model_.state_dict()
            if est.verbose:
                print(f"validation score {score:.6f}")
        else:
            improved = record["loss"] <= est.best_loss_ - est.tol
            est.best_loss_ = min(est.best_loss_, record["loss"])
        est._no_improvement_count = 0 if improved else est._no_improvement_count + 1
        if self.stop_allowed and est._no_improvement_count > est.n_iter_no_change:
            self.stopped = True
            if est.verbose:
                what = "validation score" if self.validation is not None else "training loss"
                print(f"{what} did not improve by tol={est.tol} for {est.n_iter_no_change} epochs: stopping")


@dataclass
class _PortableNetwork:
    """A trained network (and its optimizer's buffers) as host arrays, for pickling."""

    config: dict
    state: dict
    scaling: object
    optimizer_buffers: list | None
    optimizer_steps: int

    @classmethod
    def of(cls, net: MLP, optimizer) -> _PortableNetwork:
        buffers = net.backend.to_host_many(optimizer.state_arrays()) if optimizer is not None else None
        steps = optimizer.steps if optimizer is not None else 0
        return cls(net.config(), net.state_dict(), net.scaling, buffers, steps)

    def network(self, backend, device) -> MLP:
        """The network rebuilt on ``backend``/``device`` (the estimator's, as in ``fit``)."""
        c = self.config
        layers = {key: c[key] for key in ("init", "dropout", "dtype")}
        net = MLP(c["sizes"], c["activations"], c["loss"], **layers, backend=backend, device=device)
        net.load_state_dict(self.state)
        net.set_scaling(self.scaling)
        return net

    def optimizer(self, net: MLP, optimizer):
        """``optimizer`` (new, as the estimator's settings make it) given the saved buffers back."""
        if self.optimizer_buffers:
            buffers = [net.backend.upload(b, net.dtype) for b in self.optimizer_buffers]
            optimizer.load_state_arrays(buffers, self.optimizer_steps, net.params)
        return optimizer


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


class XpnetClassifier(ClassifierMixin, _XpnetMLP):
    """A multilayer perceptron classifier trained by xpnet's backpropagation.

    The parameters are ``sklearn.neural_network.MLPClassifier``'s, with its defaults
    (``solver`` is ``"sgd"``, ``"adam"`` or ``"adamw"``: xpnet has no L-BFGS), plus
    ``schedule`` (``constant``, ``step``, ``cosine``, ``warmup-cosine``: the learning
    rate over ``max_iter`` epochs), ``dropout``, ``init``, ``scaling`` (``"standard"``,
    ``"unit"``, ``"symmetric"``: an input scaling fitted on ``X`` and kept inside the network,
    so the saved model and its ONNX export take raw features), ``dtype`` (float32, or
    float64 for exactness), and ``backend``/``device`` (``device="cuda"`` trains on a GPU
    with CuPy, ``backend="torch"`` with PyTorch).

    Two classes get one sigmoid output, more get a softmax; a 2-D 0/1 indicator ``y`` is
    multilabel (one sigmoid per label). Labels may be any sortable values (strings too).
    ``sample_weight`` is not supported: ``fit`` has no such parameter, which is how
    scikit-learn's meta-estimators know not to pass one.

    Differences from MLPClassifier: batches have one fixed size, so the
    ``n % batch_size`` samples a shuffle leaves over sit that epoch out (``"auto"`` takes
    scikit-learn's number of steps with even batches, so fewer than that many sit out);
    ``init="auto"`` is He for ReLU layers (``"glorot_uniform"`` is scikit-learn's bound);
    ``loss_curve_`` is the data loss without the L2 term.

    Fitted attributes: ``classes_``, ``n_features_in_``, ``feature_names_in_`` (from a
    DataFrame), ``n_iter_``, ``loss_``, ``loss_curve_``, ``best_loss_``,
    ``validation_scores_``/``best_validation_score_`` (with early stopping), ``t_``,
    ``n_outputs_``, ``n_layers_``, ``out_activation_`` and ``model_``, the trained
    ``xpnet.MLP``. Pickling works (scikit-learn and joblib need it), but pickles run
    code when loaded: share models as the safetensors file ``save`` writes.
    """

    _y_numeric = False
    _stratify = True

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``; the first call needs ``classes``, all the labels there will be."""
        if not hasattr(self, "classes_") and classes is None:
            raise ConfigError("classes must be passed on the first call to partial_fit (every label there will be)")
        return self._fit(X, y, incremental=True, classes=classes)

    def _encode_targets(self, y, *, fresh: bool, classes):
        """Class indices (int32) or, for multilabel, a float indicator; plus the loss and output."""
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        multilabel = type_of_target(y) == "multilabel-indicator"
        if fresh:
            self._multilabel = multilabel
            self._label_dtype = y.dtype
            if multilabel:
                self.classes_ = np.arange(y.shape[1])
            else:
                self.classes_ = np.unique(y if classes is None else np.asarray(classes))
                if len(self.classes_) < 2:
                    raise ConfigError(
                        f"{type(self).__name__} needs at least 2 classes to tell apart, but y holds "
                        f"one class ({self.classes_[0]!r})"
                    )
        if multilabel != self._multilabel or (multilabel and y.shape[1] != len(self.classes_)):
            raise ConfigError("y is not shaped like the targets of the first fit (multilabel vs. class labels)")
        if multilabel:
            return y.astype(_DTYPES[self.dtype]), y.shape[1], "binary_cross_entropy", "sigmoid"
        index = np.searchsorted(self.classes_, y)
        unseen = (index >= len(self.classes_)) | (self.classes_[np.minimum(index, len(self.classes_) - 1)] != y)
        if np.any(unseen):
            raise ConfigError(f"y holds labels {np.unique(y[unseen])[:5]} that are not in classes_ {self.classes_}")
        if len(self.classes_) == 2:  # one sigmoid output scores the second class, as MLPClassifier's
            return index.astype(np.int32), 1, "binary_cross_entropy", "sigmoid"
        return index.astype(np.int32), len(self.classes_), "cross_entropy", "softmax"

    def _validation_score(self, X_val, y_val) -> float:
        predicted = self._predict_indices(self._raw_outputs(X_val))
        hits = np.all(predicted == y_val, axis=1) if self._multilabel else predicted == y_val
        return float(np.mean(hits))

    def _predict_indices(self, outputs):
        if self._multilabel:
            return (outputs > 0.5).astype(np.int32)
        if outputs.shape[1] == 1:
            return (outputs[:, 0] > 0.5).astype(np.int32)
        return np.argmax(outputs, axis=1)

    def predict(self, X):
        """The predicted class of each row (a 0/1 indicator row for multilabel targets)."""
        indices = self._predict_indices(self._outputs(X))
        return indices.astype(self._label_dtype) if self._multilabel else self.classes_[indices]

    def predict_proba(self, X):
        """Class probabilities, one column per class of ``classes_``, rows summing to 1
        (multilabel: each label's probability)."""
        outputs = self._outputs(X)
        if outputs.shape[1] == 1 and not self._multilabel:
            return np.hstack([1.0 - outputs, outputs])
        return outputs

    def predict_log_proba(self, X):
        """The logarithm of ``predict_proba``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class XpnetRegressor(RegressorMixin, _XpnetMLP):
    """A multilayer perceptron regressor trained by xpnet's backpropagation (MSE, linear output).

    The parameters are ``sklearn.neural_network.MLPRegressor``'s with its defaults, plus
    xpnet's own (see ``XpnetClassifier``). A 2-D ``y`` trains one output per column
    (multi-output regression) and predictions keep ``y``'s shape. ``sample_weight`` is
    not supported (``fit`` has no such parameter).

    Differences from MLPRegressor: fixed-size batches (see ``XpnetClassifier``); the loss
    is 1/(2N) Σ‖a − y‖², summed over outputs, where scikit-learn averages over them too.
    Pickles work but run code when loaded: share models with ``save`` (safetensors).
    """

    _y_numeric = True
    _stratify = False

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``, continuing from the current weights."""
        return self._fit(X, y, incremental=True)

    def _encode_targets(self, y, *, fresh: bool, classes):
        if fresh:
            self._one_d = y.ndim == 1
        targets = np.asarray(y, dtype=_DTYPES[self.dtype]).reshape(y.shape[0], -1)
        if not fresh and targets.shape[1] != self.n_outputs_:
            raise ConfigError(f"y has {targets.shape[1]} target columns but the model has {self.n_outputs_} outputs")
        return targets, targets.shape[1], "mse", "identity"

    def _validation_score(self, X_val, y_val) -> float:
        return float(r2_score(y_val, self._raw_outputs(X_val)))

    def predict(self, X):
        """The predicted targets: shaped ``(n,)`` if ``fit`` saw a 1-D ``y``, else ``(n, outputs)``."""
        outputs = self._outputs(X)
        return outputs[:, 0] if self._one_d else outputs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
