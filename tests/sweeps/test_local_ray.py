"""The ``ray.init`` arguments of the Ray a sweep starts for itself (``sweeps.runner``).

What they do to Ray (no idle workers, no trial on a prestarted one) is measured and asserted
by ``benchmarks/ray_start.py`` and its test; here, that every start gets arguments of its own.
"""

from __future__ import annotations

from sweeps.runner import local_ray_init


def test_each_start_gets_a_system_config_of_its_own() -> None:
    """``ray.init`` writes its session's object-spilling settings (a directory of that session)
    into the ``_system_config`` it is given; a later start in the same process must not pass
    them on."""
    first = local_ray_init()
    first["_system_config"]["object_spilling_config"] = '{"type": "filesystem"}'  # as Ray does
    second = local_ray_init()
    assert second["_system_config"] == {"prestart_worker_first_driver": False}
    assert second["address"] == "local" and second["include_dashboard"] is False
