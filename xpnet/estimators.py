"""scikit-learn estimators trained by xpnet: ``XpnetClassifier`` and ``XpnetRegressor``.

They keep scikit-learn's estimator contract (tests/test_sklearn.py runs scikit-learn's own
``parametrize_with_checks`` on them) and take ``MLPClassifier``/``MLPRegressor``'s
hyperparameters, with the same meaning wherever xpnet has the same idea, so a pipeline
switches by changing one import. ``backend=``/``device=`` train on PyTorch or on a CUDA
GPU (``device="cuda"`` is CuPy); inputs and predictions stay host arrays.

Needs ``pip install "xpnet[sklearn]"``; ``import xpnet`` alone never imports scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d

from xpnet.errors import ConfigError
from xpnet.estimator_base import DTYPES, XpnetEstimator
from xpnet.losses import check_huber_delta
from xpnet.weights import row_weights

__all__ = ["XpnetClassifier", "XpnetRegressor"]
#: The regressor's ``loss`` (scikit-learn's names) -> xpnet's loss and its output activation.
_REGRESSION_LOSSES = {
    "squared_error": ("mse", "identity"),
    "poisson": ("poisson", "exp"),
    "huber": ("huber", "identity"),
}


class XpnetClassifier(ClassifierMixin, XpnetEstimator):
    """A multilayer perceptron classifier trained by xpnet's backpropagation.

    The parameters are ``sklearn.neural_network.MLPClassifier``'s, with its defaults
    (``solver`` is ``"sgd"``, ``"adam"`` or ``"adamw"``: xpnet has no L-BFGS), plus
    ``schedule`` (``constant``, ``step``, ``cosine``, ``warmup-cosine``: the learning
    rate over ``max_iter`` epochs), ``dropout``, ``norm`` (``"layer"``: LayerNorm after each
    hidden layer), ``init``, ``scaling`` (``"standard"``,
    ``"unit"``, ``"symmetric"``: an input scaling fitted on ``X`` and kept inside the network,
    so the saved model and its ONNX export take raw features), ``dtype`` (float32, or
    float64 for exactness), and ``backend``/``device`` (``device="cuda"`` trains on a GPU
    with CuPy, ``backend="torch"`` with PyTorch).

    Two classes get one sigmoid output, more get a softmax; a 2-D 0/1 indicator ``y`` is
    multilabel (one sigmoid per label). Labels may be any sortable values (strings too).
    ``fit``, ``partial_fit`` and ``score`` take ``sample_weight`` (each batch's loss is the
    weighted mean); ``class_weight`` is ``"balanced"`` (n / (k n_c), scikit-learn's
    ``compute_class_weight``) or ``{label: weight}``, multiplying the weight of each row of a class.

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

    _own_parameters: ClassVar[dict] = {"class_weight": None}

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``(X, y)``; the first call needs ``classes``, all the labels there will be."""
        if not hasattr(self, "classes_") and classes is None:
            raise ConfigError("classes must be passed on the first call to partial_fit (every label there will be)")
        if isinstance(self.class_weight, str):
            raise ConfigError(
                "class_weight='balanced' is not supported by partial_fit (one call sees one part of the data); "
                "pass compute_class_weight('balanced', classes=classes, y=y) as a mapping instead"
            )
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    def _row_weights(self, targets, sample_weight):
        """``sample_weight`` times each row's class weight (``"balanced"`` counts these rows' classes)."""
        class_weight = self.class_weight
        if class_weight is None:
            return sample_weight
        if self._multilabel:
            raise ConfigError("class_weight needs one class label per row; multilabel targets cannot take it")
        if not isinstance(class_weight, (str, Mapping)):
            raise ConfigError(
                f"class_weight must be None, 'balanced' or a mapping {{label: weight}}, not {class_weight!r}"
            )
        if isinstance(class_weight, Mapping):
            index = {label: i for i, label in enumerate(self.classes_.tolist())}
            unknown = [label for label in class_weight if label not in index]
            if unknown:
                raise ConfigError(f"class_weight names labels {unknown[:5]} that are not in classes_ {self.classes_}")
            class_weight = {index[label]: weight for label, weight in class_weight.items()}
        return row_weights(sample_weight, class_weight, targets, len(self.classes_), len(targets))

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
            return y.astype(DTYPES[self.dtype]), y.shape[1], "binary_cross_entropy", "sigmoid"
        index = np.searchsorted(self.classes_, y)
        unseen = (index >= len(self.classes_)) | (self.classes_[np.minimum(index, len(self.classes_) - 1)] != y)
        if np.any(unseen):
            raise ConfigError(f"y holds labels {np.unique(y[unseen])[:5]} that are not in classes_ {self.classes_}")
        if len(self.classes_) == 2:  # one sigmoid output scores the second class, as MLPClassifier's
            return index.astype(np.int32), 1, "binary_cross_entropy", "sigmoid"
        return index.astype(np.int32), len(self.classes_), "cross_entropy", "softmax"

    def _validation_score(self, X_val, y_val, w_val=None) -> float:
        predicted = self._predict_indices(self._raw_outputs(X_val))
        hits = np.all(predicted == y_val, axis=1) if self._multilabel else predicted == y_val
        return float(np.average(hits, weights=w_val))

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


class XpnetRegressor(RegressorMixin, XpnetEstimator):
    """A multilayer perceptron regressor trained by xpnet's backpropagation.

    The parameters are ``sklearn.neural_network.MLPRegressor``'s with its defaults, plus
    xpnet's own (see ``XpnetClassifier``). A 2-D ``y`` trains one output per column
    (multi-output regression) and predictions keep ``y``'s shape. ``loss``: ``"squared_error"``
    (MSE, linear output), ``"poisson"`` (half the Poisson deviance, exponential output, targets
    >= 0: counts and rates) or ``"huber"`` (quadratic within ``huber_delta`` of the target,
    linear beyond: robust to outliers). ``fit``, ``partial_fit`` and ``score`` take ``sample_weight``.

    Differences from MLPRegressor: fixed-size batches (see ``XpnetClassifier``); the loss
    is 1/(2N) Σ‖a − y‖², summed over outputs, where scikit-learn averages over them too.
    Pickles work but run code when loaded: share models with ``save`` (safetensors).
    """

    _y_numeric = True
    _stratify = False

    _own_parameters: ClassVar[dict] = {"loss": "squared_error", "huber_delta": 1.0}

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``, continuing from the current weights."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _encode_targets(self, y, *, fresh: bool, classes):
        if self.loss not in _REGRESSION_LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(_REGRESSION_LOSSES)}, not {self.loss!r}")
        check_huber_delta(self.huber_delta)
        if fresh:
            self._one_d = y.ndim == 1
        targets = np.asarray(y, dtype=DTYPES[self.dtype]).reshape(y.shape[0], -1)
        if not fresh and targets.shape[1] != self.n_outputs_:
            raise ConfigError(f"y has {targets.shape[1]} target columns but the model has {self.n_outputs_} outputs")
        return targets, targets.shape[1], *_REGRESSION_LOSSES[self.loss]

    def _validation_score(self, X_val, y_val, w_val=None) -> float:
        return float(r2_score(y_val, self._raw_outputs(X_val), sample_weight=w_val))

    def predict(self, X):
        """The predicted targets: shaped ``(n,)`` if ``fit`` saw a 1-D ``y``, else ``(n, outputs)``."""
        outputs = self._outputs(X)
        return outputs[:, 0] if self._one_d else outputs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
