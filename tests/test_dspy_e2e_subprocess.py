"""DSPy's code-running modules end to end on the ``subprocess`` backend (the kit's DSPy suite).

The fixtures (``sandboxkit_backend_name``, ``sandboxkit_options``) come from sandboxkit's pytest
plugin, which reads this class's ``backend``.
"""

from sandboxkit.conformance.dspy_suite import DSPySuite


class TestDSPyOnSubprocess(DSPySuite):
    backend = "subprocess"
