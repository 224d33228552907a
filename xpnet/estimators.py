"""scikit-learn estimators trained by xpnet: ``XpnetClassifier`` and ``XpnetRegressor``.

They keep scikit-learn's estimator contract (tests/test_sklearn.py runs scikit-learn's own
``parametrize_with_checks`` on them) and take ``MLPClassifier``/``MLPRegressor``'s
hyperparameters, with the same meaning wherever xpnet has the same idea, so a pipeline
switches by changing one import. ``backend=``/``device=`` train on PyTorch or on a CUDA
GPU (``device="cuda"`` is CuPy); inputs and predictions stay host arrays.

Needs ``pip install "xpnet[sklearn]"``; ``import xpnet`` alone never imports scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d

from xpnet.errors import ConfigError
from xpnet.estimator_base import DTYPES, XpnetEstimator

__all__ = ["XpnetClassifier", "XpnetRegressor"]


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
            return y.astype(DTYPES[self.dtype]), y.shape[1], "binary_cross_entropy", "sigmoid"
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


class XpnetRegressor(RegressorMixin, XpnetEstimator):
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
        targets = np.asarray(y, dtype=DTYPES[self.dtype]).reshape(y.shape[0], -1)
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
