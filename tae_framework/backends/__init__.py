"""Backends install :class:`~tae_framework.plan.EditPlan` objects on live models.

:mod:`tae_framework.backends.torch_hooks` is the PyTorch-hook backend (the
:class:`~tae_framework.backends.torch_hooks.EditSession` context manager);
:mod:`tae_framework.backends.base` holds what every backend shares: the
:class:`~tae_framework.backends.base.Backend` interface and the typed per-forward
:class:`~tae_framework.backends.base.ForwardContext` handed to strength rules.
"""
