"""What xpnet's scikit-learn estimators share: their settings, the fit loop, stopping, pickling.

``XpnetEstimator`` takes ``MLPClassifier``'s hyperparameters (plus xpnet's own), turns
them into an ``xpnet.MLP`` and an optimizer, and trains with ``MLP.fit``, ending by
scikit-learn's rule (``_StoppingRule``). ``xpnet.estimators`` holds the classifier and
the regressor built on it; see there.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from xpnet.build import build_network, build_optimizer
from xpnet.checks import DTYPES as FLOAT_TYPES
from xpnet.checks import dtype_name, is_number, is_whole, whole
from xpnet.errors import ConfigError
from xpnet.estimator_params import estimator_init
from xpnet.network import MLP
from xpnet.optim import OPTIMIZERS
from xpnet.scaling import SCALINGS, Scaling
from xpnet.train import History
from xpnet.weights import check_sample_weight

#: The float types an estimator trains in, by the name ``dtype`` takes.
DTYPES = {name: np.dtype(name).type for name in FLOAT_TYPES}
#: scikit-learn's activation names that xpnet spells differently.
_ACTIVATION_ALIASES = {"logistic": "sigmoid"}
#: Seeds are drawn below this bound from the estimator's random state.
_SEED_BOUND = 2**31 - 1


class XpnetEstimator(BaseEstimator):
    """The base of ``XpnetClassifier`` and ``XpnetRegressor``: settings, the fit loop, pickling.

    Subclasses say how targets become network outputs (``_encode_targets``), what early
    stopping scores (``_validation_score``) and how outputs become predictions.
    """

    #: The parameters a subclass adds to the shared ones (``estimator_params``), with defaults.
    _own_parameters: ClassVar[dict] = {}
    __init__ = estimator_init(_own_parameters)

    def __init_subclass__(cls, **kwargs):
        """A subclass that names its own parameters gets the ``__init__`` that takes them."""
        super().__init_subclass__(**kwargs)
        if "_own_parameters" in vars(cls) and "__init__" not in vars(cls):
            cls.__init__ = estimator_init(cls._own_parameters)

    # -- settings ----------------------------------------------------------------------

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if is_whole(sizes) else sizes
        try:
            sizes = list(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(is_whole(n) and n >= 1 for n in sizes):
            raise ConfigError(
                f"hidden_layer_sizes must be a whole number >= 1 or a sequence of them, "
                f"such as (100,) or (128, 64); got {self.hidden_layer_sizes!r}"
            )
        return [int(n) for n in sizes]

    def _check_settings(self) -> None:
        """Refuse settings xpnet cannot use, naming the parameter (fit time, as scikit-learn does)."""
        if self.solver not in OPTIMIZERS:
            raise ConfigError(f"solver must be one of {OPTIMIZERS.listing()}, not {self.solver!r}")
        if self.scaling is not None and self.scaling not in SCALINGS:
            raise ConfigError(f"scaling must be None or one of {', '.join(SCALINGS)}, not {self.scaling!r}")
        dtype_name(self.dtype)
        whole_numbers = {"max_iter": self.max_iter, "n_iter_no_change": self.n_iter_no_change}
        if self.batch_size != "auto":
            whole_numbers["batch_size"] = self.batch_size
        for name, value in whole_numbers.items():
            whole(name, value, minimum=1)
        for name, value in {"alpha": self.alpha, "tol": self.tol}.items():
            if not is_number(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, not {value!r}")
        if not is_number(self.validation_fraction) or not 0 < self.validation_fraction < 1:
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

    def _new_optimizer(self, batch_size: float):
        """The update rule ``solver`` names; ``alpha`` is scikit-learn's L2 penalty.

        scikit-learn adds ``alpha * W / batch_size`` to the mean gradient; xpnet's SGD and
        Adam add ``weight_decay * W``, so weight_decay = alpha / batch_size gives the same
        step. AdamW takes ``alpha`` as its decoupled rate (W <- W (1 - lr alpha)). With sample
        weights ``batch_size`` is a batch's expected weight (its size times the mean weight).
        """
        settings = {"optimizer": self.solver, "lr": float(self.learning_rate_init), "schedule": self.schedule}
        if self.solver == "sgd":
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            settings.update(momentum=self.momentum, nesterov=nesterov, weight_decay=float(self.alpha) / batch_size)
        else:
            settings.update(beta1=self.beta_1, beta2=self.beta_2, eps=self.epsilon)
            settings["weight_decay"] = float(self.alpha) / batch_size if self.solver == "adam" else float(self.alpha)
        return build_optimizer(settings)

    def _new_network(self, n_features: int, n_outputs: int, loss: str, output: str, seed: int) -> MLP:
        activation = _ACTIVATION_ALIASES.get(self.activation, self.activation)
        settings = {"layers": self._hidden_sizes(), "activation": activation, "loss": loss, "output": output}
        settings.update(init=self.init, dropout=self.dropout, norm=self.norm, dtype=self.dtype, seed=seed)
        settings["huber_delta"] = getattr(self, "huber_delta", 1.0)  # XpnetRegressor(loss="huber")
        return build_network(settings, n_features, n_outputs, backend=self.backend, device=self.device)

    # -- training ----------------------------------------------------------------------

    def fit(self, X, y, sample_weight=None):
        """Train from scratch (or on from the last fit with ``warm_start=True``); returns self.

        ``sample_weight``: one number >= 0 per row; each batch's loss is then the weighted mean
        (a row of weight 2 counts as the row given twice)."""
        return self._fit(X, y, incremental=False, sample_weight=sample_weight)

    def _fit(self, X, y, *, incremental: bool, classes=None, sample_weight=None):
        self._check_settings()
        if incremental and self.early_stopping:
            raise ConfigError("partial_fit does not support early_stopping=True (there is no held-out set)")
        fresh = not hasattr(self, "model_") or not (self.warm_start or incremental)
        X, y = validate_data(
            self, X, y, reset=fresh, dtype=DTYPES[self.dtype], multi_output=True, y_numeric=self._y_numeric
        )
        targets, n_outputs, loss, output = self._encode_targets(y, fresh=fresh, classes=classes)
        weights = None if sample_weight is None else check_sample_weight(sample_weight, X.shape[0])
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
        X_train, y_train, w_train, validation = self._split(X, targets, weights, incremental)
        w_train = self._row_weights(y_train, w_train)
        batch_size = self._batch_size(X_train.shape[0])
        if not incremental or getattr(self, "_optimizer", None) is None:
            # The L2 penalty is alpha / (the batch's weight), scikit-learn's rule: weight 2 is the row twice.
            penalty_batch = batch_size * (1.0 if w_train is None else float(np.mean(w_train)))
            self._optimizer = self._new_optimizer(penalty_batch)
            self._optimizer_batch_size = penalty_batch
        epochs = 1 if incremental else int(self.max_iter)
        self._train(X_train, y_train, batch_size, validation, epochs, w_train)
        return self

    def _row_weights(self, targets, sample_weight):
        """Each training row's weight for ``MLP.fit`` (classifiers multiply in ``class_weight``), or None."""
        return sample_weight

    def _split(self, X, targets, weights, incremental: bool):
        """``(X_train, y_train, w_train, validation)``: with early stopping, a stratified held-out set
        (``(X_val, y_val, w_val)``: ``w_val`` None without sample weights)."""
        if not self.early_stopping or incremental:
            return X, targets, weights, None
        stratify = targets if self._stratify and targets.ndim == 1 else None
        arrays = (X, targets) if weights is None else (X, targets, weights)
        parts = train_test_split(
            *arrays, random_state=self._random_state, test_size=self.validation_fraction, stratify=stratify
        )
        X_train, X_val, y_train, y_val = parts[:4]
        w_train, w_val = parts[4:] or (None, None)
        if X_val.shape[0] < 2:
            raise ConfigError(
                f"the validation set holds {X_val.shape[0]} sample(s); early stopping needs at least 2: "
                "raise validation_fraction or give more data"
            )
        return X_train, y_train, w_train, (X_val, y_val, w_val)

    def _train(self, X, y, batch_size: int, validation, epochs: int, sample_weight) -> None:
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
            sample_weight=sample_weight,
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
        (scikit-learn's type for predictions).

        Computed in ``X``'s precision, as scikit-learn's MLP does: float64 ``X`` (scikit-learn's
        default) in float64 with the weights upcast, so that a row's prediction does not depend on
        the rows predicted with it (in float32 the BLAS rounds a batch of 1 and of 20 rows differently,
        by ~1e-7); float32 ``X`` in the network's ``dtype``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        wide = X.dtype == np.float64 or self.model_.dtype_name == "float64"
        return self._raw_outputs(X, "float64" if wide else None).astype(np.float64)

    def _raw_outputs(self, X, dtype: str | None = None) -> np.ndarray:
        """Outputs for ``X`` already validated (the held-out set of early stopping), computed in ``dtype``."""
        return np.asarray(self.model_.predict_proba(X, dtype=dtype))

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

    def __init__(self, estimator: XpnetEstimator, validation, samples_per_epoch: int, stop_allowed: bool):
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
        net = MLP.from_config(self.config, backend=backend, device=device)
        net.load_state_dict(self.state)
        net.set_scaling(self.scaling)
        return net

    def optimizer(self, net: MLP, optimizer):
        """``optimizer`` (new, as the estimator's settings make it) given the saved buffers back."""
        if self.optimizer_buffers:
            buffers = [net.backend.upload(b, net.dtype) for b in self.optimizer_buffers]
            optimizer.load_state_arrays(buffers, self.optimizer_steps, net.params)
        return optimizer
