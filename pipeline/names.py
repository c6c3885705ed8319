"""Names the CLI offers as choices, kept free of heavy imports.

``cli.py`` builds its ``--clf`` choices from here so that a command that
needs no scikit-learn (an up-to-date ``extract`` re-run, ``backbones``)
does not pay for importing it.
"""

#: scikit-learn heads that ``fit`` can train (implemented in pipeline.heads).
CLASSIFIERS = ("logreg", "svm", "linear-svm", "knn", "sgd-logreg")
#: Heads ``fit`` trains by streaming store blocks (pipeline.streaming), not in memory.
STREAMING = ("sgd-logreg",)
