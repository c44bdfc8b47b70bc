"""cxrlab: transfer-learning studies and explainable screening on chest X-rays.

Research use only; not a diagnostic device.
"""

from __future__ import annotations

__version__ = "0.1.0"
