"""The same ensemble on this machine and on a real (private) Slurm, by changing its
experiment's cluster: launched through the worker, followed by the monitor, each member a
Slurm job with its own status, exit code and results."""

import sys

import pytest

from ensembles import services
from ensembles.models import Cluster, MemberRun, Run
from tests.conftest import local_cluster, wait_for

pytestmark = pytest.mark.integration

PROGRAM = """
import json, sys
n = int(sys.argv[-1])
json.dump({"square": n * n}, open("results.json", "w"))
env = __import__("os").environ
print("member", n, "on", env.get("SLURM_ARRAY_JOB_ID", "no job") + "_" + env.get("SLURM_ARRAY_TASK_ID", ""))
sys.exit(3 if n == 3 else 0)
"""


def _finished(run):
    run = Run.objects.get(pk=run.pk)
    return run.finished and list(MemberRun.objects.filter(run=run, latest=True).order_by("position"))


def test_one_ensemble_runs_locally_and_on_slurm_by_changing_the_cluster(stack, slurm_cluster, alice):
    hpc = Cluster.objects.create(name="hpc", scheduler="slurm", env=slurm_cluster.env, poll_interval=0.5)
    experiment = services.experiment_create(owner=alice, name="both", cluster=local_cluster())
    services.ensemble_save(experiment=experiment, spec={
        "name": "sq", "params": [{"name": "n", "values": "1, 2, 3"}], "params_as_args": ["n"],
        "run_settings": {"exe": sys.executable, "exe_args": ["-c", PROGRAM]}, "results_file": "results.json",
    })
    outcomes = {}
    for cluster in (local_cluster(), hpc):
        services.experiment_update(experiment=experiment, name="both", description="", cluster=cluster)
        run = services.run_launch(user=alice, experiment=experiment)
        assert (run.launcher, run.cluster) == (cluster.scheduler, cluster)
        members = wait_for(lambda: _finished(run), timeout=90, message=f"the run on {cluster} finished")
        outcomes[cluster.scheduler] = [(m.status, m.returncode, m.results) for m in members]
        if cluster == hpc:  # the ensemble went out as one job array, a task per member
            assert len({m.job_id.partition("_")[0] for m in members}) == 1, [m.job_id for m in members]
            assert all("on " + m.job_id in open(m.stdout).read() for m in members)
    expected = [("Completed", 0, {"square": 1.0}), ("Completed", 0, {"square": 4.0}), ("Failed", 3, None)]
    assert outcomes == {"local": expected, "slurm": expected}


def test_cancelling_a_slurm_run_cancels_its_jobs(stack, slurm_cluster, alice):
    hpc = Cluster.objects.create(name="hpc2", scheduler="slurm", env=slurm_cluster.env, poll_interval=0.5)
    experiment = services.experiment_create(owner=alice, name="long", cluster=hpc)
    services.ensemble_save(experiment=experiment, spec={
        "name": "sleepy", "params": [{"name": "n", "values": "1, 2"}],
        "run_settings": {"exe": "/bin/sleep", "exe_args": ["300"]},
    })
    run = services.run_launch(user=alice, experiment=experiment)
    wait_for(lambda: MemberRun.objects.filter(run=run, status="Running").count() == 2, timeout=60, message="both running")
    services.run_cancel(run_id=run.pk)
    members = wait_for(lambda: _finished(run), timeout=60, message="cancelled")
    assert [m.status for m in members] == ["Cancelled", "Cancelled"]


def test_a_held_member_shows_the_schedulers_reason_and_the_site_limits_are_read(stack, slurm_cluster, alice, alice_client):
    hpc = Cluster.objects.create(name="hpc3", scheduler="slurm", env=slurm_cluster.env, poll_interval=0.5)
    assert services.cluster_read_limits(cluster=hpc).max_array_size == 1001 and hpc.max_job_count > 0
    experiment = services.experiment_create(owner=alice, name="later", cluster=hpc)
    services.ensemble_save(experiment=experiment, spec={
        "name": "tomorrow", "params": [{"name": "n", "values": "1"}],
        "run_settings": {"exe": "/bin/true"}, "batch_settings": {"batch_args": {"begin": "now+1hour"}},
    })
    run = services.run_launch(user=alice, experiment=experiment)
    member = wait_for(lambda: (m := MemberRun.objects.filter(run=run, reason="BeginTime").first()) and m, timeout=60,
                      message="the member queued with Slurm's reason")
    assert member.status == "Queued"
    from django.urls import reverse
    page = alice_client.get(reverse("ensembles:run_detail", args=[run.pk])).content.decode()
    assert ">BeginTime</small>" in page
    services.run_cancel(run_id=run.pk)
    members = wait_for(lambda: _finished(run), timeout=60, message="cancelled")
    assert members[0].status == "Cancelled" and members[0].reason == ""
