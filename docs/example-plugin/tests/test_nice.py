"""What the ``nice`` backend promises beyond the conformance kit: it lowers the priority."""

import os

import pytest

import sandboxkit
from sandboxkit.errors import OptionError


@pytest.mark.parametrize("niceness", ["0", "5"])
def test_sandbox_runs_at_the_requested_niceness(niceness):
    expected = min(os.nice(0) + int(niceness), 19)
    with sandboxkit.interpreter("nice", niceness=niceness) as interp:
        assert interp.execute("import os\nos.nice(0)") == expected


def test_niceness_out_of_range_is_an_option_error():
    with pytest.raises(OptionError, match="niceness"):
        sandboxkit.factory("nice", niceness=42)
