"""Old private path of :mod:`trainers.registry`, kept so existing imports keep working."""

from trainers.registry import Registry, closest, unknown_message

__all__ = ["Registry", "closest", "unknown_message"]
