"""``python -m sandboxkit_modal.emulator``: the same as the ``sandboxkit-modal-emulator`` command."""

import sys

from .cli import main

sys.exit(main())
