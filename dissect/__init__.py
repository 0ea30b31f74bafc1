"""dissect — open up deep visual-saliency models unit by unit.

Data path, top to bottom (one module each):
stimuli/fixations/regions (``dissect.data``) → backbones and hooks (``dissect.backbones``,
``dissect.capture``) → activation cache (``dissect.cache``) → unit × region NSS
(``dissect.association``) → category statistics (``dissect.statistics``) → tables and figures
(``dissect.tables``, ``dissect.figures``).
"""

__version__ = "0.1.0"
