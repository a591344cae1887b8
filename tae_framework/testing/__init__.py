"""Test helpers for plugin authors: the conformance kit and tiny models."""

from .checks import check_component, check_judge, check_task, checks_for, parametrize_with_checks

__all__ = ["check_component", "check_judge", "check_task", "checks_for", "parametrize_with_checks"]
