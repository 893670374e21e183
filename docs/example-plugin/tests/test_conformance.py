"""Run sandboxkit's conformance kit against the ``nice`` backend.

Every test the kit has runs here; those needing a capability the backend does not declare
(memory limits, no network, ...) are skipped with the reason.
"""

from sandboxkit.conformance import ConformanceSuite


class TestNiceConformance(ConformanceSuite):
    backend = "nice"
