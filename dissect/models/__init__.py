"""Every model the project scores or dissects, behind one interface and one registry.

One module per model family; this package file imports none of them, so importing one submodule
(``from dissect.models.readout import SaliencyReadout``) pulls in only what that family needs
(the classical models' OpenCV, for instance, only with :mod:`dissect.models.classical`).

* :mod:`dissect.models.base` — the interface and the registry: :class:`DissectableModel`
  (``name``, ``layers``: dissection layer name → module path, ``module``: the network those
  paths resolve in), :class:`SaliencyModel` (``saliency_map``), :class:`ProbabilisticModel`
  (``log_density``), :class:`StimulusImage`; ``@register_model(name)``, ``load_model(name,
  **params)``, ``MODEL_NAMES``, ``BUILTIN_MODULES``.
* :mod:`dissect.models.baselines` — uniform, centre bias, gold standard (registered).
* :mod:`dissect.models.classical` — Itti–Koch, GBVS, BMS, spectral residual, fine-grained
  (own API: ``load_classical``, ``ClassicalSaliency.saliency``).
* :mod:`dissect.models.readout` — the He et al. readout (``SaliencyReadout``, its checkpoints and
  frozen-prefix cache; trained by :mod:`dissect.training`).
* :mod:`dissect.models.deepgaze` — DeepGaze I on cached trunk features (registered).
* :mod:`dissect.models.density` — a saliency map turned into a fixation density.
* :mod:`dissect.models.builtin` — adapters putting the families with their own APIs behind the
  interface and in the registry: the classical models, the readout (``readout``) and the scene
  classifier of :mod:`dissect.scene` (``scene_classifier``).

A new family is one new module here (or beside it) that registers its factory with
``@register_model``, listed in :data:`dissect.models.base.BUILTIN_MODULES`; see ``docs/api.md``.
"""
