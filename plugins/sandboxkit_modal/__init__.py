"""The ``modal`` backend for sandboxkit: the driver runs in a Modal Sandbox.

This package also ships :mod:`sandboxkit_modal.emulator`, a local stand-in for the parts of
Modal's API the backend uses, so the unmodified ``modal`` SDK can be tested without an account.
"""
