"""StopTask sends SIGTERM and waits the container's stopTimeout before SIGKILL: the task's cleanup (stop
pg tools and their workers, abort the multipart upload, remove staging, mark a restore target FAILED) must
fit in that window, and an init process must reap the pg tools' parallel workers (Python is not an init)."""

from __future__ import annotations

from tests.unit.template_support import Resolver, expanded


def test_fargate_task_gives_the_sigterm_path_time_and_an_init() -> None:
    # Given the task definition as CloudFormation sees it
    res = Resolver(expanded(), {"ContainerImageUri": "img"}).resources()
    (container,) = res["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    # Then StopTask leaves the SIGTERM cleanup two minutes (Fargate's maximum) and an init reaps workers
    assert container.get("StopTimeout") == 120
    assert container.get("LinuxParameters", {}).get("InitProcessEnabled") is True
