"""The seed articles' claims, each a small measurement with a verdict (``cnnlab experiment``).

Every experiment (:class:`Experiment`) states a claim (paraphrased from a seed article, with
its number), the paper section behind it and the rule that turns its figures into a verdict:
``holds``, ``partly``, ``contradicted`` or ``not-testable``. ``run_experiment(name, scale)``
measures, judges, and writes OUT/NAME.json and OUT/NAME.png. ``docs/experiments.md``
explains the framework; ``docs/claims.md`` lists the verdicts.

One module per theme; importing it registers its experiments.
"""

from cnnlab.experiments import (  # noqa: F401 (registers)
    analytic,
    compression,
    keras,
    memory,
    mobile,
    optimisation,
    regularisation,
)
from cnnlab.experiments.base import (
    SCALES,
    VERDICTS,
    Experiment,
    combine,
    get_experiment,
    list_experiments,
    register,
    run_experiment,
)

__all__ = [
    "SCALES",
    "VERDICTS",
    "Experiment",
    "combine",
    "get_experiment",
    "list_experiments",
    "register",
    "run_experiment",
]
