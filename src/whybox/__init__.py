"""whybox: explain black-box predictions through the training data and through the input.

    import whybox
    obj = whybox.Objective(model, loss="cross_entropy", X=X_train, y=y_train, weight_decay=0.01)
    inf = whybox.InfluenceFunction(obj, whybox.Exact()).fit()      # a whybox.Attributor
    scores = inf.scores(X_test, y_test)   # [m, n]; positive = the training point supports the prediction

Every scorer of training points is a ``whybox.Attributor`` with that one sign convention; the
study loader (``whybox.load_study``), the zarr store (``whybox.score_to_store``), evaluation and
the report take any of them.
"""

from whybox import adapters
from whybox.attribution import (
                                SIGN_CONVENTION,
                                Attributor,
                                CheckpointRecorder,
                                EuclideanSimilarity,
                                FastIF,
                                GradientSimilarity,
                                GroupInfluence,
                                Representer,
                                TracIn,
)
from whybox.attribution.kfac import KFACInfluence
from whybox.attribution.projection import ProjectedInfluence
from whybox.curvature import (
                                CG,
                                EKFAC,
                                KFAC,
                                Arnoldi,
                                Curvature,
                                DataInf,
                                Exact,
                                Identity,
                                InaccurateSolveError,
                                LiSSA,
                                LiSSADivergenceError,
                                NotPositiveDefiniteError,
                                factorable_params,
                                make_solver,
)
from whybox.engine import score_to_store
from whybox.influence import InfluenceFunction
from whybox.losses import SmoothHinge
from whybox.objective import Objective
from whybox.study import DataSettings, MethodSettings, ModelSettings, Study, load_study

__version__ = "0.1.0"

__all__ = [
    "Objective", "Attributor", "SIGN_CONVENTION", "InfluenceFunction", "KFACInfluence", "ProjectedInfluence", "Curvature", "Exact", "CG",
    "LiSSA", "Identity", "KFAC", "EKFAC", "Arnoldi", "DataInf", "factorable_params", "make_solver", "SmoothHinge", "NotPositiveDefiniteError", "LiSSADivergenceError", "InaccurateSolveError", "adapters", "score_to_store",
    "load_study", "Study", "DataSettings", "ModelSettings", "MethodSettings", "__version__",
    "GradientSimilarity", "EuclideanSimilarity", "TracIn", "CheckpointRecorder", "Representer", "FastIF", "GroupInfluence",
]
