"""Third-party code that eqdp-ray ships instead of depending on it.

``escnn/`` is escnn 1.0.11 (BSD 3-Clause Clear, its LICENSE beside it), re-created by
``scripts/vendor_escnn.py`` with its imports pointed here, its one lie_learn import served by
``lie_learn_stand_in``, its null spaces from a seeded SVD and its cache in ``escnn_cache``'s
per-user directory. Why it is bundled: on PyPI, escnn's metadata requires py3nj (source only,
needs a Fortran compiler) and lie_learn (fails to load under numpy 2), so no plain ``pip install``
can depend on it; eqdp-ray uses only its 2-D groups, which need neither. docs/INSTALL.md has the
options that were measured.
"""
