"""Model files: fetch, verify and store them (see docs/models.md).

The builder's seam is :func:`realize_models`; ``create --auto-checksum`` uses
:func:`checksum_file`; ``scripts/verify_models.py`` and ``version.py verify-models``
call :func:`builder.models.cli.main`.
"""

from builder.models import redact as _redact
from builder.models.checksum import checksum_file, parse_checksum
from builder.models.realize import realize_models

_redact.install()

__all__ = ["checksum_file", "parse_checksum", "realize_models"]
