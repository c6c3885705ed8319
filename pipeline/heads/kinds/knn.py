"""``knn``: k nearest neighbours, searched over ``k``; takes no class weights."""

from __future__ import annotations

from ..registry import HeadKind, register_head


class Knn(HeadKind):
    name = "knn"
    param = "n_neighbors"
    grid = (1, 3, 5, 9, 15, 25, 41)
    larger_is_stronger = True       # more neighbours: a smoother vote
    counts_rows = True
    unweighted = ("scikit-learn's KNeighborsClassifier takes no class weights (it votes "
                  "among neighbours)")
    estimators = ("KNeighborsClassifier",)
    trusted = ("sklearn.metrics._dist_metrics.EuclideanDistance64",
               "sklearn.neighbors._kd_tree.KDTree",
               "sklearn.neighbors._ball_tree.BallTree")

    def estimator(self, value, seed, calibrated, weight):
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=value)


register_head(Knn)
