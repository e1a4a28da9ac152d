"""What the engine fits: a :class:`ConjugateModel` as it is, or a plain Pyro model derived.

:func:`pyro_vi.cavi` and :func:`pyro_vi.svi_cavi` accept either kind of model; this module is
where the two paths meet, so both entry points check their arguments the same way.
"""

from __future__ import annotations

from typing import Any

from pyro_vi.cavi.model import ConjugateModel

__all__ = ["resolve_model"]


def resolve_model(model: Any, data: tuple[Any, ...], model_kwargs: dict[str, Any], *,
                  init: Any, joint: Any, where: str) -> tuple[ConjugateModel[Any, Any, Any], Any]:
    """Return ``(conjugate model, its data)`` for ``where(model, *data, **model_kwargs)``.

    A :class:`~pyro_vi.cavi.model.ConjugateModel` takes its data as one positional argument
    and its options in its constructor, so ``init``, ``joint`` and keyword data are refused
    for it (``TypeError`` naming them). Any other callable is a plain Pyro model: its
    conjugate structure is detected by :func:`pyro_vi.cavi.auto.derive` from
    ``model(*data, **model_kwargs)``, which raises
    :class:`~pyro_vi.errors.NotConjugateError` before any fitting when a site has no
    closed-form update.
    """
    if isinstance(model, ConjugateModel):
        if len(data) != 1:
            raise TypeError(f"{where}: a ConjugateModel takes its data as one positional "
                            f"argument, got {len(data)}")
        if model_kwargs:
            raise TypeError(f"{where}() got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, sorted(model_kwargs)))}")
        if init is not None or joint is not True:
            raise TypeError(f"{where}: init= and joint= are options of a plain Pyro model; "
                            f"{type(model).__name__} takes its options in its constructor")
        return model, data[0]
    if isinstance(model, type) or not callable(model):
        raise TypeError(f"model must be a pyro_vi.ConjugateModel or a Pyro model callable, "
                        f"got {type(model).__name__}")
    from pyro_vi.cavi.auto.derive import derive

    derived = derive(model, *data, init=init, joint=joint, **model_kwargs)
    return derived, derived.data
