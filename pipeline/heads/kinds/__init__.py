"""The built-in heads, one module each, registered on import (:mod:`pipeline.heads.registry`).

A new head is one more module here that calls ``register_head``, and its name in
the import below; nothing else changes: ``fit --clf`` offers it, model selection,
nested CV, saving and ``export`` ask it what they need.
"""

# registered in the order `fit --clf` lists them, the default first
from . import logreg, svm, linear_svm, knn, sgd_logreg  # noqa: F401, I001
